package release

import (
	"errors"
	"log/slog"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/failpoint"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// Release gives every device of rec that is not yet back to the host,
// under its original name, MTU and admin state, then removes the record.
// It looks for each device, by PCI address, in places (the pod netns, nil
// when gone) and on the host; for devices found nowhere it waits up to
// settle for the kernel to hand them back from a dying netns. A device still
// missing then stays pending in the record, and a later run retries it. The
// error is non-nil only when a device was found and could not be restored.
func (e *Engine) Release(rec *state.Record, places []*netdev.NS, settle time.Duration) error {
	log := e.Log.With("releasing", rec.Key(), "owner", rec.Pod.String(), "pf", rec.PF().PCIAddress)
	if err := e.markReleasing(rec); err != nil {
		return err
	}
	e.mark("record-releasing")
	e.detachNetdevless(rec, log)
	deadline := time.Now().Add(settle)
	err := e.pfFirst(rec, places, deadline, log)
	trip := e.newHomecoming(rec, places)
	defer trip.close()
	err = errors.Join(err, trip.gather(deadline))
	e.mark("move")
	err = errors.Join(err, e.restoreHostState(rec, trip, log))
	trip.reportMissing(log)
	trip.close()
	e.mark("host-state")
	err = errors.Join(err, e.restoreSRIOV(rec, log))
	e.mark("sriov")
	err = e.saveOrFinish(rec, err, log)
	e.mark("record-removed")
	return err
}

// pfFirst brings the PF home alone and gives it back its VF count and
// the VFs' drivers before any VF netdev moves, when the job left the PF
// another VF count (a kind-sriov job writes sriov_numvfs 0, then its
// own). Writing the count removes every VF netdev, so bringing the job's
// VFs home first would be work for nothing: each netns move costs the
// kernel an rcu_barrier(), and each new VF's MAC goes through the PF's
// mailbox. And a VF the job made can hold the kernel name of a device of
// the record, which could then not come home. The VF netdevs the count
// brings back come home in restoreSRIOV.
func (e *Engine) pfFirst(rec *state.Record, places []*netdev.NS, deadline time.Time, log *slog.Logger) error {
	if !e.vfCountChanged(rec) {
		return nil
	}
	trip := e.newHomecoming(rec, places)
	trip.only = rec.PF().PCIAddress
	defer trip.close()
	if err := trip.gather(deadline); err != nil {
		return err
	}
	e.mark("pf-move")
	_, err := e.restoreSRIOVConfig(rec, log)
	e.mark("vf-count")
	return err
}

// vfCountChanged reports whether the release will re-create the PF's VFs:
// its SR-IOV state is still to restore, its netdev is pending and on its
// driver, and sriov_numvfs is not the recorded count.
func (e *Engine) vfCountChanged(rec *state.Record) bool {
	s, pf := rec.SRIOV, rec.PF()
	if s == nil || s.Restored || pf.Released || pf.Detached {
		return false
	}
	n, err := e.Sys.NumVFs(pf.PCIAddress)
	return err == nil && n != s.NumVFs
}

// markReleasing records that a release began, so whoever finds the record
// next (after a crash) finishes it instead of trusting the attachment.
func (e *Engine) markReleasing(rec *state.Record) error {
	if rec.Phase == state.Releasing {
		return nil
	}
	rec.Phase = state.Releasing
	if err := e.Store.Save(rec); err != nil {
		return err
	}
	failpoint.Hit(failpoint.ReleaseRecordReleasing)
	return nil
}

// saveOrFinish keeps the record while a device is still pending, and
// removes it once every device is home.
func (e *Engine) saveOrFinish(rec *state.Record, err error, log *slog.Logger) error {
	if rec.Holds() {
		return errors.Join(err, e.Store.Save(rec))
	}
	if rerr := e.Store.Remove(rec.Key()); rerr != nil {
		return errors.Join(err, rerr)
	}
	failpoint.Hit(failpoint.ReleaseRecordRemoved)
	log.Info("released PF; record removed", "hostName", rec.PF().OriginalName)
	if err == nil {
		e.toBaseline(rec.PF().PCIAddress, log)
	}
	return err
}

// toBaseline brings a PF just released to the node's baseline, when one
// is declared for it. A record written before the baseline was declared
// gives the PF back as ADD found it; one written since holds the
// baseline, and this only reads. The release is done whatever happens
// here: a PF that cannot be brought to the baseline is free, and the
// agent's status (or the next ADD that takes it) says why.
func (e *Engine) toBaseline(pci string, log *slog.Logger) {
	b, ok := e.Baseline.For(pci)
	if !ok {
		return
	}
	if _, err := e.ApplyBaseline(b, log); err != nil {
		log.Warn("released PF is not at the node's sriovBaseline", "error", err)
	}
}

// retryUntil runs try until it reports done or fails, or timeout has
// passed; it always runs at least once.
func retryUntil(timeout time.Duration, try func() (done bool, err error)) error {
	deadline := time.Now().Add(timeout)
	for {
		done, err := try()
		if err != nil || done || !time.Now().Before(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
