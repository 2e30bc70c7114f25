package agent

import (
	"errors"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/release"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// A node the bash plugin served is adopted before its first job: every PF
// free on the host (not held by a record, not reserved, not an uplink,
// inside pfNames) that is off the node's sriovBaseline is not advertised
// until the agent has brought it there, through the release engine, under
// the node's lock. A PF that no driver is bound to is brought there in
// two looks: the first binds its default driver, the next judges it by
// the name it then has and writes the rest.

type baselineFailure struct {
	why  string
	when time.Time
}

// offBaseline says how a PF free on the host is off the node's baseline,
// for View.Baseline; "" when it is at it or the node declares none for it.
// It only reads, so the status command shows the same.
func (a *Agent) offBaseline(pf sriov.PF) string {
	b, ok := a.Conf.Baseline.For(pf.PCIAddress)
	if !ok {
		return ""
	}
	e := &release.Engine{Sys: a.sys()}
	at, differs, err := e.AtBaseline(b)
	if err != nil {
		return "cannot tell whether it is at the node's sriovBaseline: " + err.Error()
	}
	if at {
		return ""
	}
	why := "not at the node's sriovBaseline: " + differs
	if held := e.BaselineWaits(b); held != "" {
		why += "; waits for VFs held through vfio: " + held
	}
	if f, ok := a.baselineFailed[pf.PCIAddress]; ok {
		why += "; bringing it there failed: " + f.why
	}
	return why
}

// baselineName is the host name the node's baseline gives the PF at
// pci, "" for none.
func (a *Agent) baselineName(pci string) string {
	b, _ := a.Conf.Baseline.For(pci)
	return b.Name
}

// adopt brings the PFs judged off the baseline to it, under the node's
// lock without waiting for it. A PF whose attempt failed is tried again
// after repairWindow (its reason stays in its why meanwhile). changed
// reports whether anything was written; retry how soon to try again: the
// lock was busy, or a PF's driver was bound and the rest is to do.
func (a *Agent) adopt(pfs []PF) (changed bool, retry time.Duration) {
	now := time.Now()
	var todo []config.PFBaseline
	for _, p := range pfs {
		if p.Phase != OffBaseline {
			continue
		}
		if f, ok := a.baselineFailed[p.PCI]; ok && now.Sub(f.when) < repairWindow {
			continue
		}
		if b, ok := a.Conf.Baseline.For(p.PCI); ok {
			todo = append(todo, b)
		}
	}
	if len(todo) == 0 {
		return false, 0
	}
	if a.baselineFailed == nil {
		a.baselineFailed = map[string]baselineFailure{}
	}
	log := a.Log.With("cmd", "baseline")
	bound := false
	err := a.inHost(func() error {
		host, err := netdev.Current(a.Conf.SysfsRoot)
		if err != nil {
			return err
		}
		defer host.Close()
		e := a.engine(host, log)
		unlock, err := e.Lock()
		if err != nil {
			return err
		}
		defer unlock()
		// Under the lock the records are what ADD and DEL left: an ADD
		// may have taken one of these PFs since the look.
		recs, err := e.Store.Peek()
		if err != nil {
			return err
		}
		for _, b := range todo {
			if heldBy(recs, b.PCI) {
				continue
			}
			apply, driverless := e.ApplyBaseline, e.Sys.Driver(b.PCI) == ""
			if driverless {
				apply = e.BindBaselineDriver
			}
			wrote, err := apply(b, log)
			changed = changed || wrote
			bound = bound || driverless && wrote
			if err != nil {
				log.Error("cannot bring the PF to the node's sriovBaseline; it is not advertised", "pci", b.PCI, "error", err)
				a.baselineFailed[b.PCI] = baselineFailure{why: whyOf(err), when: time.Now()}
				continue
			}
			delete(a.baselineFailed, b.PCI)
		}
		return nil
	})
	switch {
	case errors.Is(err, state.ErrLockTimeout):
		return changed, 100 * time.Millisecond
	case err != nil:
		a.Log.Error("bring free PFs to the node's sriovBaseline", "error", err)
	case bound:
		// The next look judges the PF by its new name, and brings it the
		// rest of the way; its netdev's event may have come and gone
		// while this one held the lock.
		return changed, burstWindow
	}
	return changed, 0
}

func heldBy(recs []*state.Record, pci string) bool {
	for _, r := range recs {
		for _, d := range r.Devices {
			if d.PCIAddress == pci {
				return true
			}
		}
	}
	return false
}

func whyOf(err error) string {
	var be *release.BaselineError
	if errors.As(err, &be) {
		return be.Why
	}
	return err.Error()
}
