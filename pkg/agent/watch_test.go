package agent

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// A subscription the library closes (its socket failed) is opened again,
// and the agent is asked to look, with repair when the caller says so:
// events may have been lost meanwhile.
func TestKeepSubscribedResubscribesWhenClosed(t *testing.T) {
	a := &Agent{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), wake: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var subs, events atomic.Int32
	subscribe := func(ch chan int, _ chan struct{}, _ *netns.NsHandle) error {
		n := subs.Add(1)
		go func() {
			ch <- int(n)
			if n == 1 {
				close(ch) // the first socket fails after one event
			}
		}()
		return nil
	}
	if err := keepSubscribed(ctx, a, "test", subscribe, func(int) { events.Add(1) }, true); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for (subs.Load() < 2 || events.Load() < 2) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if subs.Load() != 2 || events.Load() != 2 {
		t.Fatalf("subscriptions %d, events %d: want 2 and 2 (one from each subscription)", subs.Load(), events.Load())
	}
	a.mu.Lock()
	pending := a.pending
	a.mu.Unlock()
	if !pending {
		t.Error("a lost subscription did not ask for a look with repair")
	}
}

// A record gets repairsPerWindow repairs per repairWindow, then backs off
// until its oldest repair leaves the window; the back-off is logged once.
func TestRepairBacksOffPerRecord(t *testing.T) {
	var logs strings.Builder
	a := &Agent{Log: slog.New(slog.NewTextHandler(&logs, nil))}
	stuck := []*state.Record{record("0000:3b:00.0", "ens1", state.Releasing, false)}
	for range repairsPerWindow {
		if wait := a.backOff(stuck, time.Now()); wait != 0 {
			t.Fatalf("backs off after fewer than %d repairs: %v", repairsPerWindow, wait)
		}
		a.triedNow(stuck)
	}
	for range 3 {
		if wait := a.backOff(stuck, time.Now()); wait <= 0 || wait > repairWindow {
			t.Fatalf("after %d repairs: wait %v, want (0, %v]", repairsPerWindow, wait, repairWindow)
		}
	}
	if n := strings.Count(logs.String(), "repair backs off"); n != 1 {
		t.Errorf("back-off logged %d times, want once:\n%s", n, logs.String())
	}
	// Another record that needs repair is not held back by the first.
	other := append(stuck, record("0000:3c:00.0", "ens2", state.Adding, false))
	if wait := a.backOff(other, time.Now()); wait != 0 {
		t.Errorf("a fresh record waits %v behind one that backs off", wait)
	}
	if wait := a.backOff(stuck, time.Now().Add(repairWindow)); wait != 0 {
		t.Errorf("still backing off a window later: %v", wait)
	}
}
