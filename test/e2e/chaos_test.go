//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	fp "github.com/kubevirt/sriov-passthrough-cni/pkg/failpoint"
)

// chaosSeed is fixed so that a failure replays: the same rounds, the same
// choices. E2E_CHAOS_SEED and E2E_CHAOS_ROUNDS override it where the VM
// harness forwards them.
const chaosSeed = 20261201

// chaosAtt is one attachment the chaos test made, and what happened to it.
type chaosAtt struct {
	p         *pod
	pcis      []string // empty: the ADD did not finish (killed or refused)
	podGone   bool     // netns deleted without DEL
	delKilled bool     // a DEL was killed: any later ADD or GC may finish the release
	disturbed bool     // devices moved on into a nested netns that died
}

// Killing the plugin at one of these steps is a kill -9 at that instant: the
// failpoints build SIGKILLs itself there (pkg/failpoint). @N picks the Nth
// device; past the last one the operation simply succeeds.
var (
	addSteps = []string{once(fp.AddRecordAdding), perDevice(fp.AddTagged), perDevice(fp.AddToTransit), once(fp.AddRenamed),
		perDevice(fp.AddToPod), perDevice(fp.AddUp), once(fp.AddRecordAttached)}
	delSteps = []string{once(fp.ReleaseRecordReleasing), perDevice(fp.ReleaseRenamedInPlace), perDevice(fp.ReleaseToTransit), once(fp.ReleaseRenamed),
		perDevice(fp.ReleaseToHost), perDevice(fp.ReleaseRestored), once(fp.ReleaseRecordRemoved)}
)

func once(s fp.Step) string      { return string(s) }
func perDevice(s fp.Step) string { return string(s) + "@" }

func pickStep(rng *rand.Rand, steps []string) string {
	s := steps[rng.IntN(len(steps))]
	if strings.HasSuffix(s, "@") {
		s += strconv.Itoa(1 + rng.IntN(8))
	}
	return s
}

// TestChaosOnRealSRIOV runs a few hundred random rounds on the VM's emulated
// igb PFs: ADD (sometimes killed mid-way), DEL (sometimes killed mid-way),
// netns deletion without DEL, the PF and a VF moved on into a nested netns
// that dies (the kernel returns them to init_net, not to the pod), GC,
// CHECK. After every round no device may be lost: each PCI netdev is in
// the host netns or in exactly one live pod. A DEL of an undisturbed
// attachment must restore its devices at once. At the end everything is
// released and the host must be exactly as at the start: same devices,
// names, MACs, MTUs, admin states, no altnames, no records.
func TestChaosOnRealSRIOV(t *testing.T) {
	seed, rounds := int64(chaosSeed), 200
	if s, err := strconv.ParseInt(os.Getenv("E2E_CHAOS_SEED"), 10, 64); err == nil {
		seed = s
	}
	if n, err := strconv.Atoi(os.Getenv("E2E_CHAOS_ROUNDS")); err == nil {
		rounds = n
	}
	fmt.Printf("e2e chaos: seed %d, %d rounds (replay: E2E_CHAOS_SEED=%d)\n", seed, rounds, seed)
	t.Logf("seed %d, %d rounds", seed, rounds)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))

	h := failpointHarness(t)
	var atts []*chaosAtt
	var stats struct{ adds, dels, kills, netnsDeletes, nested, gcs, checks int }
	kill := func(step string) { t.Setenv("SRIOVPT_FAILPOINT", step) }
	noKill := func() { t.Setenv("SRIOVPT_FAILPOINT", "") }
	pick := func(ok func(*chaosAtt) bool) *chaosAtt {
		var c []*chaosAtt
		for _, a := range atts {
			if ok(a) {
				c = append(c, a)
			}
		}
		if len(c) == 0 {
			return nil
		}
		return c[rng.IntN(len(c))]
	}
	remove := func(a *chaosAtt) {
		for i, x := range atts {
			if x == a {
				atts = append(atts[:i], atts[i+1:]...)
				return
			}
		}
	}
	// alive: the runtime considers the attachment in place.
	alive := func(a *chaosAtt) bool { return !a.podGone && !a.delKilled && len(a.pcis) > 0 }

	for round := 0; round < rounds; round++ {
		what := ""
		switch r := rng.Float64(); {
		case r < 0.35:
			stats.adds++
			a := &chaosAtt{p: h.newPod()}
			step := ""
			if rng.Float64() < 0.3 {
				step = pickStep(rng, addSteps)
				kill(step)
			}
			res, err := h.libAdd(a.p, "net1")
			noKill()
			switch {
			case err == nil:
				a.pcis = podPCIs(res)
				assertPodHolds(t, a.p, a.pcis...)
				what = fmt.Sprintf("ADD %s took %s", a.p.name, a.pcis[0])
			case cniCode(err) == int(types.ErrTryAgainLater):
				what = fmt.Sprintf("ADD %s: no free PF", a.p.name)
			case step != "":
				stats.kills++
				what = fmt.Sprintf("ADD %s killed at %s", a.p.name, step)
			default:
				t.Fatalf("round %d: ADD %s: %v", round, a.p.name, err)
			}
			atts = append(atts, a)
		case r < 0.65:
			a := pick(func(*chaosAtt) bool { return true })
			if a == nil {
				continue
			}
			stats.dels++
			step := ""
			if rng.Float64() < 0.2 {
				step = pickStep(rng, delSteps)
				kill(step)
			}
			err := h.libDel(a.p, "net1")
			noKill()
			switch {
			case err != nil && step != "":
				stats.kills++
				a.delKilled = true
				what = fmt.Sprintf("DEL %s killed at %s", a.p.name, step)
			case err != nil:
				t.Fatalf("round %d: DEL %s: %v", round, a.p.name, err)
			default:
				if alive(a) && !a.disturbed {
					assertRestored(t, a.pcis...)
					assertPodHolds(t, a.p)
				}
				remove(a)
				what = fmt.Sprintf("DEL %s", a.p.name)
			}
		case r < 0.75:
			a := pick(func(a *chaosAtt) bool { return !a.podGone })
			if a == nil {
				continue
			}
			stats.netnsDeletes++
			a.p.remove()
			a.podGone = true
			what = fmt.Sprintf("netns of %s deleted without DEL", a.p.name)
		case r < 0.85:
			a := pick(func(a *chaosAtt) bool { return alive(a) && !a.disturbed })
			if a == nil {
				continue
			}
			stats.nested++
			inner := h.newPod()
			vf := a.pcis[1+rng.IntN(len(a.pcis)-1)]
			inPod := mustLinks(t, a.p.path)
			run(t, "ip", "-n", a.p.name, "link", "set", "net1", "netns", inner.name)
			run(t, "ip", "-n", a.p.name, "link", "set", inPod[vf].Name, "netns", inner.name)
			inner.remove()
			a.disturbed = true
			what = fmt.Sprintf("PF and VF %s of %s moved into nested %s, which died", vf, a.p.name, inner.name)
		case r < 0.95:
			stats.gcs++
			var valid []types.GCAttachment
			for _, a := range atts {
				if alive(a) {
					valid = append(valid, types.GCAttachment{ContainerID: h.rt(a.p, "net1").ContainerID, IfName: "net1"})
				}
			}
			if valid == nil {
				valid = []types.GCAttachment{}
			}
			if err := h.cni.GCNetworkList(context.Background(), h.list, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
				t.Fatalf("round %d: GC: %v", round, err)
			}
			var kept []*chaosAtt
			for _, a := range atts {
				if alive(a) {
					kept = append(kept, a)
				}
			}
			atts = kept
			what = fmt.Sprintf("GC keeping %d attachments", len(valid))
		default:
			a := pick(func(a *chaosAtt) bool { return alive(a) && !a.disturbed })
			if a == nil {
				continue
			}
			stats.checks++
			if err := h.libCheck(a.p, "net1"); err != nil {
				t.Fatalf("round %d: CHECK %s: %v", round, a.p.name, err)
			}
			what = fmt.Sprintf("CHECK %s", a.p.name)
		}
		t.Logf("round %d: %s", round, what)
		if err := poll(20*time.Second, func() error { return noDeviceLost(atts) }); err != nil {
			t.Fatalf("round %d (%s): %v", round, what, err)
		}
	}

	// The end: every pod's DEL (retried, as a runtime does, while the kernel
	// hands devices back from dead namespaces), then a GC of everything.
	for _, a := range atts {
		if err := poll(30*time.Second, func() error { return h.libDel(a.p, "net1") }); err != nil {
			t.Errorf("final DEL %s: %v", a.p.name, err)
		}
	}
	if err := h.cni.GCNetworkList(context.Background(), h.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}); err != nil {
		t.Errorf("final GC: %v", err)
	}
	if err := poll(30*time.Second, diffHost); err != nil {
		t.Errorf("after %d rounds: %v", rounds, err)
	}
	if r := h.records(); len(r) != 0 {
		t.Errorf("state records left after the final release: %v", r)
	}
	fmt.Printf("e2e chaos: seed %d rounds=%d adds=%d dels=%d kills=%d netns_deleted=%d nested_died=%d gcs=%d checks=%d\n",
		seed, rounds, stats.adds, stats.dels, stats.kills, stats.netnsDeletes, stats.nested, stats.gcs, stats.checks)
}

// podPCIs is the PCI addresses of an ADD result: the PF's first (the
// result lists it last), then the VFs'.
func podPCIs(res *result) []string {
	if len(res.Interfaces) == 0 {
		return nil
	}
	out := []string{res.pf().PciID}
	for _, i := range res.Interfaces[:len(res.Interfaces)-1] {
		out = append(out, i.PciID)
	}
	return out
}

// noDeviceLost checks that every PCI netdev of the baseline is in the host
// netns or in exactly one live pod: devices returning from a dead netns may
// take a moment, hence the caller's poll.
func noDeviceLost(atts []*chaosAtt) error {
	where := map[string][]string{}
	host, _, err := netnsLinks("")
	if err != nil {
		return err
	}
	for pci := range host {
		where[pci] = append(where[pci], "host")
	}
	for _, a := range atts {
		if a.podGone || !netnsExists(a.p.path) {
			continue
		}
		in, _, err := netnsLinks(a.p.path)
		if err != nil {
			return err
		}
		for pci := range in {
			where[pci] = append(where[pci], a.p.name)
		}
	}
	var errs []error
	for pci, l := range baseline {
		switch len(where[pci]) {
		case 0:
			errs = append(errs, fmt.Errorf("%v is nowhere: not on the host, not in any live pod", l))
		case 1:
		default:
			errs = append(errs, fmt.Errorf("%v is in %v", l, where[pci]))
		}
	}
	return errors.Join(errs...)
}
