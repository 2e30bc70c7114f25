package agent

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestQuietRepeatsDropsRepeatedWarningsOnly(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(newQuietRepeats(slog.NewTextHandler(&out, nil), 200*time.Millisecond)).With("cmd", "reconcile")
	for range 3 {
		log.Warn("device not found", "pci", "0000:3b:00.0")
		log.Warn("device not found", "pci", "0000:3b:10.0")
		log.Info("repairing stale attachment", "record", "c1/net1")
	}
	// Another With sees what the first saw: the state is shared.
	log.With("extra", 1).Warn("device not found", "pci", "0000:3b:00.0")
	lines := strings.Count(out.String(), "\n")
	if got := strings.Count(out.String(), `pci=0000:3b:00.0`); got != 2 {
		t.Errorf("warning for one device logged %d times, want 2 (once, and once with other attributes):\n%s", got, out.String())
	}
	if got := strings.Count(out.String(), `pci=0000:3b:10.0`); got != 1 {
		t.Errorf("warning for the other device logged %d times, want 1:\n%s", got, out.String())
	}
	if got := strings.Count(out.String(), "level=INFO"); got != 3 {
		t.Errorf("info lines: %d, want all 3:\n%s", got, out.String())
	}
	// Once the window has passed, the warning is said again.
	time.Sleep(250 * time.Millisecond)
	log.Warn("device not found", "pci", "0000:3b:00.0")
	if got := strings.Count(out.String(), "\n"); got != lines+1 {
		t.Errorf("after the window the warning was not logged again:\n%s", out.String())
	}
}
