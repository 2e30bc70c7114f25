package netdev

import (
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
		n, err = Current()
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
