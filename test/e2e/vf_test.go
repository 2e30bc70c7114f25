//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// restoreVFs puts a PF back to all its VFs (new VFs get new random MACs from
// igbvf) and refreshes the baseline for them, so later tests compare against
// what the VM really has.
func restoreVFs(t *testing.T, f pf) {
	t.Helper()
	if err := setNumVFs(f, f.TotalVFs); err != nil {
		t.Errorf("restore VFs: %v", err)
	}
	refreshBaseline(t, vfsOf[f.PCI]...)
}

// refreshBaseline takes the given VFs' MACs as they are now. Their names
// must not have changed: the kernel hands out the lowest free ethN again.
func refreshBaseline(t *testing.T, pcis ...string) {
	t.Helper()
	host := mustLinks(t, "")
	for _, x := range pcis {
		l, ok := host[x]
		if !ok {
			t.Errorf("VF %s has no netdev after re-creation", x)
			continue
		}
		if l.Name != baseline[x].Name {
			t.Errorf("VF %s came back as %s, it was %s", x, l.Name, baseline[x].Name)
		}
		baseline[x] = l
	}
}

// VFs created (sriov_numvfs) just before ADD are moved: here 3 of 7.
func TestVFsCreatedBeforeAddAreMoved(t *testing.T) {
	f := pfs[0]
	h := newHarness(t, nil)
	t.Cleanup(func() { restoreVFs(t, f) })
	if err := setNumVFs(f, 0); err != nil {
		t.Fatal(err)
	}
	if err := setNumVFs(f, 3); err != nil {
		t.Fatal(err)
	}
	saved := map[string]link{}
	for _, gone := range vfsOf[f.PCI][3:] {
		saved[gone] = baseline[gone]
		delete(baseline, gone)
	}
	t.Cleanup(func() {
		for x, l := range saved {
			baseline[x] = l
		}
	})
	refreshBaseline(t, vfsOf[f.PCI][:3]...)

	p := h.newPod()
	before := mustLinks(t, "")
	res := h.toolAdd(p, "net1")
	a := attachment{pod: p, ifname: "net1", pf: f, vfs: vfsOf[f.PCI][:3]}
	assertAttached(t, a, res)
	assertPodHolds(t, p, a.pcis()...)
	assertHostLost(t, before, a)

	h.toolDel(p, "net1")
	assertRestored(t, a.pcis()...)
}

// A VF bound to no netdev driver (unbound here; vfio-pci in real life) is
// skipped: ADD moves the PF and the other 6 VFs, DEL returns them.
func TestVFWithoutNetdevIsSkipped(t *testing.T) {
	f := pfs[0]
	vf := vfsOf[f.PCI][2]
	h := newHarness(t, nil)
	if err := writeSysfs("/sys/bus/pci/drivers/igbvf/unbind", vf); err != nil {
		t.Fatalf("unbind %s from igbvf: %v", vf, err)
	}
	netdevBackOnCleanup(t, vf, func() error { return writeSysfs("/sys/bus/pci/drivers/igbvf/bind", vf) })

	p := h.newPod()
	before := mustLinks(t, "")
	res := h.toolAdd(p, "net1")
	var others []string
	for _, x := range vfsOf[f.PCI] {
		if x != vf {
			others = append(others, x)
		}
	}
	a := attachment{pod: p, ifname: "net1", pf: f, vfs: others}
	assertAttached(t, a, res)
	assertPodHolds(t, p, a.pcis()...)
	assertHostLost(t, before, a)
	for _, i := range res.Interfaces {
		if i.PciID == vf {
			t.Errorf("result lists the VF without a netdev: %+v", i)
		}
	}

	h.toolDel(p, "net1")
	assertRestored(t, a.pcis()...)
}

// netdevBackOnCleanup is for a test that takes VF vf off its netdev
// driver: the VF leaves the baseline while the test runs, and at cleanup
// rebind gives it back its driver, its netdev must appear, and the
// baseline learns it again.
func netdevBackOnCleanup(t *testing.T, vf string, rebind func() error) {
	t.Helper()
	t.Cleanup(func() {
		if err := rebind(); err != nil {
			t.Errorf("rebind %s: %v", vf, err)
		}
		if err := poll(20*time.Second, func() error {
			_, err := os.Stat(filepath.Join(pciDevices, vf, "net"))
			return err
		}); err != nil {
			t.Errorf("VF %s has no netdev after rebinding: %v", vf, err)
		}
		refreshBaseline(t, vf)
	})
	saved := baseline[vf]
	delete(baseline, vf)
	t.Cleanup(func() { baseline[vf] = saved })
}
