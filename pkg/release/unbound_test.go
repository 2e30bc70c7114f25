package release

import (
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// A PF whose own driver was unbound: by a job while a pod held it (DEL
// binds it back as the record says), or before the node was adopted (the
// agent binds its default driver). The fake kernel binds on drivers_probe
// and registers the PF's netdev under a kernel name; the VFs' re-creation
// is the VM's to prove (test/e2e), so these PFs have none.

// unboundWorld is a PF ens1f0 on igb and an engine whose sysfs writes go
// to k.
func unboundWorld(t *testing.T) (*kerneltest.Env, kerneltest.PF, *kerneltest.FakeKernel, *Engine) {
	t.Helper()
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 0)
	e.OnDriver(pf, "igb")
	k := e.NewKernel("igb")
	// The host netns with the fake sysfs, as the plugin opens it: a
	// netdev a driver registers is known by its PCI function through
	// sysfs alone where netlink sends no parent device (an ifb never has
	// one).
	var host *netdev.NS
	if err := e.Host.Do(func(ns.NetNS) (err error) { host, err = netdev.Current(e.SysfsRoot); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	eng := &Engine{
		Store: state.Store{Dir: e.StateDir}, Sys: sriov.Sysfs{Root: e.SysfsRoot, Kernel: k.Write},
		Host: host, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), NetdevWait: 300 * time.Millisecond,
	}
	return e, pf, k, eng
}

// jobUnboundPF is the record of an attachment of pf as ADD wrote it, after
// a job unbound the PF's driver: its netdev is gone, from the pod or
// wherever the job had it.
func jobUnboundPF(t *testing.T, e *kerneltest.Env, pf kerneltest.PF, k *kerneltest.FakeKernel, eng *Engine) *state.Record {
	t.Helper()
	mac := e.UnbindPF(pf, pf.Name)
	k.MACs[pf.PCI] = mac
	rec := &state.Record{
		Version: state.Version, ContainerID: "c1", IfName: "net1", Phase: state.Attached,
		Devices: []state.Device{{PCIAddress: pf.PCI, OriginalName: pf.Name, PodName: "net1", MAC: mac.String(), MTU: 1500, VFIndex: -1}},
		SRIOV:   &state.SRIOV{PFDriver: "igb", NumVFs: 0, DriversAutoprobe: true},
	}
	if err := eng.Store.Save(rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

// DEL binds the PF back to igb through igb's override, which it then
// clears (none was recorded), and gives the netdev the driver registers
// (eth0) the PF's name: the record is gone.
func TestReleaseBindsBackAPFTheJobUnbound(t *testing.T) {
	e, pf, k, eng := unboundWorld(t)
	rec := jobUnboundPF(t, e, pf, k, eng)
	if err := eng.Release(rec, nil, 0); err != nil {
		t.Fatalf("release: %v", err)
	}
	if _, ok := kerneltest.Links(t, e.Host)[pf.Name]; !ok {
		t.Errorf("%s is not home: %v", pf.Name, kerneltest.Links(t, e.Host))
	}
	if drv, o := eng.Sys.Driver(pf.PCI), eng.Sys.DriverOverride(pf.PCI); drv != "igb" || o != "" {
		t.Errorf("PF on %q with driver_override %q, want igb and none (writes %q)", drv, o, k.Writes())
	}
	override := "devices/pci0000:00/" + pf.PCI + "/driver_override"
	if got, want := k.Writes(), []string{override + "=igb", "bus/pci/drivers_probe=" + pf.PCI, override + "="}; !slices.Equal(got, want) {
		t.Errorf("writes %q, want %q", got, want)
	}
	if r, err := eng.Store.Get(rec.Key()); r != nil || err != nil {
		t.Errorf("record after the release: %+v, %v", r, err)
	}
}

// A driver that binds but registers no netdev, and no driver at all: the
// release fails, naming what is left (the PF's netdev, by name and PCI
// address; its driver when that is what failed), and keeps the record.
// Before, a PF bound but without a netdev made DEL succeed with the
// record kept and nothing said.
func TestReleaseSaysWhatIsLeftOfAPFTheJobUnbound(t *testing.T) {
	for _, c := range []struct {
		name     string
		noDriver bool // no loaded driver claims the PF: the probe binds nothing
		want     []string
		onDriver string
	}{
		{"no netdev", false,
			[]string{"is back on its driver igb but registered no netdev within 300ms", "left to restore: the netdevs ens1f0 (0000:3b:00.0)"}, "igb"},
		{"no driver", true,
			[]string{"give PF 0000:3b:00.0 back its driver igb", `is bound to "" after the probe`,
				"left to restore: the PF's driver (none, want igb); the netdevs ens1f0 (0000:3b:00.0)"}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, pf, k, eng := unboundWorld(t)
			rec := jobUnboundPF(t, e, pf, k, eng)
			k.NoNetdev = true
			if c.noDriver {
				eng.Sys.Kernel = func(path, value string) error {
					if strings.HasSuffix(path, "drivers_probe") {
						return nil
					}
					return k.Write(path, value)
				}
			}
			err := eng.Release(rec, nil, 0)
			for _, w := range c.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("release: %v\nwant it to say %q", err, w)
				}
			}
			if drv := eng.Sys.Driver(pf.PCI); drv != c.onDriver {
				t.Errorf("PF on %q, want %q", drv, c.onDriver)
			}
			if r, gerr := eng.Store.Get(rec.Key()); r == nil || gerr != nil || !r.Holds() {
				t.Errorf("record after the failed release: %+v, %v; want it kept", r, gerr)
			}
		})
	}
}

// The agent's first step for a PF the node declares a baseline for and
// that no driver is bound to: bind its default driver through
// drivers_probe alone (no driver_override written, so none is left) and
// wait for its netdev. A driver that registers no netdev is unbound again
// and named; ApplyBaseline refuses a PF without a driver.
func TestBindBaselineDriver(t *testing.T) {
	e, pf, k, eng := unboundWorld(t)
	k.MACs[pf.PCI] = e.UnbindPF(pf, pf.Name)
	b := config.PFBaseline{PCI: pf.PCI}
	if err := (&b.NumVFs).UnmarshalJSON([]byte("0")); err != nil {
		t.Fatal(err)
	}
	at, differs, err := eng.AtBaseline(b)
	if at || err != nil || !strings.Contains(differs, "the PF has no driver") {
		t.Fatalf("AtBaseline of a PF without a driver: %v %q %v", at, differs, err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := eng.ApplyBaseline(b, log); err == nil || !strings.Contains(err.Error(), "no driver") || len(k.Writes()) > 0 {
		t.Fatalf("ApplyBaseline of a PF without a driver: %v, wrote %q", err, k.Writes())
	}

	k.NoNetdev = true
	changed, err := eng.BindBaselineDriver(b, log)
	if changed || err == nil || !strings.Contains(err.Error(), "registered no netdev within 300ms") || !strings.Contains(err.Error(), "unbound again") {
		t.Fatalf("bind without a netdev: changed %v, %v", changed, err)
	}
	if drv := eng.Sys.Driver(pf.PCI); drv != "" {
		t.Errorf("PF left on %q after its driver registered no netdev", drv)
	}

	k.NoNetdev = false
	before := len(k.Writes())
	changed, err = eng.BindBaselineDriver(b, log)
	if !changed || err != nil {
		t.Fatalf("bind: changed %v, %v", changed, err)
	}
	if got, want := k.Writes()[before:], []string{"bus/pci/drivers_probe=" + pf.PCI}; !slices.Equal(got, want) {
		t.Errorf("writes %q, want %q", got, want)
	}
	if drv, o, name := eng.Sys.Driver(pf.PCI), eng.Sys.DriverOverride(pf.PCI), eng.Sys.Netdev(pf.PCI); drv != "igb" || o != "" || name == "" {
		t.Errorf("PF on %q, driver_override %q, netdev %q; want igb, none and one", drv, o, name)
	}
	if at, differs, err := eng.AtBaseline(b); !at || err != nil {
		t.Errorf("after the bind: at baseline %v (%q), %v", at, differs, err)
	}
}
