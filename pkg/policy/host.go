// Package policy decides which SR-IOV PF an attachment may take: the
// node's uplink never, reserved PFs never, PFs outside the configured pool
// never, PFs another attachment holds not now. It works on plain data (the
// PFs discovery found, one look at the host netns, the node's rules), so
// every rule is tested without root; gathering that data from the kernel
// is the caller's job.
package policy

import (
	"fmt"
	"slices"
)

// Link is a host netns link as the PF policy sees it.
type Link struct {
	Index int
	Name  string
	// AltNames are the link's alternative names (ip link property add
	// altname; systemd gives a PF its predictable name this way).
	AltNames []string
	// Kind is the link type netlink reports: "vlan", "macvlan", "bond",
	// "bridge", "openvswitch", "device", ...
	Kind string
	// MasterIndex is the bond, team, bridge, VRF or OVS datapath the link
	// is a port of; 0 for none.
	MasterIndex int
	// ParentIndex is the link a VLAN, macvlan/macvtap or ipvlan/ipvtap is
	// stacked on, in the same netns; 0 for none.
	ParentIndex int
}

// Host is one look at the host netns: its links, which of them default
// routes leave through, and which have a global unicast address.
type Host struct {
	Links        map[string]Link // by name
	DefaultRoute map[int]bool    // by ifindex
	GlobalAddr   map[int]string  // ifindex -> one of its global addresses
}

// Has reports whether a link by that name is in the host netns.
func (h *Host) Has(name string) bool {
	_, ok := h.Links[name]
	return name != "" && ok
}

// Named reports whether the host link called name also answers to want,
// as its name or one of its altnames. A name not on the host matches only
// itself.
func (h *Host) Named(name, want string) bool {
	if name == want {
		return true
	}
	l, ok := h.Links[name]
	return ok && name != "" && slices.Contains(l.AltNames, want)
}

// UplinkReason says why the named host link carries the node's own
// traffic, "" if it does not (or is not in the host netns). A link does
// when it, or any device stacked on it (a VLAN, macvlan/macvtap or ipvlan
// on it, the bond, team, bridge or OVS bridge it is a port of, and the
// uppers of those, recursively), carries a default route or a global
// unicast address: taking the link would cut that traffic off. A link
// that is a port of anything is refused too, even when nothing above it
// carries traffic now: moving it out breaks the node's bond or bridge.
func (h *Host) UplinkReason(name string) string {
	return h.uplinkReason(name, h.index())
}

// uplinkReason is UplinkReason with the links indexed once: Judge asks it
// for the PF and each of its VFs, and a node has thousands of links.
func (h *Host) uplinkReason(name string, idx *hostIndex) string {
	l, ok := h.Links[name]
	if !ok || name == "" {
		return ""
	}
	if why := h.carries(l); why != "" {
		return l.Name + " " + why
	}
	if chain, why := h.upperCarrying(l, idx); why != "" {
		return fmt.Sprintf("%s: %s %s", l.Name, chain, why)
	}
	if l.MasterIndex != 0 {
		if m, ok := idx.byIndex[l.MasterIndex]; ok {
			return fmt.Sprintf("%s is a port of %s %s", l.Name, kindName(m.Kind), m.Name)
		}
		return fmt.Sprintf("%s has a master (ifindex %d)", l.Name, l.MasterIndex)
	}
	return ""
}

// carries says what node traffic the link itself carries, "" for none.
func (h *Host) carries(l Link) string {
	switch {
	case h.DefaultRoute[l.Index]:
		return "carries a default route"
	case h.GlobalAddr[l.Index] != "":
		return "has global address " + h.GlobalAddr[l.Index]
	}
	return ""
}

// upperCarrying walks the devices stacked on l, nearest first, and
// returns the first that carries traffic: the chain that leads to it
// ("its VLAN eth0.100", "its bond bond0, whose VLAN bond0.7") and what it
// carries.
func (h *Host) upperCarrying(l Link, idx *hostIndex) (string, string) {
	type step struct {
		link  Link
		chain string
	}
	seen := map[int]bool{l.Index: true}
	queue := []step{{link: l}}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		for _, up := range idx.uppers(cur.link) {
			if seen[up.Index] {
				continue
			}
			seen[up.Index] = true
			chain := "its " + kindName(up.Kind) + " " + up.Name
			if cur.chain != "" {
				chain = cur.chain + ", whose " + kindName(up.Kind) + " " + up.Name
			}
			if why := h.carries(up); why != "" {
				return chain, why
			}
			queue = append(queue, step{link: up, chain: chain})
		}
	}
	return "", ""
}

// uppers lists the devices directly above l: those stacked on it, its
// master, and, when the master is an OVS datapath, the datapath's
// internal ports (the OVS bridges, which hold the node's address).
func (idx *hostIndex) uppers(l Link) []Link {
	var out []Link
	for _, u := range idx.stacked[l.Index] {
		if u.Index != l.Index {
			out = append(out, u)
		}
	}
	if m, ok := idx.byIndex[l.MasterIndex]; ok && l.MasterIndex != 0 {
		out = append(out, m)
		if m.Kind == "openvswitch" {
			for _, u := range idx.ports[m.Index] {
				if u.Kind == "openvswitch" && u.Index != l.Index {
					out = append(out, u)
				}
			}
		}
	}
	// Map order is random: walk in ifindex order so the reason is stable.
	slices.SortFunc(out, func(a, b Link) int { return a.Index - b.Index })
	return out
}

// hostIndex is the host's links by ifindex, by the link they are stacked
// on (ParentIndex) and by their master (MasterIndex): built once per
// judgment, it makes finding a link's uppers a lookup instead of a walk
// over every link of the node, for each of a PF's hundreds of VFs.
type hostIndex struct {
	byIndex map[int]Link
	stacked map[int][]Link
	ports   map[int][]Link
}

// index indexes the links as they are now. It is not kept: callers (and
// tests) may change Links between judgments.
func (h *Host) index() *hostIndex {
	idx := &hostIndex{byIndex: make(map[int]Link, len(h.Links)), stacked: map[int][]Link{}, ports: map[int][]Link{}}
	for _, l := range h.Links {
		idx.byIndex[l.Index] = l
		if l.ParentIndex != 0 {
			idx.stacked[l.ParentIndex] = append(idx.stacked[l.ParentIndex], l)
		}
		if l.MasterIndex != 0 {
			idx.ports[l.MasterIndex] = append(idx.ports[l.MasterIndex], l)
		}
	}
	return idx
}

// kindName is how a refusal names a kind of device.
func kindName(kind string) string {
	switch kind {
	case "vlan":
		return "VLAN"
	case "openvswitch":
		return "OVS"
	case "", "device":
		return "device"
	}
	return kind
}
