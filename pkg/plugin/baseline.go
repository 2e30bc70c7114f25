package plugin

import (
	"errors"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/release"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// adoptFree brings every PF this ADD could take (free, not reserved, not
// an uplink, in the pool) to the node's sriovBaseline, as ADD repairs
// first: the agent's container cannot hold a VF's vfio group, so a VF
// the bash plugin left on vfio-pci is rebound only by the plugin, which
// runs on the host. The next job on the node heals it, whichever PF the
// job gets. A PF that cannot be brought there is left as it is and
// logged; the agent's status says why.
func (o *op) adoptFree(recs []*state.Record, view *hostView) (*hostView, error) {
	if o.conf.Baseline == nil {
		return view, nil
	}
	o.baselined = map[string]error{}
	rules, err := o.rules(recs)
	if err != nil {
		return nil, err
	}
	pfs, err := o.sys.PFs()
	if err != nil {
		return nil, types.NewError(types.ErrIOFailure, "discover SR-IOV PFs", err.Error())
	}
	changed := false
	for _, pf := range pfs {
		b, ok := o.conf.Baseline.For(pf.PCIAddress)
		if !ok || !rules.JudgeAs(pf, view.policy, b.Name).OK() {
			continue
		}
		wrote, err := o.eng.ApplyBaseline(b, o.log)
		changed = changed || wrote
		o.baselined[pf.PCIAddress] = err
		if err != nil {
			o.log.Warn("free PF is not at the node's sriovBaseline; left as it is", "pci", pf.PCIAddress, "error", err)
		}
	}
	if !changed {
		return view, nil
	}
	if view, err = o.viewHost(); err != nil {
		return nil, types.NewError(types.ErrInternal, "inspect host netns", err.Error())
	}
	return view, nil
}

// toBaseline brings the PF ADD chose to the node's sriovBaseline, when
// one is declared for it, before ADD records the PF's state: the record
// then holds the baseline, and DEL, giving back what ADD recorded, ends
// there whatever the job wrote. The agent normally did this already and
// it only reads; on a node without the agent the first ADD does it. A PF
// that cannot be brought there is not handed out (code 11, with why). A
// PF adoptFree already brought there (choosePF then read it afresh) is
// not looked at again.
func (o *op) toBaseline(pf sriov.PF, view *hostView) (sriov.PF, *hostView, error) {
	pci := pf.PCIAddress
	b, ok := o.conf.Baseline.For(pci)
	if !ok {
		return pf, view, nil
	}
	changed, err := false, error(nil)
	if done, tried := o.baselined[pci]; tried {
		err = done
	} else {
		changed, err = o.eng.ApplyBaseline(b, o.log)
	}
	var be *release.BaselineError
	switch {
	case errors.As(err, &be):
		return sriov.PF{}, nil, types.NewError(types.ErrTryAgainLater, be.Error(),
			"the PF is left as it is; the agent's status shows the same reason (docs/troubleshooting.md)")
	case err != nil:
		return sriov.PF{}, nil, types.NewError(types.ErrInternal, "bring PF "+pci+" to the node's sriovBaseline", err.Error())
	case !changed:
		return pf, view, nil
	}
	// New VFs (and netdevs), maybe a new name: look again.
	if view, err = o.viewHost(); err != nil {
		return sriov.PF{}, nil, types.NewError(types.ErrInternal, "inspect host netns", err.Error())
	}
	if pf, err = o.sys.PF(pci); err != nil {
		return sriov.PF{}, nil, types.NewError(types.ErrIOFailure, "read PF "+pci, err.Error())
	}
	return pf, view, nil
}
