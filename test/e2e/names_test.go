//go:build e2e

package e2e

import (
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// fewerVFs sets f to n VFs for one test: the VFs beyond n leave the
// baseline, the first n get their new MACs into it, and the PF gets all
// its VFs back when the test ends.
func fewerVFs(t *testing.T, f pf, n int) {
	t.Helper()
	t.Cleanup(func() { restoreVFs(t, f) })
	if err := setNumVFs(f, 0); err != nil {
		t.Fatal(err)
	}
	if err := setNumVFs(f, n); err != nil {
		t.Fatal(err)
	}
	saved := map[string]link{}
	for _, gone := range vfsOf[f.PCI][n:] {
		saved[gone] = baseline[gone]
		delete(baseline, gone)
	}
	t.Cleanup(func() {
		for x, l := range saved {
			baseline[x] = l
		}
	})
	refreshBaseline(t, vfsOf[f.PCI][:n]...)
}

// recreateVFs writes sriov_numvfs 0, then n, as a job does while the PF
// sits in its kind node, and waits for the VFs' PCI functions: the new
// VF netdevs appear in the VM's netns under the lowest free kernel names.
func recreateVFs(t *testing.T, f pf, n int) {
	t.Helper()
	numvfs := filepath.Join(pciDevices, f.PCI, "sriov_numvfs")
	for _, v := range []string{"0", strconv.Itoa(n)} {
		if err := writeSysfs(numvfs, v); err != nil {
			t.Fatalf("job: sriov_numvfs=%s on %s: %v", v, f.PCI, err)
		}
	}
	if err := poll(20*time.Second, func() error {
		vfs, err := vfPCIs(f.PCI)
		if err == nil && len(vfs) != n {
			err = fmt.Errorf("%s has %d VFs, want %d", f, len(vfs), n)
		}
		return err
	}); err != nil {
		t.Fatalf("job: %v", err)
	}
}

// The name deadlock of issue 17, as a user met it: the PF has 4 VFs at
// ADD; the job re-creates 7 (sriov_numvfs 0, then 7) while the PF is in
// its kind node, binds two to vfio-pci, and ends with cluster-down. The
// extra VFs hold kernel names of recorded devices, and only the restore of
// sriov_numvfs removes them: DEL must still bring every device home under
// its name, with the VF count and drivers as at ADD, on the first try.
func TestReleaseWhenExtraVFsHoldRecordedNames(t *testing.T) {
	f := pfs[0]
	fewerVFs(t, f, 4)
	h := newHarness(t, map[string]any{"pciBusID": f.PCI})
	before := mustSnapshot(t)

	p := h.newPod()
	if _, err := h.libAdd(p, "net1"); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	kind := h.newPod()
	run(t, "ip", "-n", p.name, "link", "set", "net1", "netns", kind.name)
	run(t, "ip", "-n", kind.name, "link", "set", "net1", "up")
	recreateVFs(t, f, 7)
	vfs, err := vfPCIs(f.PCI)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := bindVFIO(vfs[i]); err != nil {
			t.Fatalf("job: %v", err)
		}
	}
	t.Logf("host netns while the job runs: %v", mustLinks(t, ""))
	(&job{pod: p, kind: kind, pf: f.PCI}).end(t, h, clusterDown)
	assertNodeAsBefore(t, h, before, "DEL")
}

// Two jobs' kernel names collide: while B's PF is in B's pod, A's job
// re-creates A's VFs, which take the lowest free kernel names, B's PF's
// and B's VFs' among them. B's DEL must bring B's devices home anyway
// (under temporary names where theirs are taken) and succeed; once A's
// DEL has freed the names, the next GC gives B's devices their names, and
// the node is as before both jobs.
func TestReleaseWhenAnotherJobsVFsHoldTheNames(t *testing.T) {
	b, a := pfs[0], pfs[1]
	h := newHarness(t, map[string]any{"pfNames": []string{b.Name, a.Name}})
	before := mustSnapshot(t)

	podB := h.newPod()
	resB, err := h.libAdd(podB, "net1")
	if err != nil {
		t.Fatalf("ADD B: %v", err)
	}
	if resB.pf().PciID != b.PCI {
		t.Fatalf("ADD B took %s, want %s", resB.pf().PciID, b.PCI)
	}
	podA := h.newPod()
	if _, err := h.libAdd(podA, "net1"); err != nil {
		t.Fatalf("ADD A: %v", err)
	}
	recreateVFs(t, a, a.TotalVFs)
	host := mustLinks(t, "")
	t.Logf("host netns while A's job runs: %v", host)
	taken := false
	for _, l := range host {
		if l.Name == baseline[b.PCI].Name {
			taken = true
		}
	}
	if !taken {
		t.Fatalf("no VF of A's job took B's PF's name %s; the test does not play the collision", baseline[b.PCI].Name)
	}

	bPCIs := append([]string{b.PCI}, vfsOf[b.PCI]...)
	if err := h.libDel(podB, "net1"); err != nil {
		t.Fatalf("DEL B while A's VFs hold its names: %v", err)
	}
	// Every device of B is on the host, under some name: none is lost.
	waitOnHost(t, bPCIs...)

	if err := h.libDel(podA, "net1"); err != nil {
		t.Fatalf("DEL A: %v", err)
	}
	gc(t, h)
	assertNodeAsBefore(t, h, before, "both DELs and a GC")
}

// A VF without a netdev at ADD (bound to vfio-pci) for which its PF
// reports the zero MAC gets a MAC through the PF from the job, as
// sriov-cni does for a VM's VF: DEL gives the zero MAC back, which on igb
// also lifts the lock a MAC set through the PF puts on the VF.
func TestZeroVFMACRecordedAtAddIsRestored(t *testing.T) {
	f := pfs[0]
	vf := vfsOf[f.PCI][6]
	h := newHarness(t, map[string]any{"pciBusID": f.PCI})
	if err := bindVFIO(vf); err != nil {
		t.Fatal(err)
	}
	netdevBackOnCleanup(t, vf, func() error { return unbindVFIO(vf) })
	run(t, "ip", "link", "set", f.Name, "vf", "6", "mac", "00:00:00:00:00:00")
	before := mustSnapshot(t)

	p := h.newPod()
	if _, err := h.libAdd(p, "net1"); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	kind := h.newPod()
	run(t, "ip", "-n", p.name, "link", "set", "net1", "netns", kind.name)
	run(t, "ip", "-n", kind.name, "link", "set", "net1", "vf", "6", "mac", "02:00:00:00:06:06")
	(&job{pod: p, kind: kind, pf: f.PCI}).end(t, h, clusterDown)
	assertNodeAsBefore(t, h, before, "DEL")
}
