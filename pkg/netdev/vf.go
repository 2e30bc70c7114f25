package netdev

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// SetMAC sets a link's hardware address.
func (n *NS) SetMAC(l netlink.Link, mac string) error {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return fmt.Errorf("set MAC of %q: %w", l.Attrs().Name, err)
	}
	if err := n.nl.LinkSetHardwareAddr(l, hw); err != nil {
		return fmt.Errorf("set MAC of %q to %s in %s netns: %w", l.Attrs().Name, mac, n, err)
	}
	return nil
}

// VFConfig is what a PF reports for one of its VFs (ip link show PF: the
// "vf N" lines), in the form the plugin records and restores.
type VFConfig struct {
	MAC        string `json:"mac,omitempty"`
	VLAN       int    `json:"vlan,omitempty"`
	QoS        int    `json:"qos,omitempty"`
	SpoofCheck bool   `json:"spoofCheck"`
	Trust      bool   `json:"trust"`
	LinkState  uint32 `json:"linkState"`
	MinTxRate  uint32 `json:"minTxRate,omitempty"`
	MaxTxRate  uint32 `json:"maxTxRate,omitempty"`
}

// VFConfigs reads the PF's view of its VFs, by VF index. The PF is named
// by its link (its ifindex), never by name: a name can have passed to
// another device since the caller found it.
func (n *NS) VFConfigs(pf netlink.Link) (map[int]VFConfig, error) {
	l, err := n.nl.LinkByIndex(pf.Attrs().Index)
	if err != nil {
		return nil, fmt.Errorf("read VFs of PF %q (ifindex %d) in %s netns: %w", pf.Attrs().Name, pf.Attrs().Index, n, err)
	}
	out := map[int]VFConfig{}
	for _, v := range l.Attrs().Vfs {
		out[v.ID] = VFConfig{
			MAC: v.Mac.String(), VLAN: v.Vlan, QoS: v.Qos, SpoofCheck: v.Spoofchk, Trust: v.Trust != 0,
			LinkState: v.LinkState, MinTxRate: v.MinTxRate, MaxTxRate: v.MaxTxRate,
		}
	}
	return out, nil
}

// SetVFConfig gives VF vf of the PF the settings want where they differ
// from have. The VF MAC is set only with setMAC: setting it through the PF
// marks it administratively set, and the VF may then no longer change it.
// Every write addresses the PF by its link's ifindex.
func (n *NS) SetVFConfig(pf netlink.Link, vf int, have, want VFConfig, setMAC bool) error {
	pfName := pf.Attrs().Name
	fail := func(what string, err error) error {
		return fmt.Errorf("set %s of VF %d on PF %q: %w", what, vf, pfName, err)
	}
	if setMAC && have.MAC != want.MAC {
		if err := n.SetVFMAC(pf, vf, want.MAC); err != nil {
			return err
		}
	}
	if have.VLAN != want.VLAN || have.QoS != want.QoS {
		if err := n.nl.LinkSetVfVlanQos(pf, vf, want.VLAN, want.QoS); err != nil {
			return fail("VLAN/QoS", err)
		}
	}
	if have.SpoofCheck != want.SpoofCheck {
		if err := n.nl.LinkSetVfSpoofchk(pf, vf, want.SpoofCheck); err != nil {
			return fail("spoofchk", err)
		}
	}
	if have.Trust != want.Trust {
		if err := n.nl.LinkSetVfTrust(pf, vf, want.Trust); err != nil {
			return fail("trust", err)
		}
	}
	if have.LinkState != want.LinkState {
		if err := n.nl.LinkSetVfState(pf, vf, want.LinkState); err != nil {
			return fail("link state", err)
		}
	}
	if have.MinTxRate != want.MinTxRate || have.MaxTxRate != want.MaxTxRate {
		if err := n.nl.LinkSetVfRate(pf, vf, int(want.MinTxRate), int(want.MaxTxRate)); err != nil {
			return fail("rate", err)
		}
	}
	return nil
}

// SetVFMAC sets VF vf's MAC through the PF. The zero MAC lifts an
// administratively set one on igb, ixgbe and i40e; some drivers refuse it.
func (n *NS) SetVFMAC(pf netlink.Link, vf int, mac string) error {
	hw, err := net.ParseMAC(mac)
	if err == nil {
		err = n.nl.LinkSetVfHardwareAddr(pf, vf, hw)
	}
	if err != nil {
		return fmt.Errorf("set MAC of VF %d on PF %q to %s: %w", vf, pf.Attrs().Name, mac, err)
	}
	return nil
}
