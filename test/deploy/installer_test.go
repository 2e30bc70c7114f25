package deploy_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestInstallOnceInstallsBinaryAndConf(t *testing.T) {
	l := newLayout(t, fakePlugin("v1"))
	r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf)
	if r.code != 0 {
		t.Fatalf("install failed: %v", r)
	}
	assertInstalled(t, l.installedBin(), fakePlugin("v1"), 0o755)
	assertInstalled(t, l.installedConf(), readRepoFile(t, "plugin/"+confName), 0o644)
	assertNoTempFiles(t, l.bin, l.conf)
	for _, want := range []string{"installed " + l.installedBin(), "installed " + l.installedConf(), "supportedVersions", "installed sriov-passthrough-cni v1"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("log lacks %q:\n%v", want, r)
		}
	}
}

func TestInstallOnceWithoutConfDirInstallsOnlyBinary(t *testing.T) {
	l := newLayout(t, fakePlugin("v1"))
	if err := os.Remove(filepath.Join(l.src, confName)); err != nil {
		t.Fatal(err)
	}
	if r := runInstaller(t, nil, "--once", "--src", l.src, l.bin); r.code != 0 {
		t.Fatalf("install without a conf dir needs no source conf: %v", r)
	}
	assertInstalled(t, l.installedBin(), fakePlugin("v1"), 0o755)
	if _, err := os.Stat(l.installedConf()); !os.IsNotExist(err) {
		t.Errorf("conf written without CNI_CONF_DIR: %v", err)
	}
}

func TestInstallUnchangedIsNoop(t *testing.T) {
	l := newLayout(t, fakePlugin("v1"))
	if r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf); r.code != 0 {
		t.Fatalf("first install: %v", r)
	}
	// An old mtime makes a rewrite visible whatever the filesystem's resolution.
	old := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	before := map[string]os.FileInfo{}
	for _, p := range []string{l.installedBin(), l.installedConf()} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
		before[p] = stat(t, p)
	}
	r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf)
	if r.code != 0 {
		t.Fatalf("second install: %v", r)
	}
	for p, fi := range before {
		now := stat(t, p)
		if !now.ModTime().Equal(old) || inode(now) != inode(fi) {
			t.Errorf("%s was rewritten: inode %d -> %d, mtime %v", p, inode(fi), inode(now), now.ModTime())
		}
	}
	if !strings.Contains(r.stdout, "already up to date") || strings.Contains(r.stdout, "installed /") {
		t.Errorf("log should say nothing changed:\n%v", r)
	}
}

// A runtime that has the old binary open (or is executing it) keeps reading
// the old content: the new file arrives by rename, never by rewriting in place.
func TestReplaceIsAtomicForOpenReader(t *testing.T) {
	l := newLayout(t, fakePlugin("v1"))
	if r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf); r.code != 0 {
		t.Fatalf("first install: %v", r)
	}
	reader, err := os.Open(l.installedBin())
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	oldInode := inode(stat(t, l.installedBin()))

	l.setSource(t, fakePlugin("v2-longer-than-v1"))
	r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf)
	if r.code != 0 {
		t.Fatalf("upgrade: %v", r)
	}
	if !strings.Contains(r.stdout, "replaced "+l.installedBin()) {
		t.Errorf("log lacks the replacement:\n%v", r)
	}
	held, err := io.ReadAll(reader)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(held, fakePlugin("v1")) {
		t.Errorf("the open file changed under its reader:\n%s", held)
	}
	assertInstalled(t, l.installedBin(), fakePlugin("v2-longer-than-v1"), 0o755)
	if inode(stat(t, l.installedBin())) == oldInode {
		t.Error("the binary was rewritten in place (same inode)")
	}
	assertNoTempFiles(t, l.bin, l.conf)
}

// A temp file left by an installer killed between write and rename is
// cleared on the next start; other dot files are not touched.
func TestStaleTempFilesAreRemoved(t *testing.T) {
	l := newLayout(t, fakePlugin("v1"))
	stale := filepath.Join(l.bin, "."+binName+".Ab12Cd")
	other := filepath.Join(l.bin, ".keep")
	for _, p := range []string{stale, other} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r := runInstaller(t, nil, "--once", "--src", l.src, l.bin)
	if r.code != 0 {
		t.Fatalf("install: %v", r)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temp file kept: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("unrelated dot file removed: %v", err)
	}
	if !strings.Contains(r.stdout, "removed stale temp file "+stale) {
		t.Errorf("removal not logged:\n%v", r)
	}
}

func TestWrongModeIsRepaired(t *testing.T) {
	l := newLayout(t, fakePlugin("v1"))
	if r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf); r.code != 0 {
		t.Fatalf("first install: %v", r)
	}
	if err := os.Chmod(l.installedBin(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(l.installedConf(), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf); r.code != 0 {
		t.Fatalf("reinstall: %v", r)
	}
	assertInstalled(t, l.installedBin(), fakePlugin("v1"), 0o755)
	assertInstalled(t, l.installedConf(), readRepoFile(t, "plugin/"+confName), 0o644)
}

// A new binary that cannot answer VERSION must not replace a working one.
func TestBinaryFailingVersionIsRefused(t *testing.T) {
	for name, bad := range map[string][]byte{"exits non-zero": brokenPlugin, "prints no version object": chattyPlugin} {
		t.Run(name, func(t *testing.T) {
			l := newLayout(t, fakePlugin("v1"))
			if r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf); r.code != 0 {
				t.Fatalf("first install: %v", r)
			}
			l.setSource(t, bad)
			r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf)
			if r.code == 0 {
				t.Fatalf("a binary that fails VERSION was accepted: %v", r)
			}
			if !strings.Contains(r.stderr, "does not answer CNI_COMMAND=VERSION") {
				t.Errorf("error does not say why:\n%v", r)
			}
			assertInstalled(t, l.installedBin(), fakePlugin("v1"), 0o755)
			assertNoTempFiles(t, l.bin, l.conf)
		})
	}
}

func TestFirstInstallOfBrokenBinaryFails(t *testing.T) {
	l := newLayout(t, brokenPlugin)
	r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf)
	if r.code == 0 || !strings.Contains(r.stderr, "broken build") {
		t.Fatalf("want a failure that shows the binary's output: %v", r)
	}
	if _, err := os.Stat(l.installedBin()); !os.IsNotExist(err) {
		t.Errorf("broken binary installed: %v", err)
	}
	assertNoTempFiles(t, l.bin, l.conf)
}

func TestMissingSource(t *testing.T) {
	t.Run("no source dir", func(t *testing.T) {
		l := newLayout(t, fakePlugin("v1"))
		missing := filepath.Join(t.TempDir(), "nope")
		r := runInstaller(t, nil, "--once", "--src", missing, l.bin, l.conf)
		if r.code != 1 || !strings.Contains(r.stderr, "source directory "+missing+" does not exist") {
			t.Fatalf("want exit 1 naming the source dir: %v", r)
		}
	})
	t.Run("no binary", func(t *testing.T) {
		l := newLayout(t, fakePlugin("v1"))
		if err := os.Remove(filepath.Join(l.src, binName)); err != nil {
			t.Fatal(err)
		}
		r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf)
		if r.code != 1 || !strings.Contains(r.stderr, "source binary") {
			t.Fatalf("want exit 1 naming the binary: %v", r)
		}
	})
	t.Run("no conf", func(t *testing.T) {
		l := newLayout(t, fakePlugin("v1"))
		if err := os.Remove(filepath.Join(l.src, confName)); err != nil {
			t.Fatal(err)
		}
		r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf)
		if r.code != 1 || !strings.Contains(r.stderr, "source conf") {
			t.Fatalf("want exit 1 naming the conf: %v", r)
		}
		if _, err := os.Stat(l.installedBin()); !os.IsNotExist(err) {
			t.Errorf("binary installed although the source is incomplete: %v", err)
		}
	})
}

// The tests run as root, so permission bits stop nothing; these targets fail
// for root too.
func TestUnwritableTarget(t *testing.T) {
	t.Run("path under a regular file", func(t *testing.T) {
		l := newLayout(t, fakePlugin("v1"))
		file := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(file, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(file, "bin")
		r := runInstaller(t, nil, "--once", "--src", l.src, target)
		if r.code != 1 || !strings.Contains(r.stderr, "target directory "+target+" is missing or not writable") {
			t.Fatalf("want exit 1 naming the target: %v", r)
		}
	})
	t.Run("read-only mount", func(t *testing.T) {
		l := newLayout(t, fakePlugin("v1"))
		ro := filepath.Join(t.TempDir(), "ro")
		if err := os.Mkdir(ro, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount("tmpfs", ro, "tmpfs", syscall.MS_RDONLY, "size=1m"); err != nil {
			t.Skipf("cannot mount a read-only tmpfs here (%v); the path-under-a-file case still covers an unwritable target", err)
		}
		t.Cleanup(func() { _ = syscall.Unmount(ro, syscall.MNT_DETACH) })
		for _, args := range [][]string{{ro}, {l.bin, ro}} {
			r := runInstaller(t, nil, append([]string{"--once", "--src", l.src}, args...)...)
			if r.code != 1 || !strings.Contains(r.stderr, ro) {
				t.Errorf("install into read-only %v: want exit 1 naming it: %v", args, r)
			}
		}
	})
}

func TestUsageErrors(t *testing.T) {
	l := newLayout(t, fakePlugin("v1"))
	for _, args := range [][]string{
		{},
		{"--once"},
		{"--once", "a", "b", "c"},
		{"--bogus", l.bin},
		{"--src"},
		{"--interval", "0", l.bin},
		{"--interval", "soon", l.bin},
	} {
		if r := runInstaller(t, nil, args...); r.code != 2 || !strings.Contains(r.stderr, "install-plugin") {
			t.Errorf("args %q: want usage error (exit 2): %v", args, r)
		}
	}
}

// --help prints every flag and exits 0 (a usage error exits 2).
func TestHelpListsEveryFlag(t *testing.T) {
	r := runInstaller(t, nil, "--help")
	if r.code != 0 {
		t.Fatalf("--help: %v", r)
	}
	for _, flag := range []string{"--once", "--check", "--src", "--interval", "--help", "CNI_BIN_DIR", "CNI_CONF_DIR"} {
		if !strings.Contains(r.stdout, flag) {
			t.Errorf("--help does not mention %s:\n%s", flag, r.stdout)
		}
	}
}

func TestCheck(t *testing.T) {
	l := newLayout(t, fakePlugin("v1"))
	check := func() result { return runInstaller(t, nil, "--check", "--src", l.src, l.bin, l.conf) }
	if r := check(); r.code == 0 {
		t.Fatalf("check passed before anything was installed: %v", r)
	}
	if _, err := os.Stat(l.installedBin()); !os.IsNotExist(err) {
		t.Fatalf("--check installed something: %v", err)
	}
	if r := runInstaller(t, nil, "--once", "--src", l.src, l.bin, l.conf); r.code != 0 {
		t.Fatalf("install: %v", r)
	}
	if r := check(); r.code != 0 {
		t.Fatalf("check failed after install: %v", r)
	}
	l.setSource(t, fakePlugin("v2"))
	if r := check(); r.code == 0 || !strings.Contains(r.stderr, "differs") {
		t.Errorf("check passed with an outdated binary: %v", r)
	}
	// Same bytes on both sides, but the binary cannot answer VERSION.
	l.setSource(t, brokenPlugin)
	if err := os.WriteFile(l.installedBin(), brokenPlugin, 0o755); err != nil {
		t.Fatal(err)
	}
	if r := check(); r.code == 0 || !strings.Contains(r.stderr, "does not answer CNI_COMMAND=VERSION") {
		t.Errorf("check passed with a binary that fails VERSION: %v", r)
	}
}

// daemon is install-plugin running without --once.
type daemon struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
	err    error
}

func startDaemon(t *testing.T, env []string, args ...string) *daemon {
	t.Helper()
	cmd, path := installerCommand(t, context.Background(), args...)
	d := &daemon{cmd: cmd, out: &syncBuffer{}, exited: make(chan struct{})}
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	d.cmd.Env = append(append(os.Environ(), env...), path)
	// Its own process group, so cleanup also ends a background sleep that a
	// broken script left behind; WaitDelay stops such a sleep, which holds the
	// output pipe, from blocking Wait.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	d.cmd.WaitDelay = 2 * time.Second
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.exited
	})
	return d
}

func (d *daemon) waitLog(t *testing.T, want string) {
	t.Helper()
	if !waitFor(10*time.Second, func() bool { return strings.Contains(d.out.String(), want) }) {
		t.Fatalf("no %q in the log within 10s:\n%s", want, d.out)
	}
}

// stop sends SIGTERM and returns the exit code and how long the exit took.
func (d *daemon) stop(t *testing.T) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("still running 10s after SIGTERM:\n%s", d.out)
	}
	return d.cmd.ProcessState.ExitCode(), time.Since(start)
}

func TestDaemonReinstallsWhatGoesMissingOrBreaks(t *testing.T) {
	l := newLayout(t, fakePlugin("v1"))
	d := startDaemon(t, nil, "--src", l.src, "--interval", "1", l.bin, l.conf)
	d.waitLog(t, "re-checking every 1s")
	assertInstalled(t, l.installedBin(), fakePlugin("v1"), 0o755)

	if err := os.Remove(l.installedBin()); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool { return fileIs(l.installedBin(), fakePlugin("v1")) }) {
		t.Fatalf("deleted binary not reinstalled:\n%s", d.out)
	}
	if err := os.Remove(l.installedConf()); err != nil {
		t.Fatal(err)
	}
	conf := readRepoFile(t, "plugin/"+confName)
	if !waitFor(10*time.Second, func() bool { return fileIs(l.installedConf(), conf) }) {
		t.Fatalf("deleted conf not reinstalled:\n%s", d.out)
	}
	// A binary that no longer answers VERSION is put back.
	if err := os.WriteFile(l.installedBin(), brokenPlugin, 0o755); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool { return fileIs(l.installedBin(), fakePlugin("v1")) }) {
		t.Fatalf("broken binary not replaced:\n%s", d.out)
	}
	// A new image's binary (the source changed) is picked up too.
	l.setSource(t, fakePlugin("v2"))
	if !waitFor(10*time.Second, func() bool { return fileIs(l.installedBin(), fakePlugin("v2")) }) {
		t.Fatalf("new source not installed:\n%s", d.out)
	}
	assertInstalled(t, l.installedBin(), fakePlugin("v2"), 0o755)

	code, _ := d.stop(t)
	if code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0:\n%s", code, d.out)
	}
}

// A DaemonSet's surge: the new pod's installer starts while the old pod's
// still runs, on the same directories. The file written last (the new
// installer's) must stay, so the new pod's --check holds and the rollout
// can finish; an installer that put its own back on each re-check made the
// two take turns for as long as both ran (a rollout in test/k8s waited on
// the new pod's readiness for 180 s). A conf or binary a person wrote is
// left the same way.
func TestDaemonLeavesTheFilesOfANewerInstaller(t *testing.T) {
	old := newLayout(t, fakePlugin("old"))
	new := newLayout(t, fakePlugin("new"))
	new.bin, new.conf = old.bin, old.conf // one node
	a := startDaemon(t, nil, "--src", old.src, "--interval", "1", old.bin, old.conf)
	a.waitLog(t, "re-checking every 1s")
	b := startDaemon(t, nil, "--src", new.src, "--interval", "1", new.bin, new.conf)
	b.waitLog(t, "re-checking every 1s")
	// Several rounds of both: the new binary stays in place throughout.
	for end := time.Now().Add(3500 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if !fileIs(old.installedBin(), fakePlugin("new")) {
			t.Fatalf("the old installer put its binary back over the newer one's:\nold:\n%s\nnew:\n%s", a.out, b.out)
		}
	}
	if r := runInstaller(t, nil, "--check", "--src", new.src, new.bin, new.conf); r.code != 0 {
		t.Errorf("the new pod's --check fails: %v", r)
	}
	if r := runInstaller(t, nil, "--check", "--src", old.src, old.bin, old.conf); r.code == 0 {
		t.Errorf("the old pod's --check passes with the new binary installed")
	}
	a.waitLog(t, "left "+old.installedBin()+" as another installer")
	if n := strings.Count(a.out.String(), "left "+old.installedBin()); n != 1 {
		t.Errorf("the old installer said %d times that it leaves the binary, want once:\n%s", n, a.out)
	}
	// A conf a person edited is left too, and said so.
	if err := os.WriteFile(old.installedConf(), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	b.waitLog(t, "left "+old.installedConf()+" as another installer (or a person) put it")
	if !fileIs(old.installedConf(), []byte("{}")) {
		t.Errorf("the edited conf was replaced")
	}
	// When the old pod is gone, nothing changes; a file that goes missing
	// is the newer installer's to put back.
	a.stop(t)
	if err := os.Remove(old.installedBin()); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool { return fileIs(old.installedBin(), fakePlugin("new")) }) {
		t.Fatalf("deleted binary not reinstalled by the remaining installer:\n%s", b.out)
	}
}

// The loop sleeps in the background and waits, so SIGTERM ends it at once
// rather than after the interval.
func TestDaemonExitsPromptlyOnSIGTERM(t *testing.T) {
	l := newLayout(t, fakePlugin("v1"))
	d := startDaemon(t, []string{"INSTALL_PLUGIN_INTERVAL=3600"}, "--src", l.src, l.bin)
	d.waitLog(t, "re-checking every 3600s")
	time.Sleep(200 * time.Millisecond) // let it reach the wait
	code, took := d.stop(t)
	if code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0:\n%s", code, d.out)
	}
	if took > 5*time.Second { // far below the 3600 s interval, with room for a loaded machine
		t.Errorf("took %v to exit after SIGTERM", took)
	}
	if !strings.Contains(d.out.String(), "received SIGTERM, exiting") {
		t.Errorf("exit not logged:\n%s", d.out)
	}
}

func TestDaemonFailsAtStartOnBadSource(t *testing.T) {
	l := newLayout(t, brokenPlugin)
	d := startDaemon(t, nil, "--src", l.src, "--interval", "1", l.bin)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("daemon with a broken binary kept running:\n%s", d.out)
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("exit code %d, want 1:\n%s", code, d.out)
	}
}

func assertInstalled(t *testing.T, path string, want []byte, mode os.FileMode) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("installed file: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s has the wrong content:\n%s", path, got)
	}
	if m := stat(t, path).Mode(); m.Perm() != mode || !m.IsRegular() {
		t.Errorf("%s has mode %v, want %v", path, m, mode)
	}
}

func assertNoTempFiles(t *testing.T, dirs ...string) {
	t.Helper()
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				t.Errorf("temp file left behind: %s", filepath.Join(dir, e.Name()))
			}
		}
	}
}

func stat(t *testing.T, path string) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func inode(fi os.FileInfo) uint64 { return fi.Sys().(*syscall.Stat_t).Ino }
