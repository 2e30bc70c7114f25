package plugin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ipam"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// Check verifies the attachment against prevResult, strictly for what the
// pod's network depends on: the PF is in CNI_NETNS as CNI_IFNAME, is the
// PF the record holds, has the MAC the result reported and, with IPAM, the
// result's addresses and routes. VFs are reported in the log, not failed:
// a job may legitimately re-create or rebind them.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	if err := config.ValidateIfName(args.IfName); err != nil {
		return err
	}
	o, err := p.begin(args, false)
	if err != nil {
		return err
	}
	defer o.close()
	rec, err := o.store.Get(state.Key(args.ContainerID, args.IfName))
	if err != nil {
		return types.NewError(types.ErrIOFailure, "read state record", err.Error())
	}
	if rec == nil {
		return types.NewError(types.ErrUnknownContainer,
			fmt.Sprintf("no attachment for container %s on %s", args.ContainerID, args.IfName), "ADD was not run, or DEL already ran")
	}
	if rec.Phase != state.Attached {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("attachment of PF %s for container %s on %s is %s", rec.PF().PCIAddress, args.ContainerID, args.IfName, rec.Phase),
			"its ADD or DEL has not finished; the next ADD, DEL or GC completes it")
	}
	prev, err := o.checkedResult(rec)
	if err != nil {
		return err
	}
	pod, err := o.openPodNS()
	if err != nil {
		return err
	}
	defer pod.Close()
	problems := o.checkPF(rec, prev, pod)
	if o.conf.IPAM.Type != "" {
		if err := ipam.ExecCheck(o.conf.IPAM.Type, args.StdinData); err != nil {
			problems = append(problems, fmt.Errorf("IPAM plugin %q CHECK: %w", o.conf.IPAM.Type, err))
		}
	}
	if err := errors.Join(problems...); err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("attachment of PF %s is not intact", rec.PF().PCIAddress), err.Error())
	}
	o.reportVFs(rec, pod)
	return nil
}

// checkedResult is the result CHECK verifies: prevResult, which the spec
// has the runtime send (libcni sends the cached ADD result), or else the
// result the record kept from ADD.
func (o *op) checkedResult(rec *state.Record) (*current.Result, error) {
	var (
		res types.Result
		err error
	)
	switch {
	case o.conf.RawPrevResult != nil:
		if err = version.ParsePrevResult(&o.conf.PluginConf); err == nil {
			res = o.conf.PrevResult
		}
	case len(rec.Result) > 0:
		res, err = current.NewResult(rec.Result)
	default:
		err = errors.New("no prevResult was sent and the record kept no result")
	}
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "read the result to check", err.Error())
	}
	prev, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "convert the result to check", err.Error())
	}
	return prev, nil
}

// checkPF checks the PF's interface, MAC, addresses and routes in the pod
// against the result.
func (o *op) checkPF(rec *state.Record, prev *current.Result, pod *netdev.NS) []error {
	idx := slices.IndexFunc(prev.Interfaces, func(i *current.Interface) bool {
		return i.Name == o.args.IfName && i.Sandbox == o.args.Netns
	})
	if idx < 0 {
		return []error{fmt.Errorf("prevResult lists no interface %q in sandbox %s", o.args.IfName, o.args.Netns)}
	}
	want := prev.Interfaces[idx]
	links, err := pod.ByName()
	if err != nil {
		return []error{fmt.Errorf("inspect pod netns: %w", err)}
	}
	l, ok := links[o.args.IfName]
	if !ok {
		return []error{fmt.Errorf("PF %s (host name %s) is not in the pod as %q", rec.PF().PCIAddress, rec.PF().OriginalName, o.args.IfName)}
	}
	var problems []error
	if got := netdev.PCIOf(l); got != rec.PF().PCIAddress {
		problems = append(problems, fmt.Errorf("%q in the pod is device %q, not PF %s", o.args.IfName, got, rec.PF().PCIAddress))
	}
	if mac := l.Attrs().HardwareAddr.String(); mac != want.Mac {
		problems = append(problems, fmt.Errorf("PF %s has MAC %s, the result says %s", rec.PF().PCIAddress, mac, want.Mac))
	}
	if o.conf.IPAM.Type == "" {
		return problems
	}
	var ips []*current.IPConfig
	for _, ip := range prev.IPs {
		if ip.Interface != nil && *ip.Interface == idx {
			ips = append(ips, ip)
		}
	}
	err = pod.Do(func() error {
		return errors.Join(ip.ValidateExpectedInterfaceIPs(o.args.IfName, ips), ip.ValidateExpectedRoute(prev.Routes))
	})
	return append(problems, err)
}

// reportVFs logs each VF that is not in the pod with the MAC it had when
// taken. A job may re-create VFs (sriov_numvfs) or rebind them to vfio-pci,
// so this is not a failure; DEL gives back whatever exists then.
func (o *op) reportVFs(rec *state.Record, pod *netdev.NS) {
	links, err := pod.ByPCI()
	if err != nil {
		o.log.Warn("CHECK: could not list the pod's devices to report VFs", "error", err)
		return
	}
	for _, d := range rec.Devices[1:] {
		l, ok := links[d.PCIAddress]
		switch {
		case !ok:
			o.log.Warn("CHECK: VF is not in the pod as a netdev (re-created or rebound by the job?)", "vf", d.VFIndex, "pci", d.PCIAddress, "hostName", d.OriginalName)
		case l.Attrs().HardwareAddr.String() != d.MAC:
			o.log.Warn("CHECK: VF has another MAC than when taken", "vf", d.VFIndex, "pci", d.PCIAddress, "mac", l.Attrs().HardwareAddr.String(), "was", d.MAC)
		}
	}
}

// Status reports whether the plugin can work on this node: a kernel ADD
// accepts, sysfs readable and the state dir writable. Busy PFs are not a
// failure: multus would mark the node's network not ready.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := config.Parse(args.StdinData, p.NodeConfigFile)
	if err != nil {
		return err
	}
	var problems []error
	if err := p.checkKernel(); err != nil {
		problems = append(problems, err)
	}
	if _, err := os.ReadDir(filepath.Join(conf.SysfsRoot, "class", "net")); err != nil {
		problems = append(problems, fmt.Errorf("sysfs is not readable: %w", err))
	}
	if err := (state.Store{Dir: conf.StateDir}).Writable(); err != nil {
		problems = append(problems, err)
	}
	if conf.IPAM.Type != "" {
		if err := ipam.ExecStatus(conf.IPAM.Type, args.StdinData); err != nil {
			problems = append(problems, fmt.Errorf("IPAM plugin %q STATUS: %w", conf.IPAM.Type, err))
		}
	}
	if err := errors.Join(problems...); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "sriov-passthrough-cni cannot work on this node", err.Error())
	}
	return nil
}
