package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ipam"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// runIPAM asks the configured IPAM plugin for addresses and puts them on
// the PF (the last of res's interfaces, see result) inside the pod.
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
	pf := len(res.Interfaces) - 1
	for _, ip := range ipRes.IPs {
		ip.Interface = current.Int(pf)
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

// ipamConf is what a later repair or GC gives the IPAM plugin's DEL for
// this attachment: ADD's network configuration, without prevResult (the
// IPAM plugin does not read it, and it can be large). nil without IPAM.
func (o *op) ipamConf() json.RawMessage {
	if o.conf.IPAM.Type == "" {
		return nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(o.args.StdinData, &fields); err != nil {
		return nil // Parse read it already: cannot happen
	}
	delete(fields, "prevResult")
	b, err := json.Marshal(fields)
	if err != nil {
		return nil
	}
	return b
}

// ipamDelRecord releases the IPAM addresses of an attachment that repair
// or GC gave back: the IPAM plugin named in the record's configuration
// gets it, with the attachment's own container ID, netns and ifname, not
// those of the invocation that found it. IPAM plugins make DEL idempotent.
func (o *op) ipamDelRecord(rec *state.Record) error {
	if len(rec.IPAMConf) == 0 {
		return nil
	}
	var conf types.NetConf
	if err := json.Unmarshal(rec.IPAMConf, &conf); err != nil || conf.IPAM.Type == "" {
		return fmt.Errorf("record %s: IPAM configuration without an IPAM type: %v", rec.Key(), err)
	}
	cniPath := os.Getenv("CNI_PATH")
	plugin, err := invoke.FindInPath(conf.IPAM.Type, filepath.SplitList(cniPath))
	if err != nil {
		return fmt.Errorf("IPAM plugin %q DEL for %s: %w", conf.IPAM.Type, rec.Key(), err)
	}
	args := &invoke.Args{Command: "DEL", ContainerID: rec.ContainerID, NetNS: rec.Netns, IfName: rec.IfName, Path: cniPath}
	if err := invoke.ExecPluginWithoutResult(context.Background(), plugin, rec.IPAMConf, args, nil); err != nil {
		return fmt.Errorf("IPAM plugin %q DEL for %s: %w", conf.IPAM.Type, rec.Key(), err)
	}
	o.log.Info("released the attachment's IPAM addresses", "record", rec.Key(), "ipam", conf.IPAM.Type)
	return nil
}

// ipamGC passes GC on to the IPAM plugin with the runtime's configuration
// and valid-attachments list, as the spec asks of delegating plugins.
func (o *op) ipamGC() error {
	if o.conf.IPAM.Type == "" {
		return nil
	}
	if err := invoke.DelegateGC(context.Background(), o.conf.IPAM.Type, o.args.StdinData, nil); err != nil {
		return fmt.Errorf("IPAM plugin %q GC: %w", o.conf.IPAM.Type, err)
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
