package policy

import "fmt"

// Route is a default route (any table, IPv4 or IPv6) as the kernel dumps
// it: the links its nexthops leave through (RTA_OIF, and each hop of
// RTA_MULTIPATH), or the nexthop object it uses (RTA_NH_ID).
type Route struct {
	LinkIndexes []int
	NexthopID   uint32
}

// Nexthop is a nexthop object (ip nexthop): a link, or a group of other
// nexthop objects.
type Nexthop struct {
	LinkIndex int
	Group     []uint32
}

// DefaultRouteLinks is every link a default route leaves through. A route
// that uses a nexthop object is resolved through it, and through its group
// members: with nexthop_compat_mode 0 the kernel reports such a route with
// no link at all. A nexthop ID that is not in nexthops (it went away
// between the two dumps) is an error: the caller must not guess.
func DefaultRouteLinks(routes []Route, nexthops map[uint32]Nexthop) (map[int]bool, error) {
	links := map[int]bool{}
	var resolve func(id uint32, depth int) error
	resolve = func(id uint32, depth int) error {
		nh, ok := nexthops[id]
		if !ok {
			return fmt.Errorf("default route uses nexthop %d, which the nexthop dump does not list", id)
		}
		if depth > 4 {
			return fmt.Errorf("nexthop %d: groups nested too deep", id)
		}
		if nh.LinkIndex != 0 {
			links[nh.LinkIndex] = true
		}
		for _, member := range nh.Group {
			if err := resolve(member, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	for _, r := range routes {
		for _, i := range r.LinkIndexes {
			if i != 0 {
				links[i] = true
			}
		}
		if r.NexthopID != 0 {
			if err := resolve(r.NexthopID, 0); err != nil {
				return nil, err
			}
		}
	}
	return links, nil
}
