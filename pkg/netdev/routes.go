package netdev

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// rtaNHID is RTA_NH_ID (linux/rtnetlink.h): the nexthop object a route
// uses. golang.org/x/sys does not name it, and vishvananda/netlink v1.3.1
// does not parse it.
const rtaNHID = 30

// DefaultRoute is a default route (any table, IPv4 or IPv6) as the kernel
// dumps it: the links its nexthops leave through, or its nexthop object.
type DefaultRoute struct {
	Family, Table int
	LinkIndexes   []int
	NexthopID     uint32
}

// Nexthop is a nexthop object (ip nexthop): a link, or a group of others.
type Nexthop struct {
	LinkIndex int
	Group     []uint32
}

// DefaultRoutes dumps every unicast default route of the netns, in every
// table. It reads the raw dump because a route that uses a nexthop object
// carries only RTA_NH_ID when the netns has nexthop_compat_mode 0 (no
// RTA_OIF, no RTA_MULTIPATH), and netlink's route list drops that.
func (n *NS) DefaultRoutes() ([]DefaultRoute, error) {
	msgs, err := n.dump(unix.RTM_GETROUTE, unix.RTM_NEWROUTE, &nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_UNSPEC}})
	if err != nil {
		return nil, fmt.Errorf("list routes in %s netns: %w", n, err)
	}
	var out []DefaultRoute
	for _, m := range msgs {
		if len(m) < unix.SizeofRtMsg {
			continue
		}
		h := nl.DeserializeRtMsg(m)
		if h.Dst_len != 0 || h.Type != unix.RTN_UNICAST || h.Flags&unix.RTM_F_CLONED != 0 {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[unix.SizeofRtMsg:])
		if err != nil {
			return nil, fmt.Errorf("parse route in %s netns: %w", n, err)
		}
		r := DefaultRoute{Family: int(h.Family), Table: int(h.Table)}
		for _, a := range attrs {
			switch a.Attr.Type {
			case unix.RTA_TABLE:
				r.Table = int(u32(a.Value))
			case unix.RTA_OIF:
				r.LinkIndexes = append(r.LinkIndexes, int(u32(a.Value)))
			case unix.RTA_MULTIPATH:
				r.LinkIndexes = append(r.LinkIndexes, multipathLinks(a.Value)...)
			case rtaNHID:
				r.NexthopID = u32(a.Value)
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// multipathLinks reads the outgoing links of RTA_MULTIPATH: a run of
// struct rtnexthop, each padded to 4 bytes.
func multipathLinks(b []byte) []int {
	var out []int
	for len(b) >= unix.SizeofRtNexthop {
		hop := nl.DeserializeRtNexthop(b)
		size := int(hop.RtNexthop.Len)
		if size < unix.SizeofRtNexthop || size > len(b) {
			break
		}
		out = append(out, int(hop.RtNexthop.Ifindex))
		size = (size + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1)
		if size > len(b) {
			break
		}
		b = b[size:]
	}
	return out
}

// Nexthops dumps the netns' nexthop objects (RTM_GETNEXTHOP; the kernel
// has them since 5.3), by ID.
func (n *NS) Nexthops() (map[uint32]Nexthop, error) {
	msgs, err := n.dump(unix.RTM_GETNEXTHOP, unix.RTM_NEWNEXTHOP, nhmsg{})
	if err != nil {
		return nil, fmt.Errorf("list nexthops in %s netns: %w", n, err)
	}
	out := map[uint32]Nexthop{}
	for _, m := range msgs {
		if len(m) < sizeofNhmsg {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[sizeofNhmsg:])
		if err != nil {
			return nil, fmt.Errorf("parse nexthop in %s netns: %w", n, err)
		}
		var id uint32
		var nh Nexthop
		for _, a := range attrs {
			switch a.Attr.Type {
			case unix.NHA_ID:
				id = u32(a.Value)
			case unix.NHA_OIF:
				nh.LinkIndex = int(u32(a.Value))
			case unix.NHA_GROUP:
				// struct nexthop_grp: id (u32), weight, two reserved fields.
				for g := a.Value; len(g) >= 8; g = g[8:] {
					nh.Group = append(nh.Group, u32(g))
				}
			}
		}
		if id != 0 {
			out[id] = nh
		}
	}
	return out, nil
}

// nhmsg is struct nhmsg, the header of a nexthop request: family, scope,
// protocol, a reserved byte and flags. Zero asks for every nexthop.
type nhmsg struct{}

const sizeofNhmsg = 8

func (nhmsg) Len() int          { return sizeofNhmsg }
func (nhmsg) Serialize() []byte { return make([]byte, sizeofNhmsg) }

// dump runs one netlink dump inside the netns, again when the kernel
// interrupts it because the table changed under it.
func (n *NS) dump(req, res int, hdr nl.NetlinkRequestData) ([][]byte, error) {
	var msgs [][]byte
	err := n.Do(func() error {
		var err error
		for try := 0; try < 5; try++ {
			r := nl.NewNetlinkRequest(req, unix.NLM_F_DUMP)
			r.AddData(hdr)
			msgs, err = r.Execute(unix.NETLINK_ROUTE, uint16(res))
			if !errors.Is(err, nl.ErrDumpInterrupted) {
				break
			}
		}
		return err
	})
	return msgs, err
}

func u32(b []byte) uint32 {
	if len(b) < 4 {
		return 0
	}
	return nl.NativeEndian().Uint32(b[:4])
}
