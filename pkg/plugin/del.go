package plugin

import (
	"errors"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// Del gives back exactly what the attachment took. It succeeds when there
// is nothing left to do (no record, a second DEL, the netns gone), also when
// the state dir cannot be used but provably holds no record of this
// attachment, and fails only when it could have restored a device and did
// not, so the runtime retries.
func (p *Plugin) Del(args *skel.CmdArgs) (err error) {
	clock := newStepClock()
	o, err := p.begin(args, true)
	if err != nil {
		return err
	}
	defer o.close()
	defer func() { clock.log(o, err) }()
	o.mark = clock.mark
	o.mark("config")
	key := state.Key(args.ContainerID, args.IfName)
	unlock, err := o.lock()
	if err != nil {
		if !o.store.Absent(key) || isCode(err, types.ErrTryAgainLater) {
			return err
		}
		// A read-only, full or missing state dir. ADD writes the record
		// before it moves anything, so without one this attachment
		// holds nothing.
		o.log.Warn("state dir unusable, but it holds no record of this attachment: nothing to release", "error", err)
		return o.ipamDel()
	}
	defer unlock()
	o.mark("lock")

	rec, err := o.store.Get(key)
	if err != nil {
		o.eng.SetAside(key, err)
		return o.ipamDel()
	}
	if rec == nil {
		o.log.Info("no record for this attachment; nothing to release")
		return o.ipamDel()
	}
	if _, err := o.eng.ReleaseRecord(rec, o.SettleTimeout); err != nil {
		return asCNIError(err, "release PF "+rec.PF().PCIAddress)
	}
	return o.ipamDel()
}

func isCode(err error, code uint) bool {
	var e *types.Error
	return errors.As(err, &e) && e.Code == code
}
