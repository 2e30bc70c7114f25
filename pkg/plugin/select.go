package plugin

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/policy"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/release"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// hostView is one look at the host netns, taken once per ADD: the links
// to move, and what the PF policy needs to know about them.
type hostView struct {
	byName map[string]netlink.Link
	policy *policy.Host
}

func (o *op) viewHost() (*hostView, error) {
	return lookAtHost(o.host)
}

// PolicyHost is one look at the host netns as the PF policy reads it: the
// view ADD takes, for the node agent.
func PolicyHost(host *netdev.NS) (*policy.Host, error) {
	v, err := lookAtHost(host)
	if err != nil {
		return nil, err
	}
	return v.policy, nil
}

func lookAtHost(host *netdev.NS) (*hostView, error) {
	byName, err := host.ByName()
	if err != nil {
		return nil, err
	}
	routes, err := host.DefaultRoutes()
	if err != nil {
		return nil, err
	}
	var nexthops map[uint32]netdev.Nexthop
	if slices.ContainsFunc(routes, func(r netdev.DefaultRoute) bool { return r.NexthopID != 0 }) {
		if nexthops, err = host.Nexthops(); err != nil {
			return nil, err
		}
	}
	addrs, err := host.Addrs()
	if err != nil {
		return nil, err
	}
	h, err := policyHost(byName, routes, nexthops, addrs)
	if err != nil {
		return nil, err
	}
	return &hostView{byName: byName, policy: h}, nil
}

// stacked are the link kinds whose IFLA_LINK is the device they sit on
// (for a veth it is the peer, possibly in another netns: not an upper).
var stacked = map[string]bool{"vlan": true, "macvlan": true, "macvtap": true, "ipvlan": true, "ipvtap": true}

// policyHost reduces netlink's view of the host to what the PF policy
// reads.
func policyHost(byName map[string]netlink.Link, routes []netdev.DefaultRoute, nexthops map[uint32]netdev.Nexthop, addrs []netlink.Addr) (*policy.Host, error) {
	h := &policy.Host{Links: map[string]policy.Link{}, GlobalAddr: map[int]string{}}
	for name, l := range byName {
		a := l.Attrs()
		pl := policy.Link{Index: a.Index, Name: a.Name, AltNames: a.AltNames, Kind: l.Type(), MasterIndex: a.MasterIndex}
		if stacked[pl.Kind] && a.NetNsID < 0 {
			pl.ParentIndex = a.ParentIndex
		}
		h.Links[name] = pl
	}
	var pr []policy.Route
	for _, r := range routes {
		pr = append(pr, policy.Route{LinkIndexes: r.LinkIndexes, NexthopID: r.NexthopID})
	}
	pn := map[uint32]policy.Nexthop{}
	for id, nh := range nexthops {
		pn[id] = policy.Nexthop{LinkIndex: nh.LinkIndex, Group: nh.Group}
	}
	var err error
	if h.DefaultRoute, err = policy.DefaultRouteLinks(pr, pn); err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if a.IP.IsGlobalUnicast() && a.Scope == unix.RT_SCOPE_UNIVERSE {
			h.GlobalAddr[a.LinkIndex] = a.IP.String()
		}
	}
	return h, nil
}

// rules are this attachment's PF policy: the network's pool, the node's
// reservations, and what the records say is held.
func (o *op) rules(recs []*state.Record) (policy.Rules, error) {
	reserved, err := o.conf.Reserved()
	if err != nil {
		return policy.Rules{}, types.NewError(types.ErrIOFailure, "read reserved interfaces", err.Error())
	}
	holders := maps.Clone(o.claimedByOthers)
	if holders == nil {
		holders = map[string]string{}
	}
	for _, r := range recs {
		for _, d := range r.Devices {
			holders[d.PCIAddress] = holderOf(r)
		}
	}
	return policy.Rules{PFNames: o.conf.PFNames, Reserved: reserved, Holders: holders}, nil
}

func holderOf(r *state.Record) string {
	return fmt.Sprintf("pod %s (container %s, %s, %s%s)", r.Pod, r.ContainerID, r.IfName, r.Phase, release.BlockedReason(r))
}

// choosePF picks the PF for this attachment: the pinned one (the kubelet's
// deviceID, the pod's prepared DRA claim, the network's pciBusID), or the
// free one with the lowest PCI address. With none it returns code 11 and,
// for each PF, why it was passed over.
func (o *op) choosePF(recs []*state.Record, view *hostView) (sriov.PF, error) {
	claimed, err := o.claimedPCI(recs)
	if err != nil {
		return sriov.PF{}, err
	}
	if o.conf.RequireDeviceID && o.conf.AllocatedPCI() == "" && claimed == "" {
		return sriov.PF{}, types.NewError(types.ErrInvalidNetworkConfig,
			"no deviceID and no prepared DRA claim: this node hands out PFs only as the kubelet allocates them (requireDeviceID in "+o.conf.NodeConfigFile+")",
			"request one prow/sriov (the network's resourceName) per attachment in the pod's resources, so the kubelet allocates a PF and multus passes its PCI address (or, on a DRA node, the agent records the pod's claim)")
	}
	rules, err := o.rules(recs)
	if err != nil {
		return sriov.PF{}, err
	}
	if claimed != "" {
		return o.pinnedPF(claimed, rules, view)
	}
	if addr := o.conf.PinnedPCI(); addr != "" {
		return o.pinnedPF(addr, rules, view)
	}
	// The PFs' VFs are read one PF at a time, up to the one chosen: on a
	// node of 8 PFs of 256 VFs, reading them all is thousands of sysfs
	// reads for PFs that are not taken.
	refs, err := o.sys.PFRefs()
	if err != nil {
		return sriov.PF{}, types.NewError(types.ErrIOFailure, "discover SR-IOV PFs", err.Error())
	}
	read := func(i int) (sriov.PF, error) { return o.sys.Read(refs[i]) }
	pf, passedOver, ok, err := rules.ChooseFrom(len(refs), read, view.policy)
	switch {
	case err != nil:
		return sriov.PF{}, types.NewError(types.ErrIOFailure, "discover SR-IOV PFs", err.Error())
	case ok:
		o.log.Info("chose PF", "pf", pf.PCIAddress, "name", pf.Name, "vfs", len(pf.VFs), "passedOver", strings.Join(passedOver, "; "))
		return pf, nil
	}
	why := append(passedOver, heldInPods(recs, refs)...)
	if len(why) == 0 {
		why = append(why, fmt.Sprintf("no SR-IOV PF (a netdev whose device has sriov_totalvfs > 0) under %s/class/net", o.conf.SysfsRoot))
	}
	return sriov.PF{}, types.NewError(types.ErrTryAgainLater, "no free SR-IOV PF on this node", strings.Join(why, "; "))
}

func (o *op) pinnedPF(addr string, rules policy.Rules, view *hostView) (sriov.PF, error) {
	pf, err := o.sys.PF(addr)
	if err != nil {
		return sriov.PF{}, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("requested PF %s is not an SR-IOV PF on this node", addr), err.Error())
	}
	switch v := rules.Judge(pf, view.policy); {
	case v.OK():
		o.log.Info("chose pinned PF", "pf", addr, "name", pf.Name, "vfs", len(pf.VFs))
		return pf, nil
	case v.Fixed:
		return sriov.PF{}, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("requested PF %s refused: %s", addr, v.Reason), "pick another PF or change the node's reservations")
	default:
		return sriov.PF{}, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("requested PF %s is not free: %s", addr, v.Reason), "")
	}
}

// heldInPods names who holds each PF that discovery did not list: a PF in
// a pod's netns is not under the host's /sys/class/net.
func heldInPods(recs []*state.Record, listed []sriov.PFRef) []string {
	seen := map[string]bool{}
	for _, pf := range listed {
		seen[pf.PCIAddress] = true
	}
	var held []string
	for _, r := range recs {
		if len(r.Devices) == 0 || seen[r.Devices[0].PCIAddress] {
			continue
		}
		d := r.Devices[0]
		seen[d.PCIAddress] = true
		held = append(held, fmt.Sprintf("%s (%s): in use by %s", d.PCIAddress, d.OriginalName, holderOf(r)))
	}
	slices.Sort(held)
	return held
}
