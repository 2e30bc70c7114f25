package netdev

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

func TestTagRoundTrip(t *testing.T) {
	for _, addr := range []string{"0000:3b:00.0", "0001:af:1f.7"} {
		l := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{AltNames: []string{"other", Tag(addr)}}}
		if got := PCIOf(l); got != addr {
			t.Errorf("PCIOf(Tag(%s)) = %q", addr, got)
		}
	}
	parent := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{ParentDev: "0000:01:00.0", ParentDevBus: "pci"}}
	if PCIOf(parent) != "0000:01:00.0" {
		t.Errorf("parent device not used")
	}
	if PCIOf(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{AltNames: []string{"sriovpt.bogus"}}}) != "" {
		t.Errorf("a malformed tag must not yield an address")
	}
}

// RenameAll must handle targets that are other links' current names,
// including a swap, which needs a temporary name.
func TestRenameAllSwapsAndChains(t *testing.T) {
	e := kerneltest.New(t)
	var n *NS
	if err := e.Host.Do(func(ns.NetNS) error {
		var err error
		n, err = Current("")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	addrs := map[string]string{"a": "0000:01:00.0", "b": "0000:01:00.1", "c": "0000:01:00.2"}
	for name, addr := range addrs {
		if err := n.nl.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatal(err)
		}
		l, err := n.nl.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.AddTag(l, addr); err != nil {
			t.Fatal(err)
		}
		if err := n.AddTag(l, addr); err != nil {
			t.Fatalf("re-tagging must be harmless: %v", err)
		}
	}
	links, err := n.ByPCI()
	if err != nil {
		t.Fatal(err)
	}
	// a<->b swap, c -> a name nobody has.
	want := map[string]string{addrs["a"]: "b", addrs["b"]: "a", addrs["c"]: "d"}
	if err := n.RenameAll(links, want); err != nil {
		t.Fatal(err)
	}
	got, err := n.ByPCI()
	if err != nil {
		t.Fatal(err)
	}
	for addr, name := range want {
		if got[addr].Attrs().Name != name {
			t.Errorf("%s is %q, want %q", addr, got[addr].Attrs().Name, name)
		}
	}
	for addr, l := range got {
		if err := n.DelTag(l, addr); err != nil {
			t.Fatal(err)
		}
	}
	if left, _ := n.ByPCI(); len(left) != 0 {
		t.Errorf("tags not removed: %v", left)
	}
}

// A link that netlink names no PCI parent for (kernels before 5.14; an ifb
// never has one) and that carries no tag is matched to its PCI function
// through the sysfs of its netns, only while the sysfs entry under its
// name is its own (same ifindex), and only when the netns has a sysfs.
func TestPCIOfFallsBackToSysfs(t *testing.T) {
	e := kerneltest.New(t)
	root := t.TempDir()
	mk := func(target, link string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, link)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	// /sys as the kernel lays it out for a netdev on a PCI function, and
	// for a netdev on another bus.
	netdevIn := func(name, dev string, index int) {
		t.Helper()
		dir := filepath.Join("devices", "pci0000:00", dev, "net", name)
		mk("../../../"+dev, filepath.Join(dir, "device"))
		if err := os.WriteFile(filepath.Join(root, dir, "ifindex"), fmt.Appendf(nil, "%d\n", index), 0o644); err != nil {
			t.Fatal(err)
		}
		mk("../../"+dir, filepath.Join("class", "net", name))
	}
	mk("../../../bus/pci", "devices/pci0000:00/0000:3b:10.0/subsystem")
	mk("../../../bus/usb", "devices/pci0000:00/1-1:1.0/subsystem")
	index := map[string]int{}
	var ifbs []*netlink.Ifb
	for _, name := range []string{"eth7", "eth8", "usb0", "plain"} {
		ifbs = append(ifbs, &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}})
	}
	if err := e.Host.Do(func(ns.NetNS) error {
		for _, l := range ifbs {
			if err := netlink.LinkAdd(l); err != nil {
				return err
			}
			got, err := netlink.LinkByName(l.Name)
			if err != nil {
				return err
			}
			index[l.Name] = got.Attrs().Index
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	netdevIn("eth7", "0000:3b:10.0", index["eth7"])
	// eth8's entry is another device's: the name passed on since the dump.
	netdevIn("eth8", "0000:3b:10.0", index["eth8"]+100)
	netdevIn("usb0", "1-1:1.0", index["usb0"])

	for sysfs, want := range map[string]map[string]string{
		root: {"0000:3b:10.0": "eth7"},
		"":   {},
	} {
		var got map[string]netlink.Link
		if err := e.Host.Do(func(ns.NetNS) error {
			n, err := Current(sysfs)
			if err != nil {
				return err
			}
			defer n.Close()
			got, err = n.ByPCI()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		names := map[string]string{}
		for pci, l := range got {
			names[pci] = l.Attrs().Name
		}
		if !maps.Equal(names, want) {
			t.Errorf("ByPCI with sysfs %q = %v, want %v", sysfs, names, want)
		}
	}
}
