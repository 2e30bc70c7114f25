//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

// ending is how a kind-sriov job leaves the node.
type ending int

const (
	// clusterDown: the job's cluster-down moves the PF back into the pod,
	// then the pod ends and the runtime DELs.
	clusterDown ending = iota
	// forceDeleted: the pod is force-deleted with everything in place; its
	// netns and the kind node's die, then the runtime DELs.
	forceDeleted
	// delNestedAlive: the runtime DELs while the kind node's netns still
	// holds the PF; it dies later, and a later GC (or ADD) finishes.
	delNestedAlive
)

func (e ending) String() string {
	return [...]string{"cluster-down", "pod force-deleted", "DEL while the kind node lives"}[e]
}

// job is one kind-sriov job's run on one PF.
type job struct {
	pod  *pod
	kind *pod // the kind node's netns, nil once it died
	pf   string
}

// startJob does what kubevirtci's kind-sriov lane does after the plugin's
// ADD: the PF moves on into a kind node's netns and is set up there, the
// VFs are re-created (sriov_numvfs 0, then 6) and two of them are bound to
// vfio-pci for the VMs under test.
func startJob(t *testing.T, h *harness, wantPF string) *job {
	t.Helper()
	j := addJob(t, h, wantPF, 0)
	j.enterKind(t, h)
	j.recreateVFs(t)
	return j
}

// addJob is the job's ADD: a PF (wantPF, or any) with every VF netdev but
// netdevless (VFs the node keeps off a netdev driver).
func addJob(t *testing.T, h *harness, wantPF string, netdevless int) *job {
	t.Helper()
	j := &job{pod: h.newPod()}
	res, err := h.libAdd(j.pod, "net1")
	if err != nil {
		t.Fatalf("job ADD: %v", err)
	}
	j.pf = res.pf().PciID
	if wantPF != "" && j.pf != wantPF {
		t.Fatalf("job ADD took %s, want %s", j.pf, wantPF)
	}
	if got, want := len(res.Interfaces)-1, len(vfsOf[j.pf])-netdevless; got != want {
		t.Fatalf("job ADD gave PF %s with %d VF netdevs, want %d: %+v", j.pf, got, want, res.Interfaces)
	}
	return j
}

// enterKind moves the PF on into a kind node's netns and sets it up.
func (j *job) enterKind(t *testing.T, h *harness) {
	t.Helper()
	j.kind = h.newPod()
	run(t, "ip", "-n", j.pod.name, "link", "set", "net1", "netns", j.kind.name)
	run(t, "ip", "-n", j.kind.name, "link", "set", "net1", "up")
}

// recreateVFs is the job's sriov_numvfs 0, then 6, and VFs 0 and 1 bound
// to vfio-pci.
func (j *job) recreateVFs(t *testing.T) {
	t.Helper()
	numvfs := filepath.Join(pciDevices, j.pf, "sriov_numvfs")
	for _, n := range []string{"0", "6"} {
		if err := writeSysfs(numvfs, n); err != nil {
			t.Fatalf("job: sriov_numvfs=%s on %s: %v", n, j.pf, err)
		}
	}
	for i := 0; i < 2; i++ {
		vf := vfsOf[j.pf][i]
		if err := poll(20*time.Second, func() error {
			if _, err := os.Stat(filepath.Join(pciDevices, vf)); err != nil {
				return err
			}
			return nil
		}); err != nil {
			t.Fatalf("job: VF %d of %s not re-created: %v", i, j.pf, err)
		}
		if err := bindVFIO(vf); err != nil {
			t.Fatalf("job: %v", err)
		}
	}
}

// end plays the ending and the runtime's DEL; the PF's release may still
// be pending after it (delNestedAlive), then finishNested completes it.
func (j *job) end(t *testing.T, h *harness, e ending) {
	t.Helper()
	switch e {
	case clusterDown:
		run(t, "ip", "-n", j.kind.name, "link", "set", "net1", "netns", j.pod.name)
		j.kind.remove()
		j.kind = nil
	case forceDeleted:
		j.kind.remove()
		j.kind = nil
		j.pod.remove()
	}
	if err := h.libDel(j.pod, "net1"); err != nil {
		t.Fatalf("DEL after %s: %v", e, err)
	}
	if e == forceDeleted && len(h.records()) > 0 {
		// The kernel had not handed the PF back from the dead kind node's
		// netns within DEL's wait; the runtime's next GC finishes.
		t.Logf("DEL after %s left %v; GC finishes", e, h.records())
		gc(t, h)
	}
}

// finish ends a job whose kind node outlived the DEL: the netns dies, the
// kernel hands the PF back to the host, and the next GC releases it.
func (j *job) finish(t *testing.T, h *harness) {
	t.Helper()
	if j.kind != nil {
		j.kind.remove()
		j.kind = nil
	}
	j.pod.remove()
	waitOnHost(t, j.pf)
	gc(t, h)
}

func gc(t *testing.T, h *harness, keep ...*job) {
	t.Helper()
	valid := []types.GCAttachment{}
	for _, j := range keep {
		valid = append(valid, types.GCAttachment{ContainerID: h.rt(j.pod, "net1").ContainerID, IfName: "net1"})
	}
	if err := h.cni.GCNetworkList(context.Background(), h.list, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		t.Fatalf("GC: %v", err)
	}
}

// assertNodeAsBefore waits for the node to be identical to the snapshot
// taken before the job, and for the plugin to hold no record.
func assertNodeAsBefore(t *testing.T, h *harness, before []string, what string) {
	t.Helper()
	if err := poll(10*time.Second, func() error { return diffSnapshots(before, mustSnapshot(t)) }); err != nil {
		t.Fatalf("after %s: %v", what, err)
	}
	if r := h.records(); len(r) != 0 {
		t.Fatalf("after %s: records left: %v", what, r)
	}
}

// A kind-sriov job, played literally, with each of its endings: after
// every one the node is identical to before the job, to the last VF
// setting, and no PF is held.
func TestKindSRIOVJob(t *testing.T) {
	for _, e := range []ending{clusterDown, forceDeleted, delNestedAlive} {
		t.Run(e.String(), func(t *testing.T) {
			h := newHarness(t, map[string]any{"pciBusID": pfs[0].PCI})
			before := mustSnapshot(t)
			j := startJob(t, h, pfs[0].PCI)
			j.end(t, h, e)
			if e == delNestedAlive {
				// The PF is out of reach: its record stays, and the PF is not
				// handed out while a kind node holds it.
				if len(h.records()) != 1 {
					t.Fatalf("DEL while the kind node holds the PF left records %v, want the attachment's", h.records())
				}
				_, err := h.libAdd(h.newPod(), "net1")
				if cniCode(err) != int(types.ErrTryAgainLater) {
					t.Fatalf("ADD of the PF a kind node still holds: %v, want code 11", err)
				}
				j.finish(t, h)
			}
			assertNodeAsBefore(t, h, before, e.String())
		})
	}
}

// A job that changes the VF settings its PF reports (ip link set PF vf N
// ...), MACs included, while the PF sits in a kind node, and binds a VF to
// vfio-pci without re-creating the VFs: DEL puts all of it back.
func TestKindSRIOVJobChangesVFSettings(t *testing.T) {
	h := newHarness(t, map[string]any{"pciBusID": pfs[0].PCI})
	before := mustSnapshot(t)
	p := h.newPod()
	if _, err := h.libAdd(p, "net1"); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	kind := h.newPod()
	run(t, "ip", "-n", p.name, "link", "set", "net1", "netns", kind.name)
	run(t, "ip", "-n", kind.name, "link", "set", "net1", "vf", "2", "vlan", "5", "qos", "1")
	run(t, "ip", "-n", kind.name, "link", "set", "net1", "vf", "3", "spoofchk", "off")
	run(t, "ip", "-n", kind.name, "link", "set", "net1", "vf", "4", "trust", "on")
	// As sriov-cni does for a pod's or a VM's VF: a MAC set through the
	// PF, which locks it, on a VF with its netdev and on one the job bound
	// to vfio-pci without re-creating the VFs.
	if err := bindVFIO(vfsOf[pfs[0].PCI][6]); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "-n", kind.name, "link", "set", "net1", "vf", "5", "mac", "02:00:00:00:05:05")
	run(t, "ip", "-n", kind.name, "link", "set", "net1", "vf", "6", "mac", "02:00:00:00:06:06")
	// The PF driver took them (a test of a restore must see a change).
	shown := run(t, "ip", "-n", kind.name, "link", "show", "net1")
	for _, want := range []string{"vlan 5, qos 1", "spoof checking off", "trust on", "02:00:00:00:05:05", "02:00:00:00:06:06"} {
		if !strings.Contains(shown, want) {
			t.Fatalf("the PF does not report %q after the job set it:\n%s", want, shown)
		}
	}
	run(t, "ip", "-n", kind.name, "link", "set", "net1", "netns", p.name)
	kind.remove()
	if err := h.libDel(p, "net1"); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	assertNodeAsBefore(t, h, before, "a job that changed VF settings through the PF")
}

// Twenty jobs in a row on two PFs, endings mixed at random: the node never
// runs out of PFs, every job gets a PF with all its VFs, and the node is
// identical to the start whenever no job is running.
func TestKindSRIOVJobsInARow(t *testing.T) {
	seed, n := uint64(time.Now().UnixNano()%1e6), 20
	if s, err := strconv.ParseUint(os.Getenv("E2E_JOBS_SEED"), 10, 64); err == nil {
		seed = s
	}
	fmt.Printf("e2e jobs: seed %d, %d jobs (replay: E2E_JOBS_SEED=%d)\n", seed, n, seed)
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	h := newHarness(t, map[string]any{"pfNames": []string{pfs[0].Name, pfs[1].Name}})
	start := mustSnapshot(t)
	printSnapshot(start)
	var lingering *job // a job whose kind node outlived its DEL
	checks := 0
	for i := 0; i < n; i++ {
		e := ending(rng.IntN(3))
		j := startJob(t, h, "")
		t.Logf("job %d on %s, ending: %s", i, j.pf, e)
		if lingering != nil {
			// The next job ran on the other PF; now the kind node dies.
			if lingering.pf == j.pf {
				t.Fatalf("job %d got PF %s, which a kind node still holds", i, j.pf)
			}
			j.end(t, h, e)
			lingering.finish(t, h)
			lingering = nil
		} else {
			j.end(t, h, e)
		}
		if e == delNestedAlive {
			lingering = j
			continue
		}
		if lingering == nil {
			assertNodeAsBefore(t, h, start, fmt.Sprintf("job %d (%s)", i, e))
			checks++
		}
	}
	if lingering != nil {
		lingering.finish(t, h)
	}
	assertNodeAsBefore(t, h, start, "the last job")
	checks++
	fmt.Printf("e2e jobs: seed %d, %d jobs, node identical at %d checks\n", seed, n, checks)
}
