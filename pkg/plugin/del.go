package plugin

import (
	"errors"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
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

// releaseRecord vets a record and releases it from wherever its devices
// are: its own netns, if that still exists, and the host.
func (o *op) releaseRecord(rec *state.Record, settle time.Duration) error {
	if err := o.vet(rec); err != nil {
		o.setAside(rec.Key(), err)
		// Set aside, it holds nothing for this run: its PF may be chosen.
		for i := range rec.Devices {
			rec.Devices[i].Released = true
		}
		return nil
	}
	pod := o.recordedNS(rec)
	defer pod.Close()
	return o.release(rec, []*netdev.NS{pod}, settle)
}

// recordedNS opens the record's netns if it is still the same namespace
// (same nsfs inode); nil when it is gone or the path now holds another.
func (o *op) recordedNS(rec *state.Record) *netdev.NS {
	if id, err := netdev.PathID(rec.Netns); err != nil || id != rec.NetnsID {
		return nil
	}
	n, err := netdev.Open(rec.Netns)
	if err != nil {
		return nil
	}
	if id, err := n.ID(); err != nil || id != rec.NetnsID {
		n.Close()
		return nil
	}
	return n
}

// setAside moves an unreadable or untrusted record out of the way, so the
// node's other PFs keep working, and says where it went.
func (o *op) setAside(key string, cause error) {
	aside, err := o.store.SetAside(key)
	o.log.Error("state record set aside for a person to inspect; its devices are not touched",
		"record", key, "problem", cause, "movedTo", aside, "moveError", err)
}

// repair runs under the lock before ADD and GC. Records left in "adding"
// or "releasing" belong to a process that died (whoever holds the lock is
// the only one working), so they are rolled back or finished; attached
// records whose netns is gone are released. It returns the records that
// still hold devices.
func (o *op) repair() []*state.Record {
	recs, bad, err := o.store.List()
	for _, b := range bad {
		o.log.Error("unreadable state record set aside", "movedTo", b.Path, "problem", b.Err)
	}
	if err != nil {
		o.log.Error("list state records", "error", err)
	}
	var live []*state.Record
	for _, r := range recs {
		stale := r.Phase != state.Attached || !o.netnsAlive(r)
		if stale {
			o.log.Info("repairing stale attachment", "record", r.Key(), "owner", r.Pod.String(), "phase", r.Phase)
			if err := o.releaseRecord(r, 0); err != nil {
				o.log.Error("repair of stale attachment failed; will retry", "record", r.Key(), "error", err)
			}
			if len(r.Pending()) == 0 {
				continue
			}
		}
		live = append(live, r)
	}
	return live
}

func (o *op) netnsAlive(r *state.Record) bool {
	id, err := netdev.PathID(r.Netns)
	return err == nil && id == r.NetnsID
}

// GC releases every attachment the runtime no longer lists as valid.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	o, err := p.begin(args)
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
	for _, r := range o.repair() {
		if valid[r.Key()] {
			continue
		}
		o.log.Info("GC: releasing attachment not in valid-attachments", "record", r.Key(), "owner", r.Pod.String())
		if err := o.releaseRecord(r, 0); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrInternal, "GC could not release every stale attachment", err.Error())
	}
	return nil
}
