package release

// Recovery: whatever a killed plugin, a vanished pod or a tampered file
// left behind is found here, under the lock, and put right.

import (
	"errors"
	"fmt"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// ReleaseRecord vets a record and releases it (Release) from wherever its
// devices are: its own netns, if that still exists, and the host. trusted
// is false when the record was set aside instead. It runs under the lock.
func (e *Engine) ReleaseRecord(rec *state.Record, settle time.Duration) (trusted bool, err error) {
	if err := e.vet(rec); errors.Is(err, errCannotVet) {
		// Kept whole, it still holds its devices and the PF stays out of
		// the pool: a later DEL, GC or ADD tries again.
		e.Log.Warn("record kept for a later run: sysfs could not be read to vet it", "record", rec.Key(), "error", err)
		return false, err
	} else if err != nil {
		e.SetAside(rec.Key(), err)
		// Set aside, it holds nothing for this run: its PF may be chosen.
		for i := range rec.Devices {
			rec.Devices[i].Released = true
		}
		if rec.SRIOV != nil {
			rec.SRIOV.Restored = true
		}
		return false, nil
	}
	pod := netdev.OpenIfAlive(rec.Netns, rec.NetnsID)
	defer pod.Close()
	e.mark("vet")
	return true, e.Release(rec, []*netdev.NS{pod}, settle)
}

// ReleaseForGone releases an attachment for a runtime that will not DEL it
// (its pod is gone, or GC says it is not valid), and then its IPAM
// addresses, with the configuration its ADD used.
func (e *Engine) ReleaseForGone(rec *state.Record) error {
	trusted, err := e.ReleaseRecord(rec, 0)
	if !trusted {
		return err
	}
	if e.ReleaseIPAM == nil {
		if len(rec.IPAMConf) > 0 {
			e.Log.Info("the attachment's IPAM addresses are left to the runtime's DEL or GC", "record", rec.Key())
		}
		return err
	}
	return errors.Join(err, e.ReleaseIPAM(rec))
}

// SetAside moves an unreadable or untrusted record out of the way, so the
// node's other PFs keep working, and says where it went.
func (e *Engine) SetAside(key string, cause error) {
	aside, err := e.Store.SetAside(key)
	e.Log.Error("state record set aside for a person to inspect; its devices are not touched",
		"record", key, "problem", cause, "movedTo", aside, "moveError", err)
}

// Repair runs under the lock (Lock) before ADD and GC, and in Reconcile
// for the agent. Records left in "adding" or "releasing" belong to a
// process that died (whoever holds the lock is the only one working), so
// they are rolled back or finished; attached records whose netns is gone
// are released. It returns the records that still hold devices.
func (e *Engine) Repair() []*state.Record {
	recs, bad, err := e.Store.List()
	for _, b := range bad {
		e.Log.Error("unreadable state record set aside", "movedTo", b.Path, "problem", b.Err)
	}
	if err != nil {
		e.Log.Error("list state records", "error", err)
	}
	var live []*state.Record
	for _, r := range recs {
		stale := r.Phase != state.Attached || e.netnsGone(r)
		if stale {
			e.Log.Info("repairing stale attachment", "record", r.Key(), "owner", r.Pod.String(), "phase", r.Phase)
			err := e.ReleaseForGone(r)
			switch {
			case err != nil && r.Holds():
				e.Log.Error("repair of stale attachment failed; will retry", "record", r.Key(), "error", err)
			case err != nil:
				// The devices are home and the record is gone: what failed
				// (the IPAM DEL) is not tried again by this plugin.
				e.Log.Error("stale attachment released, but its IPAM addresses were not; the runtime's DEL or GC for it frees them",
					"record", r.Key(), "error", err)
			}
			if !r.Holds() {
				continue
			}
		}
		live = append(live, r)
	}
	return live
}

// netnsGone reports whether an attached record's netns is gone. A caller
// that may not see every netns (the agent in a container without the host's
// pid namespace or /var/run/netns) says so through JudgeNetns: a record
// whose netns it cannot see is left alone, so a live pod's PF is never
// released because its netns merely looked absent.
func (e *Engine) netnsGone(r *state.Record) bool {
	if netdev.Alive(r.Netns, r.NetnsID) {
		return false
	}
	if e.JudgeNetns != nil {
		if err := e.JudgeNetns(r.Netns); err != nil {
			e.Log.Warn("cannot tell whether the attachment's netns is gone; leaving it alone", "record", r.Key(), "netns", r.Netns, "why", err)
			return false
		}
	}
	return true
}

// errCannotVet marks a vet that could not read sysfs (EIO, EAGAIN, a
// timeout, ...): that proves nothing about the record, which is kept as it
// is for a later run, with the devices' original names and the PF's
// SR-IOV state.
var errCannotVet = errors.New("cannot read sysfs to vet the record")

// vet refuses a record whose devices are not this node's SR-IOV PF and its
// VFs, so a tampered or foreign state file cannot make the plugin move
// arbitrary devices. It refuses only on proof, read from sysfs: a failed
// read returns errCannotVet.
func (e *Engine) vet(rec *state.Record) error {
	cannot := func(err error) error { return fmt.Errorf("%w: %w", errCannotVet, err) }
	pf, err := e.Sys.PF(rec.PF().PCIAddress)
	if errors.Is(err, sriov.ErrNotPF) {
		exists, serr := e.Sys.Exists(rec.PF().PCIAddress)
		if serr != nil {
			return cannot(serr)
		}
		if exists {
			return err // a device that is no SR-IOV PF
		}
		// The PF is gone (hot-unplugged), and its VFs went with it: a
		// device of the record that still exists is not one of them.
		for _, d := range rec.Devices[1:] {
			exists, serr := e.Sys.Exists(d.PCIAddress)
			if serr != nil {
				return cannot(serr)
			}
			if exists {
				return fmt.Errorf("PF %s is gone but device %s still exists, so it is not its VF", rec.PF().PCIAddress, d.PCIAddress)
			}
		}
		return nil // nothing to move
	}
	if err != nil {
		return cannot(err)
	}
	vfs := map[string]bool{}
	for _, vf := range pf.VFs {
		vfs[vf.PCIAddress] = true
	}
	addrs := []string{}
	for _, d := range rec.Devices[1:] {
		addrs = append(addrs, d.PCIAddress)
	}
	if rec.SRIOV != nil {
		for _, v := range rec.SRIOV.VFs {
			addrs = append(addrs, v.PCIAddress)
		}
	}
	for _, a := range addrs {
		if vfs[a] {
			continue
		}
		exists, serr := e.Sys.Exists(a)
		if serr != nil {
			return cannot(serr)
		}
		if exists {
			return fmt.Errorf("device %s is not a VF of PF %s", a, pf.PCIAddress)
		}
	}
	return nil
}
