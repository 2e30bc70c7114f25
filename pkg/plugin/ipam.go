package plugin

import (
	"errors"
	"fmt"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ipam"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
)

// runIPAM asks the configured IPAM plugin for addresses and puts them on
// the PF (interfaces[0] of res) inside the pod.
func (o *op) runIPAM(res *current.Result, pod *netdev.NS) error {
	r, err := ipam.ExecAdd(o.conf.IPAM.Type, o.args.StdinData)
	if err != nil {
		return fmt.Errorf("IPAM plugin %q ADD: %w", o.conf.IPAM.Type, err)
	}
	ipRes, err := current.NewResultFromResult(r)
	if err != nil {
		return fmt.Errorf("IPAM plugin %q result: %w", o.conf.IPAM.Type, err)
	}
	if len(ipRes.IPs) == 0 {
		return fmt.Errorf("IPAM plugin %q returned no IP addresses", o.conf.IPAM.Type)
	}
	for _, ip := range ipRes.IPs {
		ip.Interface = current.Int(0)
	}
	res.IPs, res.Routes, res.DNS = ipRes.IPs, ipRes.Routes, ipRes.DNS
	if err := pod.Do(func() error { return ipam.ConfigureIface(o.args.IfName, res) }); err != nil {
		return fmt.Errorf("configure IPAM addresses on %q: %w", o.args.IfName, err)
	}
	return nil
}

// ipamDel releases IPAM addresses; IPAM plugins make DEL idempotent.
func (o *op) ipamDel() error {
	if o.conf.IPAM.Type == "" {
		return nil
	}
	if err := ipam.ExecDel(o.conf.IPAM.Type, o.args.StdinData); err != nil {
		return fmt.Errorf("IPAM plugin %q DEL: %w", o.conf.IPAM.Type, err)
	}
	return nil
}

// mergePrevResult keeps a chained prevResult and appends this plugin's
// interfaces (and IPs, re-indexed) after its own.
func (o *op) mergePrevResult(res *current.Result) error {
	if o.conf.RawPrevResult == nil {
		return nil
	}
	if err := version.ParsePrevResult(&o.conf.PluginConf); err != nil {
		return fmt.Errorf("parse prevResult: %w", err)
	}
	prev, err := current.NewResultFromResult(o.conf.PrevResult)
	if err != nil {
		return fmt.Errorf("convert prevResult: %w", err)
	}
	if prev == nil {
		return errors.New("prevResult is empty")
	}
	offset := len(prev.Interfaces)
	for _, ip := range res.IPs {
		if ip.Interface != nil {
			ip.Interface = current.Int(*ip.Interface + offset)
		}
	}
	res.Interfaces = append(prev.Interfaces, res.Interfaces...)
	res.IPs = append(prev.IPs, res.IPs...)
	res.Routes = append(prev.Routes, res.Routes...)
	if len(res.DNS.Nameservers) == 0 {
		res.DNS = prev.DNS
	}
	return nil
}
