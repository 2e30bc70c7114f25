package plugin

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/claims"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// claimedPCI is the PF the pod's prepared DRA claim gives this attachment,
// "" when no claim on this node is the pod's. The agent, as a DRA kubelet
// plugin, records each claim the kubelet prepares (pkg/claims), with the
// pods it is reserved for; the pod is found by CNI_ARGS, which every
// multus passes, so the pin does not depend on multus reading claims.
//
// A claim of several PFs serves as many attachments of the pod: each takes
// the first of its PFs, in PCI order, that no other attachment of the pod
// holds. A deviceID or pciBusID that is not one of the claim's PFs is
// refused: two allocators disagree, and guessing would hand out a PF the
// other counts as taken. Two claims under the pod's name without its UID
// are "try again later" (claims.ForPod says why): the older is a
// force-deleted predecessor's, and the kubelet unprepares it soon.
func (o *op) claimedPCI(recs []*state.Record) (string, error) {
	store := claims.For(o.conf.StateDir)
	entries, err := store.List()
	if err != nil {
		return "", types.NewError(types.ErrIOFailure, "read the DRA claim checkpoint", err.Error())
	}
	e, err := claims.ForPod(entries, o.owner.Namespace, o.owner.Name, o.owner.UID)
	var amb *claims.AmbiguousError
	if errors.As(err, &amb) {
		return "", types.NewError(types.ErrTryAgainLater, "cannot tell this pod's DRA claim from its predecessor's: "+err.Error(),
			"a pod of this name was deleted while its claim was prepared, and the kubelet has not unprepared that claim yet; "+
				"the runtime passed no K8S_POD_UID to tell them apart. The sandbox is retried; it goes through once the old claim is unprepared ("+store.Dir+")")
	}
	o.claimedByOthers = othersClaims(entries, e)
	if e == nil {
		return "", nil
	}
	mine := func(pci string) error {
		if slices.Contains(e.PFs, pci) {
			return nil
		}
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("PF %s is not one of the PFs of the pod's prepared DRA claim %s (%s)", pci, e.Claim, strings.Join(e.PFs, ", ")),
			"the deviceID multus passed (or the network's pciBusID) and the claim the kubelet prepared disagree; "+
				"a node serves prow/sriov through the device plugin or through DRA, never both: check the node's allocation in "+o.conf.NodeConfigFile)
	}
	if id := o.conf.AllocatedPCI(); id != "" {
		if err := mine(id); err != nil {
			return "", err
		}
		o.claim = e
		return id, nil
	}
	if id := o.conf.PCIBusID; id != "" {
		if err := mine(id); err != nil {
			return "", err
		}
	}
	held := map[string]bool{}
	for _, r := range recs {
		if r.ContainerID == o.args.ContainerID {
			held[r.PF().PCIAddress] = true
		}
	}
	left := slices.DeleteFunc(slices.Clone(e.PFs), func(pci string) bool { return held[pci] })
	if len(left) == 0 {
		return "", types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("every PF of the pod's DRA claim %s (%s) is attached to this pod already", e.Claim, strings.Join(e.PFs, ", ")),
			"the pod asks for more attachments of this network than prow/sriov devices: request one per attachment")
	}
	pick := left[0]
	if id := o.conf.PCIBusID; id != "" {
		pick = id
	}
	o.claim = e
	o.log.Info("PF from the pod's prepared DRA claim", "claim", e.Claim.String(), "pfs", strings.Join(e.PFs, ","), "pf", pick)
	return pick, nil
}

// othersClaims maps each PF prepared for a claim other than mine (nil: the
// pod has none) to that claim, for the PF policy: a PF the scheduler
// allocated to another pod's claim is not free for this one, even before
// that pod's ADD takes it.
func othersClaims(entries []claims.Entry, mine *claims.Entry) map[string]string {
	out := map[string]string{}
	for _, x := range entries {
		if mine != nil && x.Claim.UID == mine.Claim.UID {
			continue
		}
		var pods []string
		for _, p := range x.Pods {
			pods = append(pods, p.Namespace+"/"+p.Name)
		}
		for _, pci := range x.PFs {
			out[pci] = fmt.Sprintf("DRA claim %s, prepared for pod %s", x.Claim, strings.Join(pods, ", "))
		}
	}
	return out
}
