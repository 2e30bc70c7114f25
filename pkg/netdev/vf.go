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

// VFConfigs reads the PF's view of its VFs, by VF index.
func (n *NS) VFConfigs(pfName string) (map[int]VFConfig, error) {
	l, err := n.LinkByName(pfName)
	if err != nil {
		return nil, err
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
func (n *NS) SetVFConfig(pfName string, vf int, have, want VFConfig, setMAC bool) error {
	pf, err := n.LinkByName(pfName)
	if err != nil {
		return err
	}
	fail := func(what string, err error) error {
		return fmt.Errorf("set %s of VF %d on PF %q: %w", what, vf, pfName, err)
	}
	if setMAC && have.MAC != want.MAC {
		hw, err := net.ParseMAC(want.MAC)
		if err != nil {
			return fail("MAC", err)
		}
		if err := n.nl.LinkSetVfHardwareAddr(pf, vf, hw); err != nil {
			return fail("MAC", err)
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
