//go:build e2e

package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Nodes the bash plugin left behind, and jobs that touch more than the
// lane does today: whatever driver state the node had at ADD, DEL gives it
// back as it was.

// jobEndsAsBefore runs a kind-sriov job on PF f of a node whose VFs but
// netdevless have a netdev: ADD, the PF on into a kind node, what the job
// does, the ending and the runtime's DEL; the node must then be as before.
func jobEndsAsBefore(t *testing.T, h *harness, f pf, netdevless int, e ending, what string, does func(j *job)) {
	t.Helper()
	before := mustSnapshot(t)
	j := addJob(t, h, f.PCI, netdevless)
	j.enterKind(t, h)
	does(j)
	j.end(t, h, e)
	assertNodeAsBefore(t, h, before, what)
}

// A VF the node keeps on vfio-pci with its driver_override cleared, as the
// bash plugin's nodes have them (kubevirtci's configure_vf_driver binds
// through the override, then clears it). The job re-creates the VFs,
// which puts that VF on igbvf, and binds VFs 0 and 1 to vfio-pci; DEL
// brings it back on vfio-pci with no override, and the node is as before.
func TestJobOnAVFLeftOnVFIOWithoutOverride(t *testing.T) {
	f := pfs[0]
	vf := vfsOf[f.PCI][0]
	h := newHarness(t, map[string]any{"pciBusID": f.PCI})
	if err := bindVFIO(vf); err != nil {
		t.Fatal(err)
	}
	netdevBackOnCleanup(t, vf, func() error { return unbindVFIO(vf) })
	override := filepath.Join(pciDevices, vf, "driver_override")
	if err := writeSysfs(override, "\n"); err != nil {
		t.Fatal(err)
	}
	if got, _ := readSysfs(override); got != "(null)" || vfDriver(vf) != "vfio-pci" {
		t.Fatalf("VF %s is on %q with driver_override %q, want vfio-pci and none", vf, vfDriver(vf), got)
	}
	jobEndsAsBefore(t, h, f, 1, clusterDown, "a job on a VF left on vfio-pci without override", func(j *job) {
		j.recreateVFs(t)
	})
}

// A PF whose sriov_drivers_autoprobe is 0 at ADD (VFs bound by hand); the
// job turns it on before it re-creates the VFs. DEL writes it back last:
// written first, the kernel would not probe the new VFs (a VF of a PF
// without autoprobe is probed only through an override) and DEL failed.
func TestJobOnAPFWithAutoprobeOff(t *testing.T) {
	f := pfs[0]
	h := newHarness(t, map[string]any{"pciBusID": f.PCI})
	autoprobe := filepath.Join(pciDevices, f.PCI, "sriov_drivers_autoprobe")
	if err := writeSysfs(autoprobe, "0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := writeSysfs(autoprobe, "1"); err != nil {
			t.Errorf("sriov_drivers_autoprobe back to 1: %v", err)
		}
	})
	jobEndsAsBefore(t, h, f, 0, clusterDown, "a job on a PF with autoprobe off", func(j *job) {
		if err := writeSysfs(autoprobe, "1"); err != nil {
			t.Fatal(err)
		}
		j.recreateVFs(t)
	})
}

// A job that unbinds the PF from igb: the PF's netdev goes, and igb takes
// the VFs with it. DEL binds the PF back to igb, re-creates the VFs, and
// every netdev comes home under its name: the node is as before.
func TestJobUnbindsThePF(t *testing.T) {
	f := pfs[0]
	h := newHarness(t, map[string]any{"pciBusID": f.PCI})
	jobEndsAsBefore(t, h, f, 0, forceDeleted, "a job that unbound the PF", func(j *job) {
		j.unbindPF(t)
	})
}

// unbindPF is the job unbinding its PF from its driver while the PF sits
// in the kind node: the PF's netdev leaves the kind node, and igb's
// remove takes the VFs with it.
func (j *job) unbindPF(t *testing.T) {
	t.Helper()
	drv := vfDriver(j.pf)
	if drv == "" {
		t.Fatalf("PF %s has no driver", j.pf)
	}
	if err := writeSysfs(filepath.Join(pciDevices, j.pf, "driver", "unbind"), j.pf); err != nil {
		t.Fatalf("unbind PF %s from %s: %v", j.pf, drv, err)
	}
	if err := poll(20*time.Second, func() error {
		if out := run(t, "ip", "-n", j.kind.name, "-o", "link", "show"); strings.Contains(out, "net1") {
			return fmt.Errorf("the PF's netdev is still in the kind node: %s", out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("PF unbound from %s: %d VFs left", drv, len(mustVFs(t, pf{PCI: j.pf})))
}
