//go:build e2e

package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/agent"
)

// A PF whose own igb driver was unbound: it has no netdev, so the host's
// class/net does not show it, and igb's remove took its VFs with it.

// unbindPF unbinds PF f from igb, as a job or a person does on a node,
// and waits for its netdev and VFs to go. Cleanup gives the VM back its
// suite baseline: the PF on igb (through drivers_probe, as the kernel
// binds it at boot) with its netdev, every VF, and the VFs' new MACs
// learnt.
func unbindPF(t *testing.T, f pf) {
	t.Helper()
	t.Cleanup(func() {
		if vfDriver(f.PCI) == "" {
			if err := writeSysfs("/sys/bus/pci/drivers_probe", f.PCI); err != nil {
				t.Errorf("bind PF %s back: %v", f.PCI, err)
			}
		}
		if err := poll(20*time.Second, func() error { return hasNetdev(f.PCI) }); err != nil {
			t.Errorf("PF %s after binding it back: %v", f.PCI, err)
		}
		restoreVFs(t, f)
	})
	if err := writeSysfs(filepath.Join(pciDevices, f.PCI, "driver", "unbind"), f.PCI); err != nil {
		t.Fatalf("unbind PF %s from %s: %v", f.PCI, vfDriver(f.PCI), err)
	}
	if err := poll(20*time.Second, func() error {
		if hasNetdev(f.PCI) == nil {
			return fmt.Errorf("PF %s still has its netdev", f.PCI)
		}
		if n := len(mustVFs(t, f)); n != 0 {
			return fmt.Errorf("PF %s still has %d VFs", f.PCI, n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// hasNetdev says whether the PCI function has a netdev in the VM's netns.
func hasNetdev(pci string) error {
	host, _, err := netnsLinks("")
	if err != nil {
		return err
	}
	if _, ok := host[pci]; !ok {
		return fmt.Errorf("%s has no netdev on the host", pci)
	}
	return nil
}

// Under the declared baseline, a PF whose igb driver was unbound before
// the agent started is seen: the status look shows it off the baseline
// for want of a driver, not advertised. The agent binds igb through
// drivers_probe with no driver_override, the PF's netdev comes back under
// its name, then the baseline's 7 VFs on igbvf: it is advertised free.
func TestAgentBindsAPFWhoseDriverWasUnbound(t *testing.T) {
	f := pfs[0]
	h := newHarness(t, nil)
	baselineNode(h, f)
	unbindPF(t, f)
	a := newNodeAgent(t, h)
	p := a.look(t, f.PCI)
	if p.Phase != agent.OffBaseline || p.Advertised() || !strings.Contains(p.Why, "the PF has no driver") {
		t.Fatalf("status before the agent ran: %+v, want %s for want of a driver, not advertised", p, agent.OffBaseline)
	}
	t.Logf("status before the agent ran: %+v", p)
	start := time.Now()
	a.run(t)
	a.waitAdopted(t, f)
	t.Logf("the agent brought the PF to the baseline in %v", time.Since(start).Round(time.Millisecond))
	override, _ := readSysfs(filepath.Join(pciDevices, f.PCI, "driver_override"))
	if drv := vfDriver(f.PCI); drv != "igb" || override != "(null)" {
		t.Errorf("PF %s on %q with driver_override %s, want igb and none", f.PCI, drv, override)
	}
	if r := h.records(); len(r) != 0 {
		t.Errorf("records: %v", r)
	}
}

// Without a baseline the agent reports such a PF and leaves it unbound.
func TestAgentLeavesAnUnboundPFWithoutBaseline(t *testing.T) {
	f := pfs[0]
	h := newHarness(t, nil)
	unbindPF(t, f)
	a := newNodeAgent(t, h)
	a.run(t)
	if err := poll(20*time.Second, func() error {
		if p := a.published(f.PCI); p.Phase != agent.Ineligible || !strings.Contains(p.Why, "declares no sriovBaseline") {
			return fmt.Errorf("the agent publishes %+v", p)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // a resync and more
	if drv := vfDriver(f.PCI); drv != "" {
		t.Errorf("PF %s was bound to %s without a baseline", f.PCI, drv)
	}
	t.Logf("status: %+v", a.published(f.PCI))
}

// A kind-sriov job on a node with a declared baseline unbinds its PF
// from igb after re-creating the VFs and binding two to vfio-pci (igb's
// remove takes them all); its pod is force-deleted. DEL binds the PF back
// to igb with no override left, re-creates its 7 VFs on igbvf and brings
// every netdev home under its name: the node is as before, at the
// baseline.
func TestKindSRIOVJobUnbindsThePFOnABaselineNode(t *testing.T) {
	f := pfs[0]
	h := newHarness(t, map[string]any{"pciBusID": f.PCI})
	baselineNode(h, f)
	jobEndsAsBefore(t, h, f, 0, forceDeleted, "a kind-sriov job that unbound the PF", func(j *job) {
		j.recreateVFs(t)
		j.unbindPF(t)
	})
	if err := atBaseline(f, baseline[f.PCI].Name); err != nil {
		t.Error(err)
	}
	if o, _ := readSysfs(filepath.Join(pciDevices, f.PCI, "driver_override")); o != "(null)" {
		t.Errorf("PF %s left with driver_override %s", f.PCI, o)
	}
}
