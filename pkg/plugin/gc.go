package plugin

import (
	"errors"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// GC releases every attachment of this network that the runtime no longer
// lists as valid, and passes GC on to the IPAM plugin. Attachments of other
// networks (sharing the state dir) are not this GC's to judge; a record of
// an earlier release names no network and is released only by repair, once
// its netns is gone.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	o, err := p.begin(args, true)
	if err != nil {
		return err
	}
	defer o.close()
	if !o.conf.HasAttachmentList {
		return types.NewError(types.ErrInvalidNetworkConfig, "GC needs cni.dev/valid-attachments",
			"without the list every attachment would look stale; nothing was released")
	}
	unlock, err := o.lock()
	if err != nil {
		return err
	}
	defer unlock()
	valid := map[string]bool{}
	for _, a := range o.conf.ValidAttachments {
		valid[state.Key(a.ContainerID, a.IfName)] = true
	}
	var errs []error
	for _, r := range o.eng.Repair() {
		switch {
		case valid[r.Key()]:
			continue
		case r.Network == "":
			o.log.Info("GC: record names no network (written by an earlier release); released only once its netns is gone", "record", r.Key())
			continue
		case r.Network != o.conf.Name:
			continue // another network's
		}
		o.log.Info("GC: releasing attachment not in valid-attachments", "record", r.Key(), "owner", r.Pod.String())
		if err := o.eng.ReleaseForGone(r); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, o.ipamGC())
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrInternal, "GC could not release every stale attachment", err.Error())
	}
	return nil
}
