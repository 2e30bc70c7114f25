package agent

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// A PF whose own driver was unbound before the agent started: class/net
// does not show it, the PCI bus does. The fake kernel binds on
// drivers_probe and registers the PF's netdev, named as udev names it on
// a node (the fake tree does not follow a rename); the PF has no VFs, so
// the baselines here declare 0. Kernel names, the rename to the
// baseline's name and re-creating VFs after the bind are the VM's to
// prove (test/e2e).

// driverlessNode is a world with PF ens1f0 on igb, unbound, and an agent
// for node whose sysfs writes go to the returned kernel. The agent's
// steps are taken by the test, one look at a time.
func driverlessNode(t *testing.T, node map[string]any) (*kerneltest.Env, kerneltest.PF, *kerneltest.FakeKernel, *Agent, *[]PF) {
	t.Helper()
	env := kerneltest.New(t)
	pf := env.AddPF("ens1f0", 0)
	env.OnDriver(pf, "igb")
	k := env.NewKernel("igb")
	k.MACs[pf.PCI] = env.UnbindPF(pf, pf.Name)
	k.Names[pf.PCI] = pf.Name
	env.SetNode(node)
	conf, err := config.NodeConf(env.NodeFile)
	if err != nil {
		t.Fatal(err)
	}
	published := new([]PF)
	a := &Agent{Conf: conf, HostNetns: env.Host.Path(), Resync: time.Hour, Log: testLogger(t), Kernel: k.Write,
		Publish: func(pfs []PF) { *published = pfs }}
	return env, pf, k, a, published
}

func lookAt(t *testing.T, a *Agent, pci string) PF {
	t.Helper()
	pfs, err := a.Look()
	if err != nil {
		t.Fatal(err)
	}
	return find(pfs, pci)
}

func find(pfs []PF, pci string) PF {
	for _, p := range pfs {
		if p.PCI == pci {
			return p
		}
	}
	return PF{PCI: pci, Phase: "not listed"}
}

// Under a baseline that names it, the status shows the PF off the
// baseline because it has no driver; the agent binds its default driver
// through drivers_probe alone (no driver_override is ever written, so
// none is left), waits for its netdev, then judges it by the name it has
// (in the pool) and, at the baseline now, advertises it free. A reserved
// name elsewhere does not hold it back.
func TestAgentBindsAPFWithoutDriverUnderTheBaseline(t *testing.T) {
	_, pf, k, a, published := driverlessNode(t, map[string]any{
		"pfNames": []string{"ens1f0"}, "reservedInterfaces": []string{"eno1"},
		"sriovBaseline": map[string]any{"numVFs": 0, "pfs": []any{map[string]any{"pci": "0000:3b:00.0", "name": "ens1f0"}}},
	})
	if p := lookAt(t, a, pf.PCI); p.Phase != OffBaseline || p.Advertised() || !strings.Contains(p.Why, "the PF has no driver") {
		t.Fatalf("status before the agent ran: %+v, want %s with why", p, OffBaseline)
	}
	if w := k.Writes(); len(w) > 0 {
		t.Fatalf("the status look wrote %q", w)
	}
	retry := a.step(true)
	if retry <= 0 || (sriov.Sysfs{Root: a.Conf.SysfsRoot}).Netdev(pf.PCI) == "" {
		t.Fatalf("after the first look: retry %v, netdev %q; want the driver bound and a look soon", retry, (sriov.Sysfs{Root: a.Conf.SysfsRoot}).Netdev(pf.PCI))
	}
	if p := find(*published, pf.PCI); p.Phase != Free || p.Name != "ens1f0" || !p.Healthy() {
		t.Errorf("published after the bind: %+v, want ens1f0 free", p)
	}
	a.step(true)
	if got, want := k.Writes(), []string{"bus/pci/drivers_probe=" + pf.PCI}; !slices.Equal(got, want) {
		t.Errorf("writes %q, want %q", got, want)
	}
	sys := sriov.Sysfs{Root: a.Conf.SysfsRoot}
	if drv, o := sys.Driver(pf.PCI), sys.DriverOverride(pf.PCI); drv != "igb" || o != "" {
		t.Errorf("PF on %q with driver_override %q, want igb and none", drv, o)
	}
}

// Without a baseline for it, or with a pool that cannot judge it (no
// name known), the PF is reported with why and nothing is written.
func TestAgentLeavesAPFWithoutDriverAlone(t *testing.T) {
	for _, c := range []struct {
		name string
		node map[string]any
		why  string
	}{
		{"no baseline", nil, "declares no sriovBaseline for it"},
		{"a pool and no name", map[string]any{"pfNames": []string{"ens1f0"}, "sriovBaseline": map[string]any{"numVFs": 0}},
			"pfNames cannot judge it without a name"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, pf, k, a, published := driverlessNode(t, c.node)
			if p := lookAt(t, a, pf.PCI); p.Phase != Ineligible || !strings.Contains(p.Why, c.why) {
				t.Errorf("status: %+v, want %s saying %q", p, Ineligible, c.why)
			}
			a.step(true)
			a.step(true)
			if p := find(*published, pf.PCI); p.Phase != Ineligible || p.Advertised() {
				t.Errorf("published: %+v, want it %s and not advertised", p, Ineligible)
			}
			if w := k.Writes(); len(w) > 0 {
				t.Errorf("wrote %q", w)
			}
		})
	}
}

// No name is known for the PF, so the reservations cannot hold it back
// before its driver is bound; once it has a netdev it is judged by its
// name in full. Reserved under it, it is left on its driver with nothing
// else written, though its VF count is off the baseline's.
func TestAgentJudgesAPFItBoundByItsName(t *testing.T) {
	_, pf, k, a, published := driverlessNode(t, map[string]any{
		"reservedInterfaces": []string{"ens9"}, "sriovBaseline": map[string]any{"numVFs": "total"},
	})
	k.Names[pf.PCI] = "ens9"
	// Its VF count is not judged yet: without a driver, sriov_totalvfs
	// is the capability's (8 on an 82576), not what the driver allows (7).
	if p := lookAt(t, a, pf.PCI); p.Phase != OffBaseline || !strings.Contains(p.Why, "the PF has no driver") || strings.Contains(p.Why, "sriov_numvfs") {
		t.Fatalf("status before the agent ran: %+v, want %s for want of a driver alone", p, OffBaseline)
	}
	a.step(true)
	a.step(true)
	if p := find(*published, pf.PCI); p.Phase != Ineligible || !strings.Contains(p.Why, "ens9 is reserved") {
		t.Errorf("published: %+v, want %s as reserved", p, Ineligible)
	}
	if got, want := k.Writes(), []string{"bus/pci/drivers_probe=" + pf.PCI}; !slices.Equal(got, want) {
		t.Errorf("writes %q, want only the bind %q", got, want)
	}
}
