package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Ready: registered with the kubelet that listens now, and a list sent
// since. Not before the first look, not once the kubelet's socket is gone
// (it restarted, and the agent has not registered with the new one).
func TestReadyOnlyWhileTheKubeletHasOurDevices(t *testing.T) {
	dir := t.TempDir()
	startKubelet(t, dir)
	dp := NewDevicePlugin("prow/sriov", testLogger(t))
	srv := &Server{Dir: dir, Socket: "sriov-passthrough.sock", Plugin: dp, Log: dp.Log}
	h := &Health{Server: srv}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := h.Ready(); err == nil {
		t.Fatal("ready before the agent looked at the node")
	}
	dp.Update([]PF{{PCI: "0000:3b:00.0", Phase: Free}})
	deadline := time.Now().Add(10 * time.Second)
	for err := h.Ready(); err != nil; err = h.Ready() {
		if time.Now().After(deadline) {
			t.Fatalf("never ready: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.Remove(filepath.Join(dir, kubeletSocket)); err != nil {
		t.Fatal(err)
	}
	if err := h.Ready(); err == nil {
		t.Error("ready with the kubelet it registered with gone")
	}
}

// Live: the loop turned within Stall, counted from the start until it
// first turns; /livez says 503 with the reason otherwise.
func TestLiveFailsWhenTheLoopStalls(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := start
	a := &Agent{}
	h := &Health{Agent: a, Stall: time.Minute, Started: start, now: func() time.Time { return now }}
	get := func() int {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/livez", nil))
		return w.Code
	}
	now = start.Add(30 * time.Second)
	if err := h.Live(); err != nil || get() != http.StatusOK {
		t.Fatalf("30s after the start, before the first turn: %v", err)
	}
	now = start.Add(2 * time.Minute)
	if err := h.Live(); err == nil || get() != http.StatusServiceUnavailable {
		t.Fatal("live though the loop never turned in 2 minutes")
	}
	a.turned.Store(now.Add(-10 * time.Second).UnixNano())
	if err := h.Live(); err != nil {
		t.Fatalf("turned 10s ago: %v", err)
	}
	now = now.Add(2 * time.Minute)
	if err := h.Live(); err == nil {
		t.Fatal("live though the loop has not turned for 2 minutes")
	}
}
