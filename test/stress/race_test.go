//go:build stress

package stress

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// kubelet plays the runtime for the race test: it knows which attachments
// exist (for GC's valid-attachments) and keeps GC from racing the
// registration of a new ADD, as a real runtime's GC would not list an
// attachment it has not started yet and then see its record.
type kubelet struct {
	w    *world
	seq  atomic.Int64
	gcMu sync.RWMutex
	mu   sync.Mutex
	live map[string]attachment

	probMu   sync.Mutex
	problems []string
}

func (k *kubelet) problem(format string, a ...any) {
	k.probMu.Lock()
	defer k.probMu.Unlock()
	k.problems = append(k.problems, fmt.Sprintf(format, a...))
}

func (k *kubelet) register(a attachment) {
	k.gcMu.RLock()
	defer k.gcMu.RUnlock()
	k.mu.Lock()
	k.live[a.cid] = a
	k.mu.Unlock()
}

func (k *kubelet) forget(a attachment) {
	k.mu.Lock()
	delete(k.live, a.cid)
	k.mu.Unlock()
}

// code is the CNI error code a failed run printed, 0 if none.
func code(r run) int {
	var e struct {
		Code int `json:"code"`
	}
	_ = json.Unmarshal(r.out, &e)
	return e.Code
}

// maybeKill returns a kill -9 at a random moment in the first few tens of
// milliseconds (where an ADD or DEL does its moves) with probability p.
func maybeKill(rng *rand.Rand, p float64) time.Duration {
	if rng.Float64() < p {
		return time.Duration(1+rng.IntN(60)) * time.Millisecond
	}
	return 0
}

// life is one pod's life: ADD (maybe killed, maybe with its netns deleted
// while the ADD runs), CHECK, maybe the netns deleted before DEL, DEL
// until it succeeds (maybe killed), the netns gone; sometimes a GC.
func (k *kubelet) life(rng *rand.Rand) {
	w := k.w
	p := w.newPod()
	a := attachment{fmt.Sprintf("c%d", k.seq.Add(1)), "net1", p}
	k.register(a)

	o := opts{killAfter: maybeKill(rng, 0.15)}
	var deleting sync.WaitGroup
	inFlight := o.killAfter == 0 && rng.Float64() < 0.15
	if inFlight {
		delay := time.Duration(rng.IntN(40)) * time.Millisecond
		o.onStart = func() {
			deleting.Add(1)
			go func() {
				defer deleting.Done()
				time.Sleep(delay)
				w.deletePod(p)
			}()
		}
	}
	r := w.exec("ADD", a, o)
	deleting.Wait()
	ok := r.err == nil && !r.killed
	if r.err != nil && !r.killed && !inFlight && code(r) != 11 {
		k.problem("ADD %s on a live pod failed with code %d: %v", a.cid, code(r), r)
	}
	if ok && !inFlight && rng.Float64() < 0.5 {
		if c := w.exec("CHECK", a, opts{}); c.err != nil {
			k.problem("CHECK %s right after its ADD: %v", a.cid, c)
		}
	}
	var nested *pod
	if ok && !inFlight && rng.Float64() < 0.2 {
		nested = w.nest(a, rng)
	}
	time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
	if nested != nil && rng.Float64() < 0.5 {
		w.deletePod(nested) // the nested netns dies while the pod lives
		nested = nil
	}
	if rng.Float64() < 0.3 {
		w.deletePod(p) // force-deleted pod: the netns goes before DEL
	}
	for try := 0; ; try++ {
		d := w.exec("DEL", a, opts{killAfter: maybeKill(rng, 0.15)})
		if d.err == nil {
			break
		}
		if !d.killed {
			k.problem("DEL %s failed: %v", a.cid, d)
		}
		if try > 8 {
			k.problem("DEL %s did not succeed after %d tries", a.cid, try+1)
			break
		}
	}
	k.forget(a)
	w.deletePod(p)
	if nested != nil {
		// It dies after DEL gave up on the device in it: a later ADD, DEL
		// or GC must finish the release.
		w.deletePod(nested)
	}
	if rng.Float64() < 0.1 {
		k.gc(rng)
	}
}

// nest does what a workload that runs kind does: it moves one device of
// its attachment on into a nested netns. When that netns dies the kernel
// returns the device to init_net, not to the pod.
func (w *world) nest(a attachment, rng *rand.Rand) *pod {
	nested := w.newPod()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.disturbed[a.cid+":"+a.ifname] = true
	links := w.links(a.pod.ns)
	var ours []netlink.Link
	for _, l := range links {
		if l.Attrs().Name != "lo" {
			ours = append(ours, l)
		}
	}
	if len(ours) == 0 {
		return nested
	}
	l := ours[rng.IntN(len(ours))]
	err := a.pod.ns.Do(func(ns.NetNS) error { return netlink.LinkSetNsFd(l, int(nested.ns.Fd())) })
	if err != nil {
		w.t.Errorf("move %s into a nested netns: %v", l.Attrs().Name, err)
	}
	return nested
}

// gc runs a GC listing every attachment the kubelet knows.
func (k *kubelet) gc(rng *rand.Rand) {
	k.gcMu.Lock()
	defer k.gcMu.Unlock()
	k.mu.Lock()
	var valid []attachment
	for _, a := range k.live {
		valid = append(valid, a)
	}
	k.mu.Unlock()
	r := k.w.exec("GC", attachment{}, opts{conf: k.w.gcConf(valid...), killAfter: maybeKill(rng, 0.1)})
	if r.err != nil && !r.killed {
		k.problem("GC failed: %v", r)
	}
}

// TestRaceManyProcesses runs pod lives in parallel (each plugin run a
// separate process) on a pool of three PFs for a bounded time, with kill
// -9 at random moments, netns deletions before DEL and during ADD, a
// device moved on into a nested netns that dies before or after DEL, and
// GCs. A checker takes the plugin's own lock every 100 ms (so no plugin
// process is between two steps) and checks the invariant; at the end a
// GC of everything must leave every device home under its original name
// and no record.
func TestRaceManyProcesses(t *testing.T) {
	kerneltest.RequireRoot(t)
	dur := *raceFor
	if dur == 0 {
		dur = 6 * time.Second
		if *long {
			dur = 60 * time.Second
		}
	}
	seed := *seedFlag
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("seed %d (replay the choices with -args -stress.seed=%d; timing still varies)", seed, seed)

	w := newWorld(t)
	w.addPF("sp0", 2)
	w.addPF("sp1", 1)
	w.addPF("sp2", 3)
	w.ready()
	k := &kubelet{w: w, live: map[string]attachment{}}

	stop := make(chan struct{})
	var checks atomic.Int64
	var checker sync.WaitGroup
	checker.Add(1)
	go func() {
		defer checker.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			err := w.quiesced(func() {
				for _, p := range w.check(false).problems {
					k.problem("mid-run check: %s", p)
				}
			})
			if err != nil {
				k.problem("checker could not take the state lock: %v", err)
			}
			checks.Add(1)
		}
	}()

	deadline := time.Now().Add(dur)
	var workers sync.WaitGroup
	lives := atomic.Int64{}
	for i := range 6 {
		workers.Add(1)
		go func() {
			defer workers.Done()
			rng := rand.New(rand.NewPCG(uint64(seed), uint64(i)))
			for time.Now().Before(deadline) {
				k.life(rng)
				lives.Add(1)
			}
		}()
	}
	workers.Wait()
	close(stop)
	checker.Wait()

	if r := w.exec("GC", attachment{}, opts{conf: w.gcConf()}); r.err != nil {
		t.Errorf("final GC: %v", r)
	}
	w.assert(true, "after the race and a final GC")
	t.Logf("%d pod lives, %d invariant checks under the lock", lives.Load(), checks.Load())
	if checks.Load() == 0 {
		t.Errorf("the checker never ran")
	}
	seen := map[string]int{}
	for _, p := range k.problems {
		seen[p]++
	}
	var list []string
	for p := range seen {
		list = append(list, p)
	}
	sort.Strings(list)
	for i, p := range list {
		if i == 30 {
			t.Errorf("... and %d more problems", len(list)-30)
			break
		}
		t.Errorf("%s (x%d)", p, seen[p])
	}
}
