//go:build stress

package stress

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/failpoint"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// failpoints lists every step the plugin can be killed at.
func failpoints() []string {
	var names []string
	for _, s := range failpoint.All {
		names = append(names, string(s))
	}
	return names
}

// crashWorld is the node every crash scenario starts from: two PFs, the
// first (lowest PCI address, so chosen first) with two VFs, the second with
// one, and an IPAM plugin that refuses ADD (to drive ADD's rollback).
func crashWorld(t *testing.T) *world {
	w := newWorld(t)
	w.addPF("sp0", 2)
	w.addPF("sp1", 1)
	w.ready()
	script := "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{\"cniVersion\":\"1.1.0\",\"code\":11,\"msg\":\"stress: IPAM refuses\"}'; exit 1; fi\n" +
		"if [ \"$CNI_COMMAND\" = VERSION ]; then echo '{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]}'; fi\nexit 0\n"
	if err := os.WriteFile(filepath.Join(w.cniPath, "refusing-ipam"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return w
}

// scenario brings a world to the operation that is killed, runs it, and
// returns the attachments that exist (the killed one first).
type scenario struct {
	name string
	// fails: the operation fails without a kill (it is there to reach a
	// rollback).
	fails bool
	run   func(w *world, fp string) (run, []attachment)
}

var scenarios = []scenario{
	{"add", false, func(w *world, fp string) (run, []attachment) {
		a := attachment{"a", "net1", w.newPod()}
		return w.exec("ADD", a, opts{failpoint: fp}), []attachment{a}
	}},
	{"add-rollback", true, func(w *world, fp string) (run, []attachment) {
		a := attachment{"a", "net1", w.newPod()}
		conf := w.confWith(map[string]any{"ipam": map[string]any{"type": "refusing-ipam"}})
		return w.exec("ADD", a, opts{failpoint: fp, conf: conf}), []attachment{a}
	}},
	// The pod has a link named like the PF on the host: the PF cannot move
	// in under that name and goes through the transit netns, both ways.
	{"add-pf-name-taken-in-pod", false, func(w *world, fp string) (run, []attachment) {
		a := attachment{"a", "net1", w.podWithLink("sp0")}
		return w.exec("ADD", a, opts{failpoint: fp}), []attachment{a}
	}},
	{"del-pf-name-taken-in-pod", false, func(w *world, fp string) (run, []attachment) {
		a := attachment{"a", "net1", w.podWithLink("sp0")}
		if r := w.exec("ADD", a, opts{}); r.err != nil {
			w.t.Fatalf("ADD: %v", r)
		}
		return w.exec("DEL", a, opts{failpoint: fp}), []attachment{a}
	}},
	{"del", false, func(w *world, fp string) (run, []attachment) {
		a := w.mustAdd("a")
		return w.exec("DEL", a, opts{failpoint: fp}), []attachment{a}
	}},
	{"del-netns-gone", false, func(w *world, fp string) (run, []attachment) {
		a := w.mustAdd("a")
		w.deletePod(a.pod)
		return w.exec("DEL", a, opts{failpoint: fp}), []attachment{a}
	}},
	{"gc", false, func(w *world, fp string) (run, []attachment) {
		a := w.mustAdd("a")
		b := w.mustAdd("b")
		return w.exec("GC", attachment{}, opts{failpoint: fp, conf: w.gcConf()}), []attachment{a, b}
	}},
	{"add-repairing-dead-pod", false, func(w *world, fp string) (run, []attachment) {
		a := w.mustAdd("a")
		w.deletePod(a.pod)
		b := attachment{"b", "net1", w.newPod()}
		return w.exec("ADD", b, opts{failpoint: fp}), []attachment{b, a}
	}},
}

// recovery is what comes after the kill: what the runtime or the next pod
// does.
type recovery struct {
	name string
	run  func(w *world, killed attachment) []attachment // returns new attachments
}

var recoveries = []recovery{
	{"del-same", func(w *world, k attachment) []attachment {
		if k.cid != "" {
			w.mustDel(k)
		}
		return nil
	}},
	{"add-other", func(w *world, k attachment) []attachment {
		return []attachment{w.mustAdd("other")}
	}},
	{"gc", func(w *world, k attachment) []attachment {
		if r := w.exec("GC", attachment{}, opts{conf: w.gcConf()}); r.err != nil {
			w.t.Errorf("GC after the kill: %v", r)
		}
		return nil
	}},
}

// podWithLink makes a pod netns that already has a link called name, an
// ifb that is no device of the world.
func (w *world) podWithLink(name string) *pod {
	w.t.Helper()
	p := w.newPod()
	if err := p.ns.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}})
	}); err != nil {
		w.t.Fatalf("link %s in the pod: %v", name, err)
	}
	return p
}

func (w *world) mustAdd(cid string) attachment {
	w.t.Helper()
	a := attachment{cid, "net1", w.newPod()}
	if r := w.exec("ADD", a, opts{}); r.err != nil {
		w.t.Fatalf("ADD %s: %v", cid, r)
	}
	return a
}

func (w *world) mustDel(a attachment) {
	w.t.Helper()
	if r := w.exec("DEL", a, opts{}); r.err != nil {
		w.t.Errorf("DEL %s: %v", a.cid, r)
	}
}

// TestCrashAtEveryFailpoint kills each operation at each failpoint (and at
// each hit of a per-device one), then runs each recovery path, checking
// the invariant after the kill, after the recovery, and after a final DEL
// of every attachment (which must leave every device home, no record).
// One traced run per scenario tells which failpoints it passes and how
// often. The short form kills at the first and last hit of a per-device
// failpoint and runs one recovery path per kill, rotating; -stress.long
// runs every hit with every recovery path.
func TestCrashAtEveryFailpoint(t *testing.T) {
	kerneltest.RequireRoot(t)
	names := failpoints()
	if len(names) < 10 {
		t.Fatalf("found only %d failpoints in failpoint.All: %v", len(names), names)
	}
	hitSomewhere := map[string]bool{}
	turn := 0
	for _, sc := range scenarios {
		var hits map[string]int
		t.Run(sc.name+":trace", func(t *testing.T) {
			w := crashWorld(t)
			r, _ := sc.run(w, traceAll)
			if r.killed || (r.err != nil) != sc.fails {
				t.Fatalf("traced run of %s: %v", sc.name, r)
			}
			hits = map[string]int{}
			for _, n := range r.trace {
				hits[n]++
			}
			t.Logf("%s passes %v", sc.name, hits)
		})
		for _, fp := range names {
			for n := 1; n <= hits[fp]; n++ {
				hitSomewhere[fp] = true
				if !*long && n > 1 && n < hits[fp] {
					continue // short form: the first and the last device
				}
				spec := fmt.Sprintf("%s@%d", fp, n)
				paths := recoveries
				if !*long {
					paths = []recovery{recoveries[turn%len(recoveries)]}
				}
				turn++
				for _, rc := range paths {
					t.Run(strings.ReplaceAll(sc.name+":"+spec+":"+rc.name, "/", "."), func(t *testing.T) {
						t.Parallel()
						crashAndRecover(t, sc, fp, spec, rc)
					})
				}
			}
		}
	}
	for _, fp := range names {
		if !hitSomewhere[fp] {
			t.Errorf("failpoint %s was never hit by any scenario: add one that reaches it", fp)
		}
	}
}

func crashAndRecover(t *testing.T, sc scenario, fp, spec string, rc recovery) {
	w := crashWorld(t)
	r, atts := sc.run(w, spec)
	if !r.killed || r.hit != fp {
		t.Fatalf("want a kill at %s, got %v", spec, r)
	}
	w.assert(false, "after the kill")
	atts = append(atts, rc.run(w, atts[0])...)
	w.assert(false, "after "+rc.name)
	for _, a := range atts {
		w.mustDel(a)
	}
	w.assert(true, "after DEL of every attachment")
}
