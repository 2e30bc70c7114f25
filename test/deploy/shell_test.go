package deploy_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=v0.0.0-deploytest",
		"-o", filepath.Join(l.src, binName), "./cmd/sriov-passthrough-cni")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
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
}

func TestInstallerIsShellcheckClean(t *testing.T) {
	sc, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Skip("shellcheck is not installed (apt-get install shellcheck)")
	}
	if out, err := exec.Command(sc, installerPath(t)).CombinedOutput(); err != nil {
		t.Errorf("shellcheck install-plugin: %v\n%s", err, out)
	}
}

// The image's shell and tools are busybox's: run the installer with nothing
// else on PATH.
func TestInstallerRunsUnderBusybox(t *testing.T) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox is not installed (apt-get install busybox)")
	}
	list, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	pathDir := t.TempDir()
	for applet := range strings.Lines(string(list)) {
		applet = strings.TrimSpace(applet)
		if applet == "" || strings.Contains(applet, "/") {
			continue
		}
		if err := os.Symlink(bb, filepath.Join(pathDir, applet)); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"PATH=" + pathDir}
	bbRun := func(args ...string) result {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bb, append([]string{"sh", installerPath(t)}, args...)...)
		return finish(t, cmd, env)
	}

	l := newLayout(t, fakePlugin("v1"))
	if r := bbRun("--once", "--src", l.src, l.bin, l.conf); r.code != 0 {
		t.Fatalf("install under busybox: %v", r)
	}
	assertInstalled(t, l.installedBin(), fakePlugin("v1"), 0o755)
	assertInstalled(t, l.installedConf(), readRepoFile(t, "plugin/"+confName), 0o644)
	assertNoTempFiles(t, l.bin, l.conf)
	if r := bbRun("--check", "--src", l.src, l.bin, l.conf); r.code != 0 {
		t.Errorf("check under busybox: %v", r)
	}
	l.setSource(t, brokenPlugin)
	if r := bbRun("--once", "--src", l.src, l.bin, l.conf); r.code != 1 || !strings.Contains(r.stderr, "does not answer CNI_COMMAND=VERSION") {
		t.Errorf("broken binary under busybox: %v", r)
	}
	assertInstalled(t, l.installedBin(), fakePlugin("v1"), 0o755)
}

// The DaemonSet runs install-plugin as uid 0 with every capability dropped.
// That is enough for a root-owned 0755 /opt/cni/bin (root writes it as its
// owner), and really is without privilege: a directory owned by someone else
// becomes unwritable.
func TestInstallerNeedsNoCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, as the DaemonSet's container runs")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) is not installed")
	}
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
