package agent

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// quietRepeats passes a warning or an error on once per window and drops
// its repeats, the same message with the same attributes. The agent runs
// the release engine's repair on every link event: while a release waits for a
// device still in a workload's netns (a kind node that outlives its job
// pod), each repair would log the same "device not found" warning per
// device, for every veth any pod on the node makes. Info and debug lines
// pass unchanged.
type quietRepeats struct {
	next   slog.Handler
	window time.Duration
	prefix string // attributes and groups given by With
	state  *quietState
}

type quietState struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

func newQuietRepeats(next slog.Handler, window time.Duration) *quietRepeats {
	return &quietRepeats{next: next, window: window, state: &quietState{seen: map[string]time.Time{}}}
}

func (h *quietRepeats) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *quietRepeats) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return h.next.Handle(ctx, r)
	}
	var key strings.Builder
	key.WriteString(h.prefix + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		writeAttr(&key, a)
		return true
	})
	s := h.state
	s.mu.Lock()
	last, ok := s.seen[key.String()]
	repeat := ok && r.Time.Sub(last) < h.window
	if !repeat {
		s.seen[key.String()] = r.Time
		for k, t := range s.seen {
			if r.Time.Sub(t) >= h.window {
				delete(s.seen, k)
			}
		}
	}
	s.mu.Unlock()
	if repeat {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *quietRepeats) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	for _, a := range as {
		writeAttr(&b, a)
	}
	return &quietRepeats{next: h.next.WithAttrs(as), window: h.window, prefix: h.prefix + b.String(), state: h.state}
}

func (h *quietRepeats) WithGroup(name string) slog.Handler {
	return &quietRepeats{next: h.next.WithGroup(name), window: h.window, prefix: h.prefix + "\x00" + name + ".", state: h.state}
}

// writeAttr adds one attribute to a repeat's key.
func writeAttr(b *strings.Builder, a slog.Attr) { fmt.Fprintf(b, "\x00%s=%v", a.Key, a.Value) }
