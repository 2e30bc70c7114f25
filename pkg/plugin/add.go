package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/failpoint"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/policy"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// Add hands a free PF and all its VF netdevs to the pod.
func (p *Plugin) Add(args *skel.CmdArgs) (err error) {
	clock := newStepClock()
	if err := config.ValidateIfName(args.IfName); err != nil {
		return err
	}
	if err := p.checkKernel(); err != nil {
		return err
	}
	o, err := p.begin(args, false)
	if err != nil {
		return err
	}
	defer o.close()
	defer func() { clock.log(o, err) }()
	o.mark = clock.mark
	o.mark("config")
	pod, err := o.openPodNS()
	if err != nil {
		return err
	}
	defer pod.Close()

	unlock, err := o.lock()
	if err != nil {
		return err
	}
	defer unlock()
	o.mark("lock")
	recs := o.eng.Repair()
	if err := o.refuseExisting(recs); err != nil {
		return err
	}
	o.mark("repair")
	view, err := o.viewHost()
	if err != nil {
		return types.NewError(types.ErrInternal, "inspect host netns", err.Error())
	}
	if view, err = o.adoptFree(recs, view); err != nil {
		return err
	}
	chosen, err := o.choosePF(recs, view)
	if err != nil {
		o.log.Warn("no PF for attachment", "error", err)
		return err
	}
	o.mark("choose")
	if chosen, view, err = o.toBaseline(chosen, view); err != nil {
		return err
	}
	o.mark("baseline")
	rec, links, err := o.plan(chosen, view, pod)
	if err != nil {
		return err
	}
	o.mark("plan")
	res, err := o.attach(rec, links, pod)
	if err != nil {
		return err
	}
	return o.print(res)
}

// refuseExisting refuses an ADD for a container+ifname that already has an
// attachment. The spec says an interface of the requested name that exists
// in the container is an error, and a runtime never repeats an ADD it got
// a result for: the existing attachment is named and left as it is. (One
// whose netns died was released by repair just before, so it is not here.)
func (o *op) refuseExisting(recs []*state.Record) error {
	for _, r := range recs {
		if r.ContainerID != o.args.ContainerID || r.IfName != o.args.IfName {
			continue
		}
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("container %s already has an attachment on %s: PF %s (host name %s), pod %s, %s",
				r.ContainerID, r.IfName, r.PF().PCIAddress, r.PF().OriginalName, r.Pod, r.Phase),
			fmt.Sprintf("netns %s; the existing attachment was left as it is; DEL it first", r.Netns))
	}
	return nil
}

// plan lists the devices to take, from the host links, and the names they
// will have in the pod. The PF becomes CNI_IFNAME; a VF keeps its name
// unless the pod already has one like it, then it becomes <ifname>v<N>.
func (o *op) plan(pf sriov.PF, view *hostView, pod *netdev.NS) (*state.Record, []netlink.Link, error) {
	podLinks, err := pod.ByName()
	if err != nil {
		return nil, nil, types.NewError(types.ErrInternal, "inspect pod netns", err.Error())
	}
	if _, taken := podLinks[o.args.IfName]; taken {
		return nil, nil, types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("the pod already has an interface named %q", o.args.IfName), "choose another CNI_IFNAME")
	}
	id, err := pod.ID()
	if err != nil {
		return nil, nil, types.NewError(types.ErrInternal, "identify pod netns", err.Error())
	}
	rec := &state.Record{
		Version: state.Version, ContainerID: o.args.ContainerID, IfName: o.args.IfName,
		Netns: o.args.Netns, NetnsID: id, Pod: o.owner, Phase: state.Adding, Created: time.Now().UTC(),
		Network: o.conf.Name, IPAMConf: o.ipamConf(), Unpinned: o.conf.AllocatedPCI() == "" && o.claim == nil,
	}
	if rec.SRIOV, err = o.eng.RecordSRIOV(pf); err != nil {
		return nil, nil, types.NewError(types.ErrInternal, "read the SR-IOV state of PF "+pf.PCIAddress, err.Error())
	}
	podHas := map[string]bool{}
	for name := range podLinks {
		podHas[name] = true
	}
	var vfs []sriov.VF
	for _, vf := range pf.VFs {
		if _, ok := view.byName[vf.Name]; vf.Name == "" || !ok {
			o.log.Info("VF has no netdev in the host netns; left alone", "pf", pf.PCIAddress, "vf", vf.Index, "vfPCI", vf.PCIAddress)
			continue
		}
		vfs = append(vfs, vf)
	}
	names, err := policy.PodNames(o.args.IfName, vfs, podHas)
	if err != nil {
		return nil, nil, types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "use a shorter CNI_IFNAME")
	}
	pfLink := view.byName[pf.Name]
	links := []netlink.Link{pfLink}
	rec.Devices = append(rec.Devices, deviceOf(pf.PCIAddress, pfLink, o.args.IfName, -1))
	for _, vf := range vfs {
		l := view.byName[vf.Name]
		links = append(links, l)
		rec.Devices = append(rec.Devices, deviceOf(vf.PCIAddress, l, names[vf.Index], vf.Index))
	}
	return rec, links, nil
}

func deviceOf(addr string, l netlink.Link, podName string, vfIndex int) state.Device {
	a := l.Attrs()
	return state.Device{
		PCIAddress: addr, OriginalName: a.Name, PodName: podName,
		MAC: a.HardwareAddr.String(), MTU: a.MTU, Up: a.Flags&net.FlagUp != 0, VFIndex: vfIndex,
	}
}

// attach moves the planned devices into the pod. The record is on disk
// before the first device moves; on any failure every device goes back to
// the host under its original name and the record goes away.
func (o *op) attach(rec *state.Record, links []netlink.Link, pod *netdev.NS) (_ types.Result, err error) {
	// The transit netns, made only when a device needs it, outlives the
	// rollback below (defers run last in, first out), so a rollback finds
	// devices parked there.
	var transit *netdev.NS
	defer func() { transit.Close() }()
	getTransit := func() (*netdev.NS, error) {
		if transit != nil {
			return transit, nil
		}
		t, err := netdev.Temp()
		if err != nil {
			return nil, fmt.Errorf("create transit netns: %w", err)
		}
		transit = t
		return t, nil
	}
	var undo undoList
	defer func() {
		if err != nil {
			o.log.Error("ADD failed; rolling back", "pf", rec.PF().PCIAddress, "error", err)
			err = asCNIError(undo.run(err), "attach PF "+rec.PF().PCIAddress)
		}
	}()

	if err := o.store.Save(rec); err != nil {
		return nil, err
	}
	failpoint.Hit(failpoint.AddRecordAdding)
	o.mark("record-adding")
	undo.push(func() error { return o.eng.Release(rec, []*netdev.NS{pod, transit}, 0) })

	if err := o.moveToPod(rec, links, getTransit, pod); err != nil {
		return nil, err
	}
	o.mark("move")
	podLinks, err := o.bringUp(rec, pod)
	if err != nil {
		return nil, err
	}
	o.mark("up")
	res := o.result(rec, podLinks)
	removeInfo, err := o.writeDeviceInfo(rec.PF().PCIAddress)
	if err != nil {
		return nil, err
	}
	undo.push(removeInfo)
	if o.conf.IPAM.Type != "" {
		if err := o.runIPAM(res, pod); err != nil {
			return nil, err
		}
		undo.push(o.ipamDel)
	}
	if err := o.mergePrevResult(res); err != nil {
		return nil, err
	}
	if rec.Result, err = json.Marshal(res); err != nil {
		return nil, fmt.Errorf("encode result: %w", err)
	}
	o.mark("result")
	rec.Phase = state.Attached
	if err := o.store.Save(rec); err != nil {
		return nil, err
	}
	failpoint.Hit(failpoint.AddRecordAttached)
	o.mark("record-attached")
	o.log.Info("attached PF", "pf", rec.PF().PCIAddress, "hostName", rec.PF().OriginalName, "vfs", len(rec.Devices)-1, "netns", rec.Netns)
	return res, nil
}

// moveToPod tags each device that needs it (NS.AddTag) on the host and
// moves it into the pod, where a device that is renamed (the PF, to
// CNI_IFNAME) gets its pod name: the pod's netns is the runtime's and ours
// until ADD returns, so no udev or NetworkManager renames there. Each
// netns move costs the kernel an RCU barrier, and that, not the plugin, is
// most of ADD's time (docs/bench.md has the numbers), so every device
// makes exactly one move. Only a device
// whose host name the pod already has (the kernel refuses that move with
// EEXIST, before touching the device) goes through a private transit
// netns: host -> transit, renamed there, transit -> pod.
func (o *op) moveToPod(rec *state.Record, links []netlink.Link, transit func() (*netdev.NS, error), pod *netdev.NS) error {
	renamed := map[string]string{} // PCI address -> pod name, of devices renamed in the pod
	viaTransit := false
	for i, l := range links {
		d := &rec.Devices[i]
		if err := o.host.AddTag(l, d.PCIAddress); err != nil {
			return err
		}
		failpoint.Hit(failpoint.AddTagged)
		err := o.host.Move(l, pod)
		if errors.Is(err, unix.EEXIST) && d.PodName != d.OriginalName {
			t, terr := transit()
			if terr != nil {
				return terr
			}
			if err := o.host.Move(l, t); err != nil {
				return err
			}
			failpoint.Hit(failpoint.AddToTransit)
			viaTransit = true
			continue
		}
		if err != nil {
			return err
		}
		failpoint.Hit(failpoint.AddToPod)
		if d.PodName != d.OriginalName {
			renamed[d.PCIAddress] = d.PodName
		}
		o.log.Info("moved device to pod", "pci", d.PCIAddress, "from", d.OriginalName, "to", d.PodName, "vf", d.VFIndex)
	}
	if len(renamed) > 0 {
		inPod, err := pod.ByPCI()
		if err != nil {
			return err
		}
		if err := pod.RenameAll(inPod, renamed); err != nil {
			return err
		}
	}
	if viaTransit {
		if err := o.throughTransit(rec, transit, pod); err != nil {
			return err
		}
	}
	failpoint.Hit(failpoint.AddRenamed)
	return nil
}

// throughTransit renames the devices parked in transit to their pod names
// and moves them on into the pod.
func (o *op) throughTransit(rec *state.Record, transit func() (*netdev.NS, error), pod *netdev.NS) error {
	t, err := transit()
	if err != nil {
		return err
	}
	inTransit, err := t.ByPCI()
	if err != nil {
		return err
	}
	names := make(map[string]string, len(inTransit))
	for _, d := range rec.Devices {
		if _, ok := inTransit[d.PCIAddress]; ok {
			names[d.PCIAddress] = d.PodName
		}
	}
	if err := t.RenameAll(inTransit, names); err != nil {
		return err
	}
	for addr, l := range inTransit {
		if _, ours := names[addr]; !ours {
			continue
		}
		if err := t.Move(l, pod); err != nil {
			return err
		}
		failpoint.Hit(failpoint.AddToPod)
		o.log.Info("moved device to pod through transit", "pci", addr, "to", names[addr])
	}
	return nil
}

// bringUp sets the PF up in the pod, and each VF that was up on the host
// (moving a device between namespaces takes it down).
func (o *op) bringUp(rec *state.Record, pod *netdev.NS) (map[string]netlink.Link, error) {
	podLinks, err := pod.ByPCI()
	if err != nil {
		return nil, err
	}
	for _, d := range rec.Devices {
		l, ok := podLinks[d.PCIAddress]
		if !ok {
			return nil, fmt.Errorf("device %s (%s) is not in the pod after the move", d.PCIAddress, d.PodName)
		}
		if d.IsPF() || d.Up {
			if err := pod.SetUp(l); err != nil {
				return nil, err
			}
			failpoint.Hit(failpoint.AddUp)
		}
	}
	return podLinks, nil
}

// result lists each VF in VF index order, then the PF, as they are in the
// pod. The PF comes last because multus v3.x writes one network-status
// entry per attachment and takes its interface and MAC from the last
// interface of the result that has a sandbox: with the PF first, the pod's
// network-status named a VF instead of CNI_IFNAME. Multus v4 writes one
// entry per sandboxed interface, in the result's order, so the PF's entry
// is there under CNI_IFNAME wherever it stands; IPs go to the entry their
// interface index points at (runIPAM points them at the PF).
func (o *op) result(rec *state.Record, podLinks map[string]netlink.Link) *current.Result {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	iface := func(d state.Device) *current.Interface {
		a := podLinks[d.PCIAddress].Attrs()
		return &current.Interface{Name: a.Name, Mac: a.HardwareAddr.String(), Mtu: a.MTU, Sandbox: o.args.Netns, PciID: d.PCIAddress}
	}
	for _, d := range rec.Devices {
		if !d.IsPF() {
			res.Interfaces = append(res.Interfaces, iface(d))
		}
	}
	res.Interfaces = append(res.Interfaces, iface(*rec.PF()))
	return res
}

// asCNIError keeps a CNI error as it is and wraps anything else.
// A file system that is read-only or full (the state dir, most likely) is
// an I/O failure (code 5) for the runtime, not an internal error.
func asCNIError(err error, msg string) error {
	if e, ok := err.(*types.Error); ok {
		return e
	}
	if errors.Is(err, unix.EROFS) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return types.NewError(types.ErrIOFailure, msg, err.Error())
	}
	return types.NewError(types.ErrInternal, msg, err.Error())
}
