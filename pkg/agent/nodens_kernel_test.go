package agent

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// Set in a child's environment: the child listens as a kubelet would
// (kubeletChild=<device-plugin dir>), or runs the check against one
// (checkChild=<device-plugin dir>).
const (
	kubeletChild = "SRIOVPT_TEST_KUBELET_CHILD"
	checkChild   = "SRIOVPT_TEST_NODENS_CHECK_CHILD"
)

// listenAsKubelet listens on dir/kubelet.sock.
func listenAsKubelet(t *testing.T, dir string) net.Listener {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(dir, kubeletSocket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestNodeNamespacesChild is the re-executed child of the tests below; on
// its own it does nothing.
func TestNodeNamespacesChild(t *testing.T) {
	if dir := os.Getenv(kubeletChild); dir != "" {
		listenAsKubelet(t, dir)
		fmt.Println("listening")
		time.Sleep(time.Minute) // killed by the parent
	}
	if dir := os.Getenv(checkChild); dir != "" {
		fmt.Printf("check=%v\n", CheckNodeNamespaces(context.Background(), dir, time.Second))
	}
}

// startChild runs TestNodeNamespacesChild in new namespaces and returns
// once it printed its first line.
func startChild(t *testing.T, flags uintptr, env string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestNodeNamespacesChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), env)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd, bufio.NewReader(out)
}

// The agent in the kubelet's namespaces passes; a kubelet in another
// network namespace, or in a pid namespace the agent sees but is not in,
// is refused with what to set.
func TestCheckNodeNamespaces(t *testing.T) {
	kerneltest.RequireRoot(t)
	dir := t.TempDir()
	listenAsKubelet(t, dir)
	if err := CheckNodeNamespaces(context.Background(), dir, time.Second); err != nil {
		t.Fatalf("same namespaces as the kubelet: %v", err)
	}

	for _, c := range []struct {
		name  string
		flags uintptr
		want  string
	}{
		{"kubelet in another netns", syscall.CLONE_NEWNET, "hostNetwork: true"},
		{"kubelet in a child pid namespace", syscall.CLONE_NEWPID, "hostPID: true"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			_, out := startChild(t, c.flags, kubeletChild+"="+dir)
			if line, err := out.ReadString('\n'); err != nil || line != "listening\n" {
				t.Fatalf("child kubelet: %q %v", line, err)
			}
			err := CheckNodeNamespaces(context.Background(), dir, time.Second)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("CheckNodeNamespaces = %v, want a refusal saying %q", err, c.want)
			}
		})
	}
}

// An agent without hostPID: the kubelet is not visible from its pid
// namespace at all (SO_PEERCRED says pid 0).
func TestCheckNodeNamespacesWithoutHostPID(t *testing.T) {
	kerneltest.RequireRoot(t)
	dir := t.TempDir()
	listenAsKubelet(t, dir)
	cmd, out := startChild(t, syscall.CLONE_NEWPID, checkChild+"="+dir)
	line, err := out.ReadString('\n')
	_ = cmd.Wait()
	if err != nil || !strings.HasPrefix(line, "check=") {
		t.Fatalf("child: %q %v", line, err)
	}
	if !strings.Contains(line, "not in this process's pid namespace") || !strings.Contains(line, "hostPID: true") {
		t.Fatalf("the check in a pid namespace of its own says %q, want a refusal naming hostPID", line)
	}
}
