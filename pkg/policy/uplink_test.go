package policy

import (
	"strings"
	"testing"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
)

// The node's uplink as operators build it: the PF, a VF, or a device
// stacked on either carries the default route or the node's address. Each
// topology is refused, and the reason names the chain.
func TestUplinkTopologies(t *testing.T) {
	const pfIdx, vfIdx = 2, 3
	base := func(extra ...Link) *Host {
		return host(append([]Link{{Index: pfIdx, Name: "eth0", Kind: "device"}, {Index: vfIdx, Name: "eth0v0", Kind: "device"}}, extra...)...)
	}
	pf0 := pf("0000:3b:00.0", "eth0", "eth0v0")
	for _, c := range []struct {
		name    string
		h       *Host
		masters map[string]int // port name -> master ifindex
		route   int
		addr    int
		want    string
	}{
		{"VLAN with the default route", base(Link{Index: 10, Name: "eth0.100", Kind: "vlan", ParentIndex: pfIdx}), nil, 10, 0,
			"uplink: eth0: its VLAN eth0.100 carries a default route"},
		{"macvlan with the node's address", base(Link{Index: 10, Name: "mv0", Kind: "macvlan", ParentIndex: pfIdx}), nil, 0, 10,
			"uplink: eth0: its macvlan mv0 has global address 192.0.2.10"},
		{"ipvlan on a VF", base(Link{Index: 10, Name: "ipv0", Kind: "ipvlan", ParentIndex: vfIdx}), nil, 10, 0,
			"uplink: its VF eth0v0: its ipvlan ipv0 carries a default route"},
		{"bond, then a VLAN on the bond", base(Link{Index: 10, Name: "bond0", Kind: "bond"}, Link{Index: 11, Name: "bond0.7", Kind: "vlan", ParentIndex: 10}), map[string]int{"eth0": 10}, 11, 0,
			"uplink: eth0: its bond bond0, whose VLAN bond0.7 carries a default route"},
		{"bridge with the address", base(Link{Index: 10, Name: "br0", Kind: "bridge"}), map[string]int{"eth0": 10}, 0, 10,
			"uplink: eth0: its bridge br0 has global address 192.0.2.10"},
		{"OVS bridge (internal port of the same datapath)", base(Link{Index: 10, Name: "ovs-system", Kind: "openvswitch"},
			Link{Index: 11, Name: "br-ex", Kind: "openvswitch", MasterIndex: 10}), map[string]int{"eth0": 10}, 11, 0,
			"uplink: eth0: its OVS br-ex carries a default route"},
		{"team on a VF, macvtap on the team", base(Link{Index: 10, Name: "team0", Kind: "team"}, Link{Index: 11, Name: "mvt0", Kind: "macvtap", ParentIndex: 10}), map[string]int{"eth0v0": 10}, 0, 11,
			"uplink: its VF eth0v0: its team team0, whose macvtap mvt0 has global address 192.0.2.10"},
	} {
		h := c.h
		for port, master := range c.masters {
			setMaster(h, port, master)
		}
		if c.route != 0 {
			h.DefaultRoute[c.route] = true
		}
		if c.addr != 0 {
			h.GlobalAddr[c.addr] = "192.0.2.10"
		}
		v := Rules{}.Judge(pf0, h)
		if v.Reason != c.want || !v.Fixed {
			t.Errorf("%s: got %+v, want %q", c.name, v, c.want)
		}
	}
}

func setMaster(h *Host, name string, master int) {
	l := h.Links[name]
	l.MasterIndex = master
	h.Links[name] = l
}

// Devices stacked on the PF that carry nothing leave it free; a stacked
// device on another PF does not count; a port of a quiet bond is refused
// as a port.
func TestUplinkQuietStacks(t *testing.T) {
	h := host(Link{Index: 2, Name: "eth0"}, Link{Index: 3, Name: "eth1"},
		Link{Index: 10, Name: "eth0.5", Kind: "vlan", ParentIndex: 2}, Link{Index: 11, Name: "eth1.5", Kind: "vlan", ParentIndex: 3})
	h.DefaultRoute[11] = true
	if v := (Rules{}).Judge(pf("0000:3b:00.0", "eth0"), h); !v.OK() {
		t.Errorf("PF with a quiet VLAN refused: %+v", v)
	}
	if v := (Rules{}).Judge(pf("0000:3c:00.0", "eth1"), h); !strings.Contains(v.Reason, "eth1: its VLAN eth1.5 carries a default route") {
		t.Errorf("eth1: %+v", v)
	}
	h.Links["bond1"] = Link{Index: 12, Name: "bond1", Kind: "bond"}
	setMaster(h, "eth0", 12)
	if v := (Rules{}).Judge(pf("0000:3b:00.0", "eth0"), h); v.Reason != "uplink: eth0 is a port of bond bond1" {
		t.Errorf("port of a quiet bond: %+v", v)
	}
}

func TestDefaultRouteLinks(t *testing.T) {
	nhs := map[uint32]Nexthop{1: {LinkIndex: 5}, 2: {LinkIndex: 6}, 3: {Group: []uint32{1, 2}}, 4: {}}
	got, err := DefaultRouteLinks([]Route{
		{LinkIndexes: []int{2}},    // via ifindex
		{LinkIndexes: []int{3, 4}}, // multipath
		{NexthopID: 3},             // a nexthop group
		{NexthopID: 4},             // a blackhole nexthop: no link
	}, nhs)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{2, 3, 4, 5, 6} {
		if !got[i] {
			t.Errorf("link %d not found behind a default route: %v", i, got)
		}
	}
	if len(got) != 5 {
		t.Errorf("links %v, want exactly 2-6", got)
	}
	if _, err := DefaultRouteLinks([]Route{{NexthopID: 9}}, nhs); err == nil {
		t.Error("a nexthop the dump does not list was ignored")
	}
}

// reservedInterfaces, the reserved file and pfNames match a PF (or a VF)
// by its name or any of its altnames, which may be longer than a name.
func TestNamesMatchAltNames(t *testing.T) {
	long := "enp59s0f0np0-" + strings.Repeat("x", 100)
	h := host(Link{Index: 2, Name: "eth0", AltNames: []string{"enp59s0f0np0", long}}, Link{Index: 3, Name: "eth1", AltNames: []string{"enp59s0f1np1"}},
		Link{Index: 4, Name: "eth1v0", AltNames: []string{"enp59s0f1v0"}})
	pf0, pf1 := pf("0000:3b:00.0", "eth0"), pf("0000:3b:00.1", "eth1", "eth1v0")
	for _, c := range []struct {
		rules Rules
		pf    sriov.PF
		want  string
	}{
		{Rules{Reserved: map[string]bool{"enp59s0f0np0": true}}, pf0, "eth0 (altname enp59s0f0np0) is reserved"},
		{Rules{Reserved: map[string]bool{long: true}}, pf0, "eth0 (altname " + long + ") is reserved"},
		{Rules{Reserved: map[string]bool{"enp59s0f1v0": true}}, pf1, "its VF eth1v0 (altname enp59s0f1v0) is reserved"},
		{Rules{PFNames: []string{"enp59s0f1np1"}}, pf0, "eth0 is not in pfNames"},
		{Rules{PFNames: []string{"enp59s0f1np1"}}, pf1, ""},
		{Rules{PFNames: []string{long}}, pf0, ""},
	} {
		if v := c.rules.Judge(c.pf, h); v.Reason != c.want {
			t.Errorf("%+v on %s: got %q, want %q", c.rules, c.pf.Name, v.Reason, c.want)
		}
	}
}

// A PF or VF whose host name is not valid UTF-8 is never taken: its record
// could not name it, and DEL could not give it back under that name.
func TestNamesARecordCannotHold(t *testing.T) {
	h := host(Link{Index: 2, Name: "eth\xff"}, Link{Index: 3, Name: "eth1"}, Link{Index: 4, Name: "v\xc3"})
	if v := (Rules{}).Judge(pf("0000:3b:00.0", "eth\xff"), h); !v.Fixed || !strings.Contains(v.Reason, "not valid UTF-8") {
		t.Errorf("PF: %+v", v)
	}
	if v := (Rules{}).Judge(pf("0000:3c:00.0", "eth1", "v\xc3"), h); !v.Fixed || !strings.Contains(v.Reason, `"v\xc3" is not valid UTF-8`) {
		t.Errorf("VF: %+v", v)
	}
}
