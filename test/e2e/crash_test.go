//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	fp "github.com/kubevirt/sriov-passthrough-cni/pkg/failpoint"
)

// failpointHarness is a harness whose libcni runs the plugin built with
// -tags failpoints (E2E_FAILPOINT_PLUGIN_DIR): SRIOVPT_FAILPOINT=step@N makes
// it SIGKILL itself at that step, as the OOM killer or a runtime timeout would.
func failpointHarness(t *testing.T) *harness {
	t.Helper()
	dir := os.Getenv("E2E_FAILPOINT_PLUGIN_DIR")
	if dir == "" {
		t.Fatal("E2E_FAILPOINT_PLUGIN_DIR is unset: the VM harness builds the plugin with -tags failpoints")
	}
	if _, err := os.Stat(filepath.Join(dir, "sriov-passthrough-cni")); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, nil)
	h.cni = libcni.NewCNIConfigWithCacheDir([]string{dir}, h.cacheDir, h.exec())
	return h
}

// recoverByDel is what a runtime does after a failed ADD or DEL: DEL until it
// succeeds. Physical netdevs in a netns that died with the killed process
// return to the host asynchronously, so a DEL may find some not back yet;
// the plugin must remember them and finish on a later DEL.
func recoverByDel(t *testing.T, h *harness, p *pod, pcis []string) {
	t.Helper()
	t.Setenv("SRIOVPT_FAILPOINT", "")
	var err error
	for i := 0; i < 5; i++ {
		if err = h.libDel(p, "net1"); err == nil {
			break
		}
		t.Logf("DEL after the crash, try %d: %v", i+1, err)
		time.Sleep(time.Second)
	}
	if err != nil {
		t.Fatalf("DEL after the crash keeps failing: %v", err)
	}
	waitOnHost(t, pcis...)
	if err := h.libDel(p, "net1"); err != nil {
		t.Errorf("DEL once every device is back: %v", err)
	}
	assertRestored(t, pcis...)
	if r := h.records(); len(r) != 0 {
		t.Errorf("state records left after recovery: %v", r)
	}
}

// The plugin is killed part-way through ADD; the runtime's DEL puts every
// device back under its original name.
func TestCrashDuringAddThenDel(t *testing.T) {
	// Every device moves straight to the pod, the PF under its host name
	// (to-pod@1), and is renamed there. Only when the pod has a link by
	// the PF's host name does the PF go through the transit netns.
	for _, c := range []crashCase{
		{string(fp.AddRecordAdding), false}, {fp.AddTagged.At(3), false}, {fp.AddToPod.At(1), false},
		{fp.AddToPod.At(4), false}, {string(fp.AddRenamed), false}, {string(fp.AddUp), false},
		{string(fp.AddToTransit), true}, {string(fp.AddRenamed), true},
	} {
		step := c.step
		t.Run(c.name(), func(t *testing.T) {
			h := failpointHarness(t)
			p := c.pod(t, h)
			a := wholePF(p, "net1", pfs[0])
			t.Setenv("SRIOVPT_FAILPOINT", step)
			if _, err := h.libAdd(p, "net1"); err == nil {
				t.Cleanup(func() { _ = h.libDel(p, "net1") })
				t.Fatalf("ADD with failpoint %s succeeded: is the plugin built with -tags failpoints?", step)
			}
			recoverByDel(t, h, p, a.pcis())
			assertPodHolds(t, p)
		})
	}
}

// The plugin is killed part-way through DEL; the runtime's next DEL finishes.
func TestCrashDuringDelThenDel(t *testing.T) {
	// The PF gets its host name back in the pod and goes straight home;
	// through the transit netns only when the pod has a link by that name.
	for _, c := range []crashCase{
		{string(fp.ReleaseRenamedInPlace), false}, {fp.ReleaseToHost.At(1), false}, {fp.ReleaseToHost.At(4), false},
		{string(fp.ReleaseToTransit), true}, {string(fp.ReleaseRenamed), true},
	} {
		step := c.step
		t.Run(c.name(), func(t *testing.T) {
			h := failpointHarness(t)
			p := c.pod(t, h)
			a := wholePF(p, "net1", pfs[0])
			if _, err := h.libAdd(p, "net1"); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			t.Setenv("SRIOVPT_FAILPOINT", step)
			if err := h.libDel(p, "net1"); err == nil {
				t.Fatalf("DEL with failpoint %s succeeded", step)
			}
			recoverByDel(t, h, p, a.pcis())
			assertPodHolds(t, p)
		})
	}
}

// The plugin is killed at each step of giving a job's SR-IOV changes back:
// the VFs re-created, a VF rebound to its driver, the restore marked done.
// The runtime's next DEL finishes, and the node is as before the job.
func TestCrashDuringSRIOVRestore(t *testing.T) {
	for _, step := range []string{string(fp.ReleaseSRIOVNumVFs), fp.ReleaseSRIOVRebind.At(2), string(fp.ReleaseSRIOVRestored)} {
		t.Run(step, func(t *testing.T) {
			h := failpointHarness(t)
			before := mustSnapshot(t)
			var p *pod
			if step == fp.ReleaseSRIOVRebind.At(2) {
				// Only VFs bound elsewhere with their count unchanged are
				// rebound one by one; re-creating them rebinds them all.
				p = h.newPod()
				if _, err := h.libAdd(p, "net1"); err != nil {
					t.Fatalf("ADD: %v", err)
				}
				for _, vf := range vfsOf[pfs[0].PCI][:2] {
					if err := bindVFIO(vf); err != nil {
						t.Fatal(err)
					}
				}
			} else {
				j := startJob(t, h, pfs[0].PCI)
				run(t, "ip", "-n", j.kind.name, "link", "set", "net1", "netns", j.pod.name)
				j.kind.remove()
				p = j.pod
			}
			t.Setenv("SRIOVPT_FAILPOINT", step)
			if err := h.libDel(p, "net1"); err == nil {
				t.Fatalf("DEL with failpoint %s succeeded", step)
			}
			t.Setenv("SRIOVPT_FAILPOINT", "")
			if err := h.libDel(p, "net1"); err != nil {
				t.Fatalf("DEL after the crash: %v", err)
			}
			assertNodeAsBefore(t, h, before, "DEL killed at "+step+" and retried")
		})
	}
}

// crashCase is a failpoint to kill the plugin at, on a pod that has a
// link named like the first PF (clash) or not.
type crashCase struct {
	step  string
	clash bool
}

func (c crashCase) name() string {
	if c.clash {
		return c.step + "/pf-name-taken-in-pod"
	}
	return c.step
}

// pod makes the case's pod.
func (c crashCase) pod(t *testing.T, h *harness) *pod {
	t.Helper()
	p := h.newPod()
	if c.clash {
		clashInPod(t, p)
	}
	return p
}

// clashInPod gives the pod a link named like the first PF on the host, so
// the kernel refuses to move the PF in under that name (and home from the
// pod under it): the plugin takes the transit netns.
func clashInPod(t *testing.T, p *pod) {
	t.Helper()
	run(t, "ip", "-n", p.name, "link", "add", pfs[0].Name, "type", "veth", "peer", "name", "e2eclash")
}
