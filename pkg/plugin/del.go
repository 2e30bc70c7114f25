package plugin

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// Del gives back exactly what the attachment took. It succeeds when there
// is nothing left to do (no record, a second DEL, the netns gone) and fails
// only when a device it found could not be restored, so the runtime retries.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	o, err := p.begin(args)
	if err != nil {
		return err
	}
	defer o.close()
	unlock, err := o.lock()
	if err != nil {
		return err
	}
	defer unlock()

	rec, err := o.store.Get(state.Key(args.ContainerID, args.IfName))
	if err != nil {
		o.setAside(state.Key(args.ContainerID, args.IfName), err)
		return o.ipamDel()
	}
	if rec == nil {
		o.log.Info("no record for this attachment; nothing to release")
		return o.ipamDel()
	}
	if err := o.releaseRecord(rec, o.SettleTimeout); err != nil {
		return asCNIError(err, "release PF "+rec.PF().PCIAddress)
	}
	return o.ipamDel()
}
