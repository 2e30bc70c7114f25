package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// reservedMountChild, set in a child's environment, names the host file the
// child mounts as its reserved-interfaces file: see the test.
const reservedMountChild = "SRIOVPT_TEST_RESERVED_MOUNT_CHILD"

// The DaemonSet mounts the reserved-interfaces file as itself. An edit in
// place is seen through the mount; a replace by rename on the host is not
// (the mount pins the old inode), so the agent must notice and exit for a
// new container to mount the new file. The test runs itself again in a
// mount namespace of its own (gone with it), bind-mounts the "host" file
// over the agent's path there, and reports what the agent says after each
// change made by the parent.
func TestReservedFileReplacedThroughAFileMount(t *testing.T) {
	if host := os.Getenv(reservedMountChild); host != "" {
		reservedMountChildMain(host)
		return
	}
	kerneltest.RequireRoot(t)
	dir := t.TempDir()
	host := filepath.Join(dir, "host-reserved")
	if err := os.WriteFile(host, []byte("ens1f0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), reservedMountChild+"="+host)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	read := func() string {
		buf := make([]byte, 512)
		n, _ := out.Read(buf)
		return strings.TrimSpace(string(buf[:n]))
	}
	ask := func() string { fmt.Fprintln(stdin); return read() }

	if got := read(); got != "mounted: ens1f0 replaced=<nil>" {
		t.Fatalf("child after mounting: %q", got)
	}
	// An admin edits the file in place: same inode, seen, no exit.
	if err := os.WriteFile(host, []byte("ens1f0\nens1f1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := ask(); got != "reads: ens1f0,ens1f1 replaced=<nil>" {
		t.Fatalf("after an edit in place: %q", got)
	}
	// An admin replaces it by rename: the mount keeps the old inode.
	tmp := host + ".new"
	if err := os.WriteFile(tmp, []byte("ens2f0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, host); err != nil {
		t.Fatal(err)
	}
	got := ask()
	if !strings.HasPrefix(got, "reads: ens1f0,ens1f1 replaced=") || !strings.Contains(got, ErrReservedFileReplaced.Error()) {
		t.Fatalf("after a replace by rename: %q, want the old content and ErrReservedFileReplaced", got)
	}
}

// reservedMountChildMain mounts host over the agent's reserved file in this
// (private) mount namespace and answers each line on stdin with what the
// agent reads and whether it sees the file replaced.
func reservedMountChildMain(host string) {
	fail := func(err error) { fmt.Println("error:", err); os.Exit(1) }
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fail(err)
	}
	root := filepath.Join(filepath.Dir(host), "container")
	path := filepath.Join(root, config.DefaultReservedInterfacesFile)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		fail(err)
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		fail(err)
	}
	if err := unix.Mount(host, path, "", unix.MS_BIND, ""); err != nil {
		fail(err)
	}
	a := &Agent{Conf: &config.NetConf{}, HostRoot: root}
	report := func(what string) {
		reserved, _ := os.ReadFile(path)
		err := a.reservedFileReplaced()
		if err != nil && !errors.Is(err, ErrReservedFileReplaced) {
			fail(err)
		}
		fmt.Printf("%s: %s replaced=%v\n", what, strings.Join(strings.Fields(string(reserved)), ","), err)
	}
	report("mounted")
	buf := make([]byte, 1)
	for {
		if _, err := os.Stdin.Read(buf); err != nil {
			return
		}
		report("reads")
	}
}
