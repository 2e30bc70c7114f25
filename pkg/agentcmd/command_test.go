package agentcmd

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/agent"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// TestMain lets the test binary stand in for the agent's own: run with
// SRIOVPT_AGENT_MAIN=1 it is the device-plugin agent's main, so the
// status test needs no go build.
func TestMain(m *testing.M) {
	if os.Getenv("SRIOVPT_AGENT_MAIN") == "1" {
		os.Exit(Command{Name: "sriov-passthrough-agent", Version: "test"}.Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// The binary's status, run in a host netns of the test's making
// with the node configuration pointing at a fake sysfs: what a person on
// the node types.
func TestStatusCommand(t *testing.T) {
	env := kerneltest.New(t)
	env.AddPF("ens1", 2)
	env.AddPF("ens2", 0)
	dir := t.TempDir()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(dir, "node.json")
	reserved := filepath.Join(dir, "reserved")
	conf := `{"sysfsRoot":"` + env.SysfsRoot + `","stateDir":"` + env.StateDir + `","reservedInterfacesFile":"` + reserved + `"}`
	if err := os.WriteFile(node, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(reserved, []byte("ens2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		// ip netns exec enters the env's host netns by its name under /run/netns.
		cmd := exec.Command("ip", append([]string{"netns", "exec", filepath.Base(env.Host.Path()), bin, "status", "-node-config", node}, args...)...)
		cmd.Env = append(os.Environ(), "SRIOVPT_AGENT_MAIN=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("status %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	table := run()
	t.Logf("\n%s", table)
	if !strings.Contains(table, "ens1") || !strings.Contains(table, "free") || !strings.Contains(table, "ens2 is reserved") {
		t.Errorf("status table:\n%s", table)
	}
	var pfs []agent.PF
	if err := json.Unmarshal([]byte(run("-o", "json")), &pfs); err != nil || len(pfs) != 2 || pfs[0].VFs != 2 || pfs[1].Phase != agent.Ineligible {
		t.Errorf("status -o json: %v %+v", err, pfs)
	}
}

// The DaemonSet's node.json reaches the node whole, replacing what was
// there, and a broken one is refused before it can replace a good one.
// One with a field this release does not know (a ConfigMap written for a
// later release, after a rollback) is installed: the plugin reads it too.
func TestInstallNodeConfig(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "cm.json"), filepath.Join(dir, "etc", "sriov-passthrough-cni", "node.json")
	for _, content := range []string{`{"requireDeviceID":true}`, `{"requireDeviceID":true,"vfBaseline":4}`, `{"pfNames":["ens1"]}`} {
		if err := os.WriteFile(src, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := installFile(src, dst); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(dst); string(got) != content {
			t.Errorf("installed %q, want %q", got, content)
		}
	}
	if err := os.WriteFile(src, []byte(`{"pfNames":"ens1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := installFile(src, dst); err == nil {
		t.Error("a node.json of the wrong shape was installed")
	}
	if got, _ := os.ReadFile(dst); string(got) != `{"pfNames":["ens1"]}` {
		t.Errorf("the good node.json was replaced: %q", got)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(dst), ".node-*")); len(left) != 0 {
		t.Errorf("temp files left: %v", left)
	}
}

// -h lists the subcommands and every flag, as an engineer on a node needs
// them without the source.
func TestHelpListsSubcommandsAndFlags(t *testing.T) {
	var o Options
	fs, _ := newFlags("sriov-passthrough-agent", &o)
	var out strings.Builder
	fs.SetOutput(&out)
	fs.Usage()
	for _, want := range []string{"status [-o json]", "probe ready|live"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help does not list %q:\n%s", want, out.String())
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(out.String(), "-"+f.Name) {
			t.Errorf("help does not list -%s", f.Name)
		}
	})
}

// The agent starts with a node.json that sets a field this release does
// not know, and names it in a warning; a known field of the wrong type
// still stops it, naming the field.
func TestAgentWarnsOfUnknownNodeFields(t *testing.T) {
	dir := t.TempDir()
	node := filepath.Join(dir, "node.json")
	if err := os.WriteFile(node, []byte(`{"stateDir":"/run/x","vfBaseline":{"numVFs":4}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	a, err := newAgent(Options{nodeConfig: node}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil || a.Conf.StateDir != "/run/x" {
		t.Fatalf("newAgent: %+v %v", a, err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "fields=[vfBaseline]") {
		t.Errorf("log %q: want a warning naming vfBaseline", logs.String())
	}
	if err := os.WriteFile(node, []byte(`{"stateDir":["/run/x"],"vfBaseline":4}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := newAgent(Options{nodeConfig: node}, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), `field "stateDir"`) {
		t.Errorf("newAgent with stateDir of the wrong type: %v, want an error naming the field", err)
	}
}

// On a node whose node.json says allocation dra (here through
// allocationByNode), the device-plugin agent hands its process to
// sriov-passthrough-dra next to it, with the same arguments; without that
// binary it stops, saying what to do. On another node it stays the device
// plugin.
func TestAgentHandsADRANodeToTheDRABinary(t *testing.T) {
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "sriov-passthrough-agent")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(dir, "node.json")
	if err := os.WriteFile(node, []byte(`{"stateDir":"`+dir+`/state","allocationByNode":{"node1":"dra"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-node-config", node, "-check-node-namespaces=false", "-health-socket", "",
		"-device-plugin-dir", dir, "-node-name", "node1"}
	run := func() (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "SRIOVPT_AGENT_MAIN=1")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run()
	if err == nil || !strings.Contains(out, "sriov-passthrough-dra, not found next to it") || !strings.Contains(out, "switch the node back in node.json") {
		t.Errorf("without the DRA binary: %v\n%s", err, out)
	}
	// The stand-in DRA binary writes what it was started with.
	got := filepath.Join(dir, "argv")
	script := "#!/bin/sh\nprintf '%s\\n' \"$0\" \"$@\" >" + got + "\n"
	if err := os.WriteFile(filepath.Join(dir, DRABinary), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := run(); err != nil {
		t.Fatalf("with the DRA binary: %v\n%s", err, out)
	}
	argv, err := os.ReadFile(got)
	if err != nil {
		t.Fatalf("the DRA binary did not run: %v", err)
	}
	want := strings.Join(append([]string{filepath.Join(dir, DRABinary)}, args...), "\n") + "\n"
	if string(argv) != want {
		t.Errorf("the DRA binary ran as\n%q\nwant\n%q", argv, want)
	}
	if err := os.Remove(got); err != nil {
		t.Fatal(err)
	}
	// node2 is not in allocationByNode: the agent starts its device plugin
	// (and waits for a kubelet that never comes) until stopped.
	args[len(args)-1] = "node2"
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "SRIOVPT_AGENT_MAIN=1")
	logFile, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	log := func() string { b, _ := os.ReadFile(logFile.Name()); return string(b) }
	for i := 0; i < 100 && !strings.Contains(log(), "msg=starting"); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	if !strings.Contains(log(), "node=node2 allocation=devicePlugin") {
		t.Errorf("node2: want the device plugin; the agent logged\n%s", log())
	}
	if _, err := os.Stat(got); err == nil {
		t.Error("node2: the DRA binary ran")
	}
}

// The DRA binary runs its DRA mode on a node whose node.json says so, with
// the DRA flags as given; its failure to start stops the agent.
func TestDRABinaryStartsItsDRAMode(t *testing.T) {
	dir := t.TempDir()
	node := filepath.Join(dir, "node.json")
	if err := os.WriteFile(node, []byte(`{"stateDir":"`+dir+`/state","allocation":"dra"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var got Options
	c := Command{Name: DRABinary, DRA: func(o Options, a *agent.Agent, _ *slog.Logger) (DRARunner, error) {
		got = o
		return nil, errors.New("no API server here")
	}}
	code := c.Main([]string{"-node-config", node, "-check-node-namespaces=false", "-health-socket", "",
		"-node-name", "node1", "-cdi-dir", dir + "/cdi"})
	if code != 1 {
		t.Errorf("exit code %d, want 1 (the DRA mode did not start)", code)
	}
	if got.NodeName != "node1" || got.CDIDir != dir+"/cdi" || got.DRAPluginDir != "/var/lib/kubelet/plugins/"+DRADriverName {
		t.Errorf("the DRA mode got %+v", got)
	}
}
