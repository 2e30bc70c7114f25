package deploy_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The image's installer run with the real plugin, built the way the
// Dockerfile builds it.
func TestInstallRealBinary(t *testing.T) {
	root := repoRoot(t)
	if goFiles, _ := filepath.Glob(filepath.Join(root, "cmd", binName, "*.go")); len(goFiles) == 0 {
		t.Skip("cmd/sriov-passthrough-cni has no Go files yet")
	}
	l := newLayout(t, nil)
	buildPlugin(t, "v0.0.0-deploytest", filepath.Join(l.src, binName))
	r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf)
	if r.code != 0 {
		t.Fatalf("install of the real binary: %v", r)
	}
	for _, want := range []string{`"supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]`, "installed sriov-passthrough-cni v0.0.0-deploytest"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("log lacks %q:\n%v", want, r)
		}
	}
	if r := runInstaller(t, nil, "--check", "--src", l.src, l.bin, l.conf); r.code != 0 {
		t.Errorf("readiness check of the real binary: %v", r)
	}

	// An upgrade while the runtime is executing the plugin: writing into the
	// running binary fails with ETXTBSY (what a plain cp hits), a rename
	// does not. The plugin blocks reading its config from stdin meanwhile.
	running := exec.Command(l.installedBin())
	running.Env = append(os.Environ(), "CNI_COMMAND=ADD", "CNI_CONTAINERID=x", "CNI_NETNS=/nonexistent", "CNI_IFNAME=net1", "CNI_PATH=/nonexistent")
	stdin, err := running.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := running.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = running.Process.Kill(); _ = running.Wait() }()
	if !waitFor(5*time.Second, func() bool {
		f, err := os.OpenFile(l.installedBin(), os.O_WRONLY, 0)
		if err == nil {
			f.Close()
		}
		return errors.Is(err, syscall.ETXTBSY)
	}) {
		t.Fatal("the running plugin's binary never became busy; the test proves nothing")
	}
	buildPlugin(t, "v0.0.0-deploytest2", filepath.Join(l.src, binName))
	if r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf); r.code != 0 || !strings.Contains(r.stdout, "installed sriov-passthrough-cni v0.0.0-deploytest2") {
		t.Errorf("upgrade while the plugin runs: %v", r)
	}
}

// buildPlugin builds the plugin as the Dockerfile does, with version stamped.
func buildPlugin(t *testing.T, version, out string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+version,
		"-o", out, "./cmd/sriov-passthrough-cni")
	build.Dir = repoRoot(t)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
}

func TestInstallerIsShellcheckClean(t *testing.T) {
	sc := needTool(t, "shellcheck", "shellcheck")
	if out, err := exec.Command(sc, installerPath(t)).CombinedOutput(); err != nil {
		t.Errorf("shellcheck install-plugin: %v\n%s", err, out)
	}
}

// Every installer test runs install-plugin under busybox alone
// (imageShell). A tool it needs and the image lacks stops it at its start
// with the tool named, before it touches a file: working without it would
// be half working (without sha256sum a re-check cannot tell another
// installer's binary from its own, and puts its own back over it).
//
// busybox's own sh finds its applets whatever PATH says, so the shell here
// is the host's /bin/sh, with busybox's applets but sha256sum on PATH.
func TestInstallerRefusesToStartWithoutItsTools(t *testing.T) {
	l := newLayout(t, fakePlugin("v1"))
	_, path := imageShell(t, "sha256sum")
	for _, mode := range [][]string{{"--once"}, {"--check"}, {"--interval", "1"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		args := append(append([]string{installerPath(t)}, mode...), "--src", l.src, l.bin, l.conf)
		r := finish(t, exec.CommandContext(ctx, "/bin/sh", args...), []string{path})
		cancel()
		if r.code != 1 || !strings.Contains(r.stderr, "missing on PATH: sha256sum") {
			t.Errorf("%v without sha256sum: %v\nwant exit 1 naming sha256sum", mode, r)
		}
		if entries, _ := os.ReadDir(l.bin); len(entries) != 0 {
			t.Fatalf("%v without sha256sum wrote into %s: %v", mode, l.bin, entries)
		}
	}
}

// The DaemonSet runs install-plugin as uid 0 with every capability dropped.
// That is enough for a root-owned 0755 /opt/cni/bin (root writes it as its
// owner), and really is without privilege: a directory owned by someone else
// becomes unwritable.
func TestInstallerNeedsNoCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, as the DaemonSet's container runs")
	}
	setpriv := needTool(t, "setpriv", "util-linux")
	noCaps := func(args ...string) result {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		argv := append([]string{"--bounding-set", "-all", "--inh-caps", "-all", "--ambient-caps", "-all", "--no-new-privs", "--", installerPath(t)}, args...)
		return finish(t, exec.CommandContext(ctx, setpriv, argv...), nil)
	}
	l := newLayout(t, fakePlugin("v1"))
	if r := noCaps("--once", "--src", l.src, l.bin, l.conf); r.code != 0 {
		t.Fatalf("install without capabilities: %v", r)
	}
	l.setSource(t, fakePlugin("v2"))
	if r := noCaps("--once", "--src", l.src, l.bin, l.conf); r.code != 0 {
		t.Fatalf("upgrade without capabilities: %v", r)
	}
	assertInstalled(t, l.installedBin(), fakePlugin("v2"), 0o755)
	if r := noCaps("--check", "--src", l.src, l.bin, l.conf); r.code != 0 {
		t.Errorf("check without capabilities: %v", r)
	}

	foreign := filepath.Join(t.TempDir(), "foreign")
	if err := os.Mkdir(foreign, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(foreign, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if r := noCaps("--once", "--src", l.src, foreign); r.code != 1 {
		t.Errorf("capabilities were not dropped: wrote a directory owned by another user: %v", r)
	}
}
