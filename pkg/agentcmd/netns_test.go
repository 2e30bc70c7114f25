package agentcmd

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/plugin"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// The agent binary in a mount namespace of its own where the runtime's
// netns directory is a private, empty mount: a container whose
// /var/run/netns is not the host's. Every pod's netns looks gone from
// there. The agent must say it cannot tell, and leave the live pod's PF
// where it is.
func TestAgentThatCannotSeeNetnsLeavesLivePodsAlone(t *testing.T) {
	env := kerneltest.New(t)
	env.AddPF("ens1", 1)
	pod := env.NewPod()
	dir := t.TempDir()
	conf := env.Conf(nil)
	p := &plugin.Plugin{NodeConfigFile: env.NodeFile, LockTimeout: 5 * time.Second, SettleTimeout: 100 * time.Millisecond, Stdout: io.Discard, Stderr: io.Discard}
	t.Setenv("CNI_COMMAND", "ADD")
	err := env.Host.Do(func(ns.NetNS) error {
		return p.Add(&skel.CmdArgs{ContainerID: "c1", IfName: "net1", Netns: pod.Path(), StdinData: conf,
			Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=ci;K8S_POD_NAME=job-1"})
	})
	if err != nil {
		t.Fatal(err)
	}
	node := env.NodeFile
	plugins := filepath.Join(dir, "device-plugins")
	if err := os.Mkdir(plugins, 0o755); err != nil {
		t.Fatal(err)
	}
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// ip netns exec enters the env's host netns (in a mount namespace of
	// its own); unshare then hides the host's /run/netns behind an empty
	// private tmpfs, as a container without the hostPath mount sees it.
	script := `mount -t tmpfs tmpfs /run/netns && exec "$@"`
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(env.Host.Path()),
		"unshare", "--mount", "--propagation", "private", "sh", "-c", script, "agent",
		bin, "-node-config", node, "-device-plugin-dir", plugins, "-resync", "100ms",
		// No kubelet here to share namespaces with: this test is about
		// the safety net behind that check.
		"-check-node-namespaces=false")
	cmd.Env = append(os.Environ(), "SRIOVPT_AGENT_MAIN=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var logs bytes.Buffer
	saw := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "cannot tell whether the attachment's netns is gone") {
				saw <- true
			}
		}
		close(saw)
	}()
	select {
	case ok := <-saw:
		if !ok {
			t.Fatalf("the agent exited without judging:\n%s", logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent never said it cannot tell whether the pod's netns is gone")
	}
	// Several resyncs with repair have run by now; kill it and look.
	time.Sleep(300 * time.Millisecond)
	cmd.Process.Kill()
	cmd.Wait()
	t.Logf("agent log:\n%s", logs.String())
	rec, err := state.Store{Dir: env.StateDir}.Get(state.Key("c1", "net1"))
	if err != nil || rec == nil || rec.Phase != state.Attached {
		t.Fatalf("the live pod's record: %+v, %v", rec, err)
	}
	inPod := map[string]bool{}
	for name, l := range kerneltest.Links(t, pod) {
		if netdev.PCIOf(l) != "" {
			inPod[name] = true
		}
	}
	if !inPod["net1"] {
		t.Fatalf("the live pod lost its PF: it has %v", inPod)
	}
	// Clean up as the runtime would: DEL.
	t.Setenv("CNI_COMMAND", "DEL")
	err = env.Host.Do(func(ns.NetNS) error {
		return p.Del(&skel.CmdArgs{ContainerID: "c1", IfName: "net1", Netns: pod.Path(), StdinData: conf,
			Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=ci;K8S_POD_NAME=job-1"})
	})
	if err != nil {
		t.Fatal(err)
	}
}
