package agent

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
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
