// Package policy decides which SR-IOV PF an attachment may take: the
// node's uplink never, reserved PFs never, PFs outside the configured pool
// never, PFs another attachment holds not now. It works on plain data (the
// PFs discovery found, one look at the host netns, the node's rules), so
// every rule is tested without root; gathering that data from the kernel
// is the caller's job.
package policy

import "fmt"

// Link is a host netns link as the uplink rules see it.
type Link struct {
	Index int
	Name  string
	// MasterIndex is the bond, bridge or OVS port's master; 0 for none.
	MasterIndex int
}

// Host is one look at the host netns: its links, which of them carry a
// default route, and which have a global unicast address.
type Host struct {
	Links        map[string]Link // by name
	DefaultRoute map[int]bool    // by ifindex
	GlobalAddr   map[int]string  // ifindex -> one of its global addresses
}

// UplinkReason says why the named host link looks like the node's own
// uplink, "" if it does not (or is not in the host netns): it carries a
// default route or a global unicast address, or it is enslaved to a bond,
// bridge or OVS.
func (h *Host) UplinkReason(name string) string {
	l, ok := h.Links[name]
	if !ok || name == "" {
		return ""
	}
	switch {
	case h.DefaultRoute[l.Index]:
		return fmt.Sprintf("%s carries a default route", l.Name)
	case h.GlobalAddr[l.Index] != "":
		return fmt.Sprintf("%s has global address %s", l.Name, h.GlobalAddr[l.Index])
	case l.MasterIndex != 0:
		return fmt.Sprintf("%s has a master (bond, bridge or OVS)", l.Name)
	}
	return ""
}

// Has reports whether a link by that name is in the host netns.
func (h *Host) Has(name string) bool {
	_, ok := h.Links[name]
	return name != "" && ok
}
