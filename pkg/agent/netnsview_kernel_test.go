package agent

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// A pod whose netns the agent cannot see looks dead. The agent must
// release a stale attachment only when it can really tell its netns is
// gone: a netns path on a mount that does not receive the host's mounts
// proves nothing.
func TestReleasesAStaleAttachmentOnlyWhenItCanSeeNetns(t *testing.T) {
	env := kerneltest.New(t)
	n := &node{t: t, env: env, reserved: filepath.Join(t.TempDir(), "reserved")}
	env.SetNode(map[string]any{"reservedInterfacesFile": n.reserved})
	n.conf = env.Conf(nil)
	conf, err := config.NodeConf(env.NodeFile)
	if err != nil {
		t.Fatal(err)
	}
	env.AddPF("ens1", 2)
	pod := env.NewPod()
	if err := n.cni("ADD", pod, "c1"); err != nil {
		t.Fatal(err)
	}
	// The pod dies; the kernel hands its physical devices back to the
	// host (ifb links stand in for them, so the test moves them).
	for _, name := range []string{"net1", "ens1v0", "ens1v1"} {
		kerneltest.MoveLink(t, pod, env.Host, name)
	}
	kerneltest.DeleteNS(t, pod)
	store := state.Store{Dir: env.StateDir}
	rec, err := store.Get(state.Key("c1", "net1"))
	if err != nil || rec == nil {
		t.Fatalf("record: %v %v", rec, err)
	}
	visible := rec.Netns

	// Seen from a mount namespace where the netns lives on the root file
	// system (a container without /var/run/netns mounted): not judged.
	rec.Netns = filepath.Join(t.TempDir(), "netns", "cni-1234")
	if err := store.Save(rec); err != nil {
		t.Fatal(err)
	}
	why := CanSeeNetns(rec.Netns)
	if why == nil || !strings.Contains(why.Error(), "not a mount of its own") {
		t.Fatalf("CanSeeNetns(%s) = %v, want a refusal", rec.Netns, why)
	}
	live := reconcile(t, env, conf)
	if len(live) != 1 || live[0].Phase != state.Attached {
		t.Fatalf("the agent released (or touched) an attachment whose netns it cannot see: %+v", live)
	}

	// Where the runtime's netns directory is a propagating mount, a netns
	// that is gone is gone: the release runs, as DEL would have. The
	// attachment's IPAM is left to the runtime: the agent's container has
	// no IPAM plugin (here: CNI_PATH names an empty dir).
	rec.Netns = visible
	rec.IPAMConf = []byte(`{"cniVersion":"1.0.0","name":"sriov-passthrough-cni","type":"sriov-passthrough-cni","ipam":{"type":"host-local","subnet":"192.0.2.0/28"}}`)
	if err := store.Save(rec); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CNI_PATH", t.TempDir())
	if err := CanSeeNetns(visible); err != nil {
		t.Fatalf("CanSeeNetns(%s): %v", visible, err)
	}
	var logs bytes.Buffer
	if live := reconcileLogging(t, env, conf, &logs); len(live) != 0 {
		t.Fatalf("stale attachment not released: %+v", live)
	}
	if strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "left to the runtime") {
		t.Errorf("the release of a gone pod's attachment should leave its IPAM to the runtime, quietly; the log:\n%s", logs.String())
	}
	links := kerneltest.Links(t, env.Host)
	for _, name := range env.AllNames() {
		if _, ok := links[name]; !ok {
			t.Errorf("%s not home under its name", name)
		}
	}
}

func reconcile(t *testing.T, env *kerneltest.Env, conf *config.NetConf) []*state.Record {
	t.Helper()
	return reconcileLogging(t, env, conf, io.Discard)
}

// reconcileLogging is reconcile with the log also written to logs.
func reconcileLogging(t *testing.T, env *kerneltest.Env, conf *config.NetConf, logs io.Writer) []*state.Record {
	t.Helper()
	var live []*state.Record
	log := slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, logs), nil))
	err := env.Host.Do(func(ns.NetNS) error {
		host, err := netdev.Current(conf.SysfsRoot)
		if err != nil {
			return err
		}
		defer host.Close()
		eng := nodeEngine(conf, host, log, CanSeeNetns)
		eng.LockTimeout = time.Second
		live, err = eng.Reconcile()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return live
}

func TestCanSeeNetnsInThisNamespace(t *testing.T) {
	kerneltest.RequireRoot(t)
	// This test runs in the host's pid namespace, where kernel threads are
	// visible.
	if err := CanSeeNetns(fmt.Sprintf("/proc/%d/ns/net", os.Getpid())); err != nil {
		t.Errorf("/proc paths in the host pid namespace: %v", err)
	}
	if err := CanSeeNetns("/nonexistent-dir/netns/x"); err == nil {
		t.Error("a netns path on the root file system was judged visible")
	}
	// A path that cannot be looked at (here: through a regular file,
	// ENOTDIR; in a container: another process's /proc/<pid>/ns/net
	// without ptrace access, EACCES) is not a path that is gone.
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CanSeeNetns(notDir + "/ns/net"); err == nil || !strings.Contains(err.Error(), "cannot look at") {
		t.Errorf("an unreadable netns path was judged: %v", err)
	}
}

// hostPIDChild, set in a child's environment, makes the next test a child
// in a pid namespace of its own: see the test.
const hostPIDChild = "SRIOVPT_TEST_PIDNS_CHILD"

// An agent without hostPID: its /proc shows only its own pid namespace,
// where a live pod's /proc/<pid>/ns/net path does not exist, so the pod
// would look dead. The check must refuse such paths there. The test runs
// itself again as pid 1 of a new pid namespace, with a /proc of that
// namespace mounted in a mount namespace of its own (both die with it),
// and asks about this process's netns path.
func TestCanSeeNetnsRefusesProcPathsWithoutHostPID(t *testing.T) {
	if path := os.Getenv(hostPIDChild); path != "" {
		// The child: a private copy of the mounts, then its own /proc.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("proc", "/proc", "proc", 0, ""); err != nil {
			t.Fatal(err)
		}
		_, statErr := os.Stat(path)
		fmt.Printf("pid=%d\nstat=%v\ncansee=%v\n", os.Getpid(), statErr, CanSeeNetns(path))
		return
	}
	kerneltest.RequireRoot(t)
	path := fmt.Sprintf("/proc/%d/ns/net", os.Getpid())
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), hostPIDChild+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child in a new pid namespace: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			got[k] = v
		}
	}
	if got["pid"] != "1" {
		t.Fatalf("the child is not in a pid namespace of its own:\n%s", out)
	}
	// What makes the check needed: the live netns looks absent there.
	if !strings.Contains(got["stat"], "no such file") {
		t.Fatalf("%s seen from the child: %q, want it absent (else this test proves nothing)\n%s", path, got["stat"], out)
	}
	if !strings.Contains(got["cansee"], "not in the host's pid namespace") {
		t.Fatalf("CanSeeNetns(%s) without hostPID = %q, want a refusal\n%s", path, got["cansee"], out)
	}
	// And here, in the host's pid namespace, the same path is judged.
	if err := CanSeeNetns(path); err != nil {
		t.Errorf("CanSeeNetns(%s) in the host pid namespace: %v", path, err)
	}
}
