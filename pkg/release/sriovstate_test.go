package release

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// The restore's netlink writes find the PF by PCI address: after a blocked
// restore another PF can carry this PF's recorded name, and must not get
// its VF settings.
func TestPFLinkIsFoundByPCIAddressNotByName(t *testing.T) {
	e := kerneltest.New(t)
	a := e.AddPF("ens1f0", 1)
	b := e.AddPF("ens2f0", 1)
	// A is home parked (tagged, as the plugin leaves it) and B took A's
	// name; sysfs says so, as the kernel's does.
	rename := func(pf kerneltest.PF, to string, tag bool) {
		t.Helper()
		if err := e.Host.Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName(pf.Name)
			if err != nil {
				return err
			}
			if tag {
				if err := netlink.LinkAddAltName(l, netdev.Tag(pf.PCI)); err != nil {
					return err
				}
			}
			return netlink.LinkSetName(l, to)
		}); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(e.SysfsRoot, "devices", "pci0000:00", pf.PCI, "net")
		if err := os.Rename(filepath.Join(dir, pf.Name), filepath.Join(dir, to)); err != nil {
			t.Fatal(err)
		}
	}
	rename(a, "sptmp0", true)
	rename(b, a.Name, false)

	host, err := netdev.Open(e.Host.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	eng := &Engine{Host: host, Sys: sriov.Sysfs{Root: e.SysfsRoot}}
	for pci, want := range map[string]string{a.PCI: "sptmp0", b.PCI: a.Name} {
		l, err := eng.pfLink(pci)
		if err != nil || l == nil || l.Attrs().Name != want {
			t.Errorf("pfLink(%s) = %v, %v; want the link now called %s", pci, l, err, want)
		}
	}
}
