package agentcmd

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/agent"
)

// The probe command asks the agent over its health socket and fails with
// the agent's reason: what the kubelet's exec probes run.
func TestProbeCommandAsksTheAgent(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sock := filepath.Join(t.TempDir(), "run", "health.sock")
	dp := agent.NewDevicePlugin(agent.DefaultResourceName, slog.New(slog.DiscardHandler))
	h := &agent.Health{Agent: &agent.Agent{}, Server: &agent.Server{Dir: t.TempDir(), Plugin: dp},
		Stall: time.Minute, Started: time.Now()}
	if err := serveHealth(ctx, sock, h); err != nil {
		t.Fatal(err)
	}
	if err := runProbe(sock, "live"); err != nil {
		t.Errorf("live: %v", err)
	}
	if err := runProbe(sock, "ready"); err == nil || !strings.Contains(err.Error(), "not registered with the kubelet") {
		t.Errorf("ready before any registration: %v", err)
	}
	if err := runProbe(sock, "healthy"); err == nil {
		t.Error("probe healthy: accepted")
	}
	if err := runProbe(filepath.Join(t.TempDir(), "none.sock"), "live"); err == nil {
		t.Error("probe with no agent listening: passed")
	}
}
