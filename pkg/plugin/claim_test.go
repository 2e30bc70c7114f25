package plugin

import (
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/claims"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// prepare records a claim as the agent does when the kubelet prepares it:
// reserved for pod ci/job-<cid> with the given pod UID.
func prepare(t *testing.T, e *kerneltest.Env, claimUID, cid, podUID string, pfs ...string) {
	t.Helper()
	_, err := claims.For(e.StateDir).Prepare(claims.Entry{
		Claim: claims.Ref{Namespace: "ci", Name: "job-" + cid + "-prow-sriov", UID: claimUID},
		Pods:  []claims.Ref{{Namespace: "ci", Name: "job-" + cid, UID: podUID}}, PFs: pfs,
	})
	if err != nil {
		t.Fatal(err)
	}
}

// withUID is args with K8S_POD_UID, as the kubelet's own CNI call and
// multus v4 pass it (multus v3.x does not).
func withUID(a *skel.CmdArgs, uid string) *skel.CmdArgs {
	a.Args += ";K8S_POD_UID=" + uid
	return a
}

// On a DRA node the ADD carries no deviceID (multus v3.x reads no claims):
// the pod's prepared claim pins the PF, under requireDeviceID too, and a
// pod with neither a deviceID nor a claim is refused as before.
func TestDRAClaimPinsThePF(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 1)
	claimed := e.AddPF("ens2f0", 2)
	e.AddPF("ens3f0", 1)
	e.SetNode(map[string]any{"requireDeviceID": true})
	prepare(t, e, "claim-1", "c1", "pod-1", claimed.PCI)

	pod := e.NewPod()
	res := add(t, e, pod, "c1", "net1", e.Conf(nil))
	if pfOf(res).PciID != claimed.PCI {
		t.Fatalf("took %s, want the claim's %s", pfOf(res).PciID, claimed.PCI)
	}
	if r := readRecord(t, e, "c1", "net1"); r.Unpinned {
		t.Errorf("a PF pinned by the pod's claim is recorded as unpinned: the agent would count it as neither free nor allocated")
	}
	_, err := call(t, e, "ADD", args(e.NewPod(), "c2", "net1", e.Conf(nil)))
	if cniCode(t, err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "no deviceID and no prepared DRA claim") {
		t.Errorf("ADD of a pod with no claim under requireDeviceID: %v", err)
	}
	del(t, e, pod, "c1", "net1", e.Conf(nil))
	assertHostIntact(t, e)
}

// A PF prepared for a pod's claim is not free for another pod, even before
// that pod's ADD: without requireDeviceID, a pod with no claim (and no
// deviceID) takes the lowest free PF that no claim names, and a deviceID
// naming another pod's claimed PF is "try again later".
func TestDRAClaimedPFIsNotFreeForOthers(t *testing.T) {
	e := kerneltest.New(t)
	claimed := e.AddPF("ens1f0", 1)
	other := e.AddPF("ens2f0", 1)
	prepare(t, e, "claim-1", "c1", "pod-1", claimed.PCI)
	pod := e.NewPod()
	if got := pfOf(add(t, e, pod, "c2", "net1", e.Conf(nil))).PciID; got != other.PCI {
		t.Fatalf("a pod without a claim took %s, want %s (%s is claim-1's)", got, other.PCI, claimed.PCI)
	}
	_, err := call(t, e, "ADD", args(e.NewPod(), "c3", "net1", e.Conf(map[string]any{"deviceID": claimed.PCI})))
	if cniCode(t, err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "claim-1") {
		t.Errorf("deviceID of another pod's claimed PF: %v", err)
	}
	del(t, e, pod, "c2", "net1", e.Conf(nil))
	assertHostIntact(t, e)
}

// A claim of two PFs serves the pod's two attachments, one PF each in PCI
// order; a third attachment has no PF left and is refused.
func TestDRAClaimOfTwoPFsServesTwoAttachments(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 1)
	a := e.AddPF("ens2f0", 1)
	b := e.AddPF("ens3f0", 1)
	e.SetNode(map[string]any{"requireDeviceID": true})
	prepare(t, e, "claim-1", "c1", "pod-1", b.PCI, a.PCI)
	pod := e.NewPod()
	if got := pfOf(add(t, e, pod, "c1", "net1", e.Conf(nil))).PciID; got != a.PCI {
		t.Errorf("net1 took %s, want %s", got, a.PCI)
	}
	if got := pfOf(add(t, e, pod, "c1", "net2", e.Conf(nil))).PciID; got != b.PCI {
		t.Errorf("net2 took %s, want %s", got, b.PCI)
	}
	_, err := call(t, e, "ADD", args(pod, "c1", "net3", e.Conf(nil)))
	if cniCode(t, err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "attached to this pod already") {
		t.Errorf("a third attachment: %v", err)
	}
	del(t, e, pod, "c1", "net2", e.Conf(nil))
	del(t, e, pod, "c1", "net1", e.Conf(nil))
	assertHostIntact(t, e)
}

// The two-entry rule. A pod was force-deleted while holding its claim's
// PF, and a pod of the same name followed before the kubelet unprepared
// the old claim: both claims are in the checkpoint under one name. The
// successor never gets the old pod's PF: with its UID it gets exactly its
// own claim's; without (multus v3.x) the ADD is "try again later", naming
// both claims, until the old claim is unprepared.
func TestDRASameNameSuccessorNeverGetsItsPredecessorsPF(t *testing.T) {
	e := kerneltest.New(t)
	oldPF := e.AddPF("ens1f0", 1)
	newPF := e.AddPF("ens2f0", 1)
	e.SetNode(map[string]any{"requireDeviceID": true})

	// The predecessor's claim is prepared and its PF released already
	// (its sandbox is gone), so the old PF is free on the host: the
	// dangerous case, where a wrong match would succeed.
	prepare(t, e, "claim-old", "c1", "pod-old", oldPF.PCI)
	prepare(t, e, "claim-new", "c1", "pod-new", newPF.PCI)

	_, err := call(t, e, "ADD", args(e.NewPod(), "c2", "net1", e.Conf(nil)))
	if cniCode(t, err) != types.ErrInvalidNetworkConfig {
		t.Fatalf("a pod of another name: %v", err)
	}
	// Each sandbox of the successor has its own container ID; the pod's
	// name is job-c1 throughout.
	succ := func(pod ns.NetNS, cid string) *skel.CmdArgs {
		a := args(pod, cid, "net1", e.Conf(nil))
		a.Args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ci;K8S_POD_NAME=job-c1"
		return a
	}
	_, err = call(t, e, "ADD", succ(e.NewPod(), "s1"))
	if cniCode(t, err) != types.ErrTryAgainLater {
		t.Fatalf("successor without UID while ambiguous: %v, want code 11", err)
	}
	for _, s := range []string{"claim-old", "claim-new", oldPF.PCI, newPF.PCI} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("the refusal does not name %s: %v", s, err)
		}
	}
	assertHostIntact(t, e)

	pod := e.NewPod()
	if got := pfOf(addArgs(t, e, withUID(succ(pod, "s2"), "pod-new"))).PciID; got != newPF.PCI {
		t.Fatalf("successor with its UID took %s, want its own claim's %s (the predecessor's is %s)", got, newPF.PCI, oldPF.PCI)
	}
	del(t, e, pod, "s2", "net1", e.Conf(nil))

	// Once the kubelet unprepared the old claim, the name is unambiguous.
	if err := claims.For(e.StateDir).Unprepare("claim-old"); err != nil {
		t.Fatal(err)
	}
	pod3 := e.NewPod()
	if got := pfOf(addArgs(t, e, succ(pod3, "s3"))).PciID; got != newPF.PCI {
		t.Errorf("successor without UID after the old claim is gone took %s, want %s", got, newPF.PCI)
	}
	del(t, e, pod3, "s3", "net1", e.Conf(nil))
	assertHostIntact(t, e)
}

// A deviceID (multus read the kubelet's allocation, or its own claim
// lookup) must be one of the claim's PFs: a disagreement is refused before
// anything moves, and an agreement takes the deviceID's PF.
func TestDRAClaimAndDeviceIDMustAgree(t *testing.T) {
	e := kerneltest.New(t)
	other := e.AddPF("ens1f0", 1)
	claimed := e.AddPF("ens2f0", 1)
	prepare(t, e, "claim-1", "c1", "pod-1", claimed.PCI)
	_, err := call(t, e, "ADD", args(e.NewPod(), "c1", "net1", e.Conf(map[string]any{"deviceID": other.PCI})))
	if cniCode(t, err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), other.PCI) ||
		!strings.Contains(err.Error(), "claim-1") {
		t.Fatalf("deviceID outside the claim: %v", err)
	}
	assertHostIntact(t, e)
	_, err = call(t, e, "ADD", args(e.NewPod(), "c1", "net1", e.Conf(map[string]any{"pciBusID": other.PCI})))
	if cniCode(t, err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), other.PCI) {
		t.Fatalf("pciBusID outside the claim: %v", err)
	}
	pod := e.NewPod()
	conf := e.Conf(map[string]any{"deviceID": claimed.PCI})
	if got := pfOf(add(t, e, pod, "c1", "net1", conf)).PciID; got != claimed.PCI {
		t.Errorf("took %s, want %s", got, claimed.PCI)
	}
	del(t, e, pod, "c1", "net1", conf)
	assertHostIntact(t, e)
}
