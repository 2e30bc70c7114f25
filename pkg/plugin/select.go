package plugin

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// hostView is one look at the host netns: links by name, and which links
// carry a default route or a global address. It is taken once per ADD.
type hostView struct {
	byName       map[string]netlink.Link
	defaultRoute map[int]bool
	globalAddr   map[int]string
}

func (o *op) viewHost() (*hostView, error) {
	byName, err := o.host.ByName()
	if err != nil {
		return nil, err
	}
	v := &hostView{byName: byName, defaultRoute: map[int]bool{}, globalAddr: map[int]string{}}
	routes, err := o.host.Handle().RouteListFiltered(netlink.FAMILY_ALL,
		&netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list host routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil && !isZeroPrefix(r.Dst) {
			continue
		}
		v.defaultRoute[r.LinkIndex] = true
		for _, nh := range r.MultiPath {
			v.defaultRoute[nh.LinkIndex] = true
		}
	}
	addrs, err := o.host.Handle().AddrList(nil, netlink.FAMILY_ALL)
	for try := 0; errors.Is(err, netlink.ErrDumpInterrupted) && try < 5; try++ {
		// The kernel interrupts a dump when addresses change under it.
		addrs, err = o.host.Handle().AddrList(nil, netlink.FAMILY_ALL)
	}
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		if a.IP.IsGlobalUnicast() && a.Scope == unix.RT_SCOPE_UNIVERSE {
			v.globalAddr[a.LinkIndex] = a.IP.String()
		}
	}
	return v, nil
}

func isZeroPrefix(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// uplinkReason says why a host link looks like the node's own uplink, ""
// if it does not: it carries a default route or a global unicast address,
// or it is enslaved to a bond, bridge or OVS.
func (v *hostView) uplinkReason(l netlink.Link) string {
	a := l.Attrs()
	switch {
	case v.defaultRoute[a.Index]:
		return fmt.Sprintf("%s carries a default route", a.Name)
	case v.globalAddr[a.Index] != "":
		return fmt.Sprintf("%s has global address %s", a.Name, v.globalAddr[a.Index])
	case a.MasterIndex != 0:
		return fmt.Sprintf("%s has a master (bond, bridge or OVS)", a.Name)
	}
	return ""
}

// candidate is a PF with its host link, or the reason it cannot be used.
type candidate struct {
	pf     sriov.PF
	link   netlink.Link
	reason string
	// fixed means the reason will not go away by waiting (reserved,
	// uplink, not in the pool), as opposed to "busy".
	fixed bool
}

// choosePF picks the PF for this attachment: the pinned one, or the free
// one with the lowest PCI address. With none it returns code 11 and, for
// each PF, why it was passed over.
func (o *op) choosePF(recs []*state.Record, view *hostView) (candidate, error) {
	reserved, err := o.conf.Reserved()
	if err != nil {
		return candidate{}, types.NewError(types.ErrIOFailure, "read reserved interfaces", err.Error())
	}
	holders := map[string]*state.Record{}
	for _, r := range recs {
		for _, d := range r.Devices {
			holders[d.PCIAddress] = r
		}
	}
	judge := func(pf sriov.PF) candidate {
		c := candidate{pf: pf, fixed: true}
		if r := holders[pf.PCIAddress]; r != nil {
			c.reason, c.fixed = fmt.Sprintf("in use by pod %s (container %s, %s, %s)", r.Pod, r.ContainerID, r.IfName, r.Phase), false
			return c
		}
		if len(o.conf.PFNames) > 0 && !slices.Contains(o.conf.PFNames, pf.Name) {
			c.reason = fmt.Sprintf("%s is not in pfNames", pf.Name)
			return c
		}
		if reserved[pf.Name] {
			c.reason = fmt.Sprintf("%s is reserved", pf.Name)
			return c
		}
		l, ok := view.byName[pf.Name]
		if pf.Name == "" || !ok {
			c.reason, c.fixed = "its netdev is not in the host netns", false
			return c
		}
		if why := view.uplinkReason(l); why != "" {
			c.reason = "uplink: " + why
			return c
		}
		for _, vf := range pf.VFs {
			if reserved[vf.Name] {
				c.reason = fmt.Sprintf("its VF %s is reserved", vf.Name)
				return c
			}
			if vl, ok := view.byName[vf.Name]; ok && vf.Name != "" {
				if why := view.uplinkReason(vl); why != "" {
					c.reason = "uplink: its VF " + why
					return c
				}
			}
		}
		c.link = l
		return c
	}

	if addr := o.conf.PinnedPCI(); addr != "" {
		pf, err := o.sys.PF(addr)
		if err != nil {
			return candidate{}, types.NewError(types.ErrInvalidNetworkConfig,
				fmt.Sprintf("requested PF %s is not an SR-IOV PF on this node", addr), err.Error())
		}
		c := judge(pf)
		switch {
		case c.reason == "":
			o.log.Info("chose pinned PF", "pf", addr, "name", pf.Name, "vfs", len(pf.VFs))
			return c, nil
		case c.fixed:
			return candidate{}, types.NewError(types.ErrInvalidNetworkConfig,
				fmt.Sprintf("requested PF %s refused: %s", addr, c.reason), "pick another PF or change the node's reservations")
		default:
			return candidate{}, types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("requested PF %s is not free: %s", addr, c.reason), "")
		}
	}

	pfs, err := o.sys.PFs()
	if err != nil {
		return candidate{}, types.NewError(types.ErrIOFailure, "discover SR-IOV PFs", err.Error())
	}
	var why []string
	seen := map[string]bool{}
	for _, pf := range pfs {
		seen[pf.PCIAddress] = true
		c := judge(pf)
		if c.reason == "" {
			o.log.Info("chose PF", "pf", pf.PCIAddress, "name", pf.Name, "vfs", len(pf.VFs), "passedOver", strings.Join(why, "; "))
			return c, nil
		}
		why = append(why, fmt.Sprintf("%s (%s): %s", pf.PCIAddress, nameOr(pf.Name, "no netdev"), c.reason))
	}
	// A PF in a pod's netns is not under the host's /sys/class/net, so
	// discovery does not list it: say who holds it, from the records.
	var held []string
	for _, r := range recs {
		if len(r.Devices) == 0 || seen[r.Devices[0].PCIAddress] {
			continue
		}
		d := r.Devices[0]
		seen[d.PCIAddress] = true
		held = append(held, fmt.Sprintf("%s (%s): in use by pod %s (container %s, %s, %s)",
			d.PCIAddress, d.OriginalName, r.Pod, r.ContainerID, r.IfName, r.Phase))
	}
	slices.Sort(held)
	why = append(why, held...)
	if len(why) == 0 {
		why = append(why, fmt.Sprintf("no SR-IOV PF (a netdev whose device has sriov_totalvfs > 0) under %s/class/net", o.conf.SysfsRoot))
	}
	return candidate{}, types.NewError(types.ErrTryAgainLater, "no free SR-IOV PF on this node", strings.Join(why, "; "))
}

func nameOr(name, alt string) string {
	if name == "" {
		return alt
	}
	return name
}
