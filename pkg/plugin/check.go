package plugin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ipam"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// Check verifies the attachment is intact: the PF named CNI_IFNAME and
// every VF it took are in CNI_NETNS with the MACs they had when taken.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	o, err := p.begin(args)
	if err != nil {
		return err
	}
	defer o.close()
	rec, err := o.store.Get(state.Key(args.ContainerID, args.IfName))
	if err != nil {
		return types.NewError(types.ErrIOFailure, "read state record", err.Error())
	}
	if rec == nil || rec.Phase != state.Attached {
		return types.NewError(types.ErrUnknownContainer,
			fmt.Sprintf("no attachment for container %s on %s", args.ContainerID, args.IfName), "ADD was not run or did not finish")
	}
	pod, err := o.openPodNS()
	if err != nil {
		return err
	}
	defer pod.Close()
	links, err := pod.ByPCI()
	if err != nil {
		return types.NewError(types.ErrInternal, "inspect pod netns", err.Error())
	}
	var problems []error
	for _, d := range rec.Devices {
		l, ok := links[d.PCIAddress]
		switch {
		case !ok:
			problems = append(problems, fmt.Errorf("%s %s (host name %s) is not in the pod netns", kind(d), d.PCIAddress, d.OriginalName))
		case l.Attrs().HardwareAddr.String() != d.MAC:
			problems = append(problems, fmt.Errorf("%s %s has MAC %s, expected %s", kind(d), d.PCIAddress, l.Attrs().HardwareAddr, d.MAC))
		case d.IsPF() && l.Attrs().Name != args.IfName:
			problems = append(problems, fmt.Errorf("PF %s is named %q in the pod, expected %q", d.PCIAddress, l.Attrs().Name, args.IfName))
		}
	}
	if o.conf.IPAM.Type != "" {
		if err := ipam.ExecCheck(o.conf.IPAM.Type, args.StdinData); err != nil {
			problems = append(problems, fmt.Errorf("IPAM plugin %q CHECK: %w", o.conf.IPAM.Type, err))
		}
	}
	if err := errors.Join(problems...); err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("attachment of PF %s is not intact", rec.PF().PCIAddress), err.Error())
	}
	return nil
}

func kind(d state.Device) string {
	if d.IsPF() {
		return "PF"
	}
	return fmt.Sprintf("VF %d", d.VFIndex)
}

// Status reports whether the plugin can work on this node: sysfs readable
// and the state dir writable. Busy PFs are not a failure: multus would mark
// the node's network not ready.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := config.Parse(args.StdinData)
	if err != nil {
		return err
	}
	var problems []error
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
