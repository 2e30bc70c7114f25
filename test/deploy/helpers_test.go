// Package deploy_test checks what ships the plugin to a node: install-plugin,
// the Dockerfile, the manifests in deploy/ and the snippets in README.md
// and docs/*.md.
package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	binName  = "sriov-passthrough-cni"
	confName = "90-sriov-passthrough-cni.conf"
)

// repoRoot is the module root, two levels above this file.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test source file")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func readRepoFile(t *testing.T, rel string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), rel))
	if err != nil {
		t.Fatalf("read %s: %v", rel, err)
	}
	return data
}

// fakePlugin is a shell script standing in for the plugin binary. tag makes
// the content differ between versions.
func fakePlugin(tag string) []byte {
	return []byte(`#!/bin/sh
# fake sriov-passthrough-cni ` + tag + `
if [ "${CNI_COMMAND:-}" = VERSION ]; then
	echo '{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}'
	exit 0
fi
if [ "${1:-}" = --version ]; then
	echo "sriov-passthrough-cni ` + tag + `"
	exit 0
fi
exit 1
`)
}

// brokenPlugin fails CNI_COMMAND=VERSION.
var brokenPlugin = []byte("#!/bin/sh\necho 'broken build' >&2\nexit 1\n")

// chattyPlugin exits 0 but prints no version object.
var chattyPlugin = []byte("#!/bin/sh\necho hello\n")

// layout is one installer run's directories: the image's source dir and the
// node's bin and conf dirs.
type layout struct {
	src, bin, conf string
}

func newLayout(t *testing.T, plugin []byte) layout {
	t.Helper()
	root := t.TempDir()
	l := layout{
		src:  filepath.Join(root, "plugin-src"),
		bin:  filepath.Join(root, "opt", "cni", "bin"),
		conf: filepath.Join(root, "etc", "cni", "net.d"),
	}
	for _, d := range []string{l.src, l.bin, l.conf} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l.setSource(t, plugin)
	conf := readRepoFile(t, filepath.Join("plugin", confName))
	if err := os.WriteFile(filepath.Join(l.src, confName), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	return l
}

// setSource replaces the image's binary, as a new image would.
func (l layout) setSource(t *testing.T, plugin []byte) {
	t.Helper()
	p := filepath.Join(l.src, binName)
	tmp := p + ".new"
	if err := os.WriteFile(tmp, plugin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
}

func (l layout) installedBin() string  { return filepath.Join(l.bin, binName) }
func (l layout) installedConf() string { return filepath.Join(l.conf, confName) }

// result is one finished installer run.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return "exit " + strconv.Itoa(r.code) + "\nstdout:\n" + r.stdout + "stderr:\n" + r.stderr
}

func installerPath(t *testing.T) string {
	return filepath.Join(repoRoot(t), "install-plugin")
}

// imageShell returns busybox and a PATH entry ("PATH=dir") that holds
// only busybox's applets except those left out: install-plugin's shell and
// tools in the image. The tests run the installer that way, so a tool that
// the host's coreutils has and the image's busybox lacks (Debian's busybox
// has no cksum) fails here and not on a node.
func imageShell(t *testing.T, leftOut ...string) (string, string) {
	t.Helper()
	bb := needTool(t, "busybox", "busybox")
	list, err := busyboxApplets()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	dir := t.TempDir()
	for applet := range strings.Lines(string(list)) {
		applet = strings.TrimSpace(applet)
		if applet == "" || strings.Contains(applet, "/") || slices.Contains(leftOut, applet) {
			continue
		}
		if err := os.Symlink(bb, filepath.Join(dir, applet)); err != nil {
			t.Fatal(err)
		}
	}
	return bb, "PATH=" + dir
}

// busyboxApplets is `busybox --list`, asked once per test binary: every
// installer run builds its PATH from it.
var busyboxApplets = sync.OnceValues(func() ([]byte, error) {
	return exec.Command("busybox", "--list").Output()
})

// installerCommand is install-plugin with args, run as the image runs it
// (imageShell); env then adds the returned PATH entry.
func installerCommand(t *testing.T, ctx context.Context, args ...string) (*exec.Cmd, string) {
	t.Helper()
	bb, path := imageShell(t)
	return exec.CommandContext(ctx, bb, append([]string{"sh", installerPath(t)}, args...)...), path
}

// runInstaller runs install-plugin to completion (30 s at most) as the
// image runs it.
func runInstaller(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd, path := installerCommand(t, ctx, args...)
	return finish(t, cmd, append(env, path))
}

func finish(t *testing.T, cmd *exec.Cmd, env []string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(os.Environ(), env...)
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		r.code = exitErr.ExitCode()
	default:
		t.Fatalf("run %v: %v", cmd.Args, err)
	}
	return r
}

// syncBuffer collects a running process's output for polling.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls cond every 50 ms until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cond()
}

func fileIs(path string, want []byte) bool {
	got, err := os.ReadFile(path)
	return err == nil && bytes.Equal(got, want)
}

// needTool finds a tool the test uses. Outside CI a missing tool skips the
// test; under CI (CI=true) it fails it, since test/deps.sh installs them.
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("%s is not installed (apt-get install %s, or run test/deps.sh)", name, pkg)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}
