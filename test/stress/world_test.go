//go:build stress

// Package stress proves that no sequence of crashes, races and teardowns
// loses a device or leaves it misnamed. It drives the plugin binary, built
// with -tags failpoints, as separate processes against ifb links and a
// fake sysfs tree (test/kerneltest), and checks one invariant: every
// device is either at home (host netns, original name, no tag, no record
// claiming it) or claimed by exactly one record that a later DEL, ADD or
// GC releases.
//
// The test world differs from a node in one way that matters, and the
// harness makes up for it. ifb links are virtual: the kernel destroys
// them with the netns they are in, where a physical netdev goes back to
// init_net (renamed devN if its name is taken there). So the harness plays
// the kernel's part wherever a netns holding devices dies:
//
//   - a pod netns that is "deleted" is unmounted at once (its path goes
//     away, as when the runtime removes it), but the harness keeps a handle
//     until every plugin process that could still hold it has exited; then
//     it moves each link to the test's host netns (keeping its name, or
//     devN on a clash), as the kernel would on the last reference, and
//     closes the handle;
//   - a plugin process that is killed may hold a private transit netns
//     with devices in it. The harness stops the process first (SIGSTOP,
//     the failpoint's notify mode, see pkg/failpoint), opens every netns
//     the process holds through /proc/<pid>/fd and /proc/<pid>/task/*/ns,
//     then sends SIGKILL and, once the process is gone, gives the devices
//     in those namespaces back the same way.
//
// The real kernel behaviour (physical devices returning to init_net) is
// exercised on emulated igb NICs in the VM suite (test/e2e, chaos_test.go).
package stress

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/failpoint"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

var (
	long     = flag.Bool("stress.long", false, "run the long forms: every failpoint hit and recovery path, longer races")
	raceFor  = flag.Duration("stress.race", 0, "how long each race test runs (default 6s short, 60s long)")
	seedFlag = flag.Int64("stress.seed", 0, "seed for the race tests (0: from the clock; printed either way)")
)

// pluginBin is the plugin built with -tags failpoints.
var pluginBin string

// Totals over the whole run, printed as the summary line.
var (
	operations, kills, teardowns atomic.Int64
	devicesLost, devicesMisnamed atomic.Int64
)

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "sriovpt-stress-")
	if err != nil {
		panic(err)
	}
	pluginBin = filepath.Join(dir, "sriov-passthrough-cni")
	cmd := exec.Command("go", "build", "-tags", "failpoints", "-o", pluginBin, "github.com/kubevirt/sriov-passthrough-cni/cmd/sriov-passthrough-cni")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build plugin with failpoints: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	fmt.Printf("stress: operations=%d kills=%d teardowns=%d devices_lost=%d devices_misnamed=%d\n",
		operations.Load(), kills.Load(), teardowns.Load(), devicesLost.Load(), devicesMisnamed.Load())
	os.Exit(code)
}

// device is one PF or VF netdev of the world.
type device struct {
	pci, name, mac string
}

// world is one test's node: the kerneltest env, the pods, and the harness
// state that lets it play the kernel's part.
type world struct {
	*kerneltest.Env
	t       testing.TB
	devices []device
	conf    []byte
	cniPath string
	logFile string

	// mu is held while the harness changes which netns holds what
	// (refunds, teardowns) and while it checks the invariant, so a check
	// never sees a device in flight between harness-owned namespaces.
	mu sync.Mutex
	// pods by netns path, live or deleted-but-still-referenced.
	pods map[string]*pod
	// running is the set of plugin processes now running.
	running map[*proc]bool
	// disturbed attachments had a device moved away by the workload.
	disturbed map[string]bool
}

type pod struct {
	ns      ns.NetNS
	path    string
	id      netdev.ID
	deleted bool
	closed  bool
}

func newWorld(t testing.TB) *world {
	e := kerneltest.New(t)
	dir := t.TempDir()
	w := &world{Env: e, t: t, pods: map[string]*pod{}, running: map[*proc]bool{}, disturbed: map[string]bool{},
		cniPath: filepath.Join(dir, "cni-bin"), logFile: filepath.Join(dir, "plugin.log")}
	if err := os.MkdirAll(w.cniPath, 0o755); err != nil {
		t.Fatal(err)
	}
	e.SetNode(map[string]any{"logFile": w.logFile, "logLevel": "debug"})
	w.conf = e.Conf(nil)
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := os.ReadFile(w.logFile)
			if len(logs) > 64<<10 {
				logs = logs[len(logs)-64<<10:]
			}
			t.Logf("plugin log (tail):\n%s", logs)
		}
	})
	return w
}

// addPF makes a PF with n VFs and remembers its devices.
func (w *world) addPF(name string, n int) kerneltest.PF {
	pf := w.AddPF(name, n)
	w.devices = append(w.devices, device{pci: pf.PCI, name: pf.Name})
	for _, vf := range pf.VFs {
		if vf.Name != "" {
			w.devices = append(w.devices, device{pci: vf.PCI, name: vf.Name})
		}
	}
	return pf
}

// newPod makes a pod netns.
func (w *world) newPod() *pod {
	w.t.Helper()
	n, err := kerneltest.CreateNS()
	if err != nil {
		w.t.Fatalf("create pod netns: %v", err)
	}
	id, err := netdev.Inode(n.Fd())
	if err != nil {
		w.t.Fatal(err)
	}
	p := &pod{ns: n, path: n.Path(), id: id}
	w.mu.Lock()
	w.pods[p.path] = p
	w.mu.Unlock()
	w.t.Cleanup(func() { w.dropPod(p) })
	return p
}

// deletePod makes a pod's netns go away as a force-deleted pod's does. The
// path disappears at once; the namespace itself dies when the last process
// holding it (a plugin run that opened it before) exits, and only then
// does the kernel hand its physical devices back. The harness does that
// part: it waits for the processes running now, then refunds.
func (w *world) deletePod(p *pod) {
	w.mu.Lock()
	if p.deleted {
		w.mu.Unlock()
		return
	}
	p.deleted = true
	// Lazily: the harness's own handle is a file on the mount.
	if err := unix.Unmount(p.path, unix.MNT_DETACH); err != nil {
		w.t.Errorf("unmount pod netns %s: %v", p.path, err)
	}
	if err := os.Remove(p.path); err != nil {
		w.t.Errorf("remove pod netns path %s: %v", p.path, err)
	}
	var holders []*proc
	for pr := range w.running {
		holders = append(holders, pr)
	}
	w.mu.Unlock()
	teardowns.Add(1)
	for _, pr := range holders {
		<-pr.done
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.refund(p.ns, "pod "+p.path)
	p.closed = true
	_ = p.ns.Close()
}

func (w *world) dropPod(p *pod) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !p.closed {
		p.closed = true
		_ = p.ns.Close()
		if !p.deleted {
			if err := kerneltest.RemoveNS(p.ns); err != nil {
				w.t.Errorf("remove pod netns: %v", err)
			}
		}
	}
	delete(w.pods, p.path)
}

// refund moves every link in n to the host netns, as the kernel does with
// the physical devices of a netns that dies: the name is kept unless the
// host has it already, then the device becomes devN. Callers hold w.mu.
func (w *world) refund(n ns.NetNS, what string) {
	err := n.Do(func(ns.NetNS) error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Attrs().Name == "lo" {
				continue
			}
			if err := w.refundLink(l); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		w.t.Errorf("give back the devices of %s: %v", what, err)
	}
}

// refundLink runs with the thread in the dying netns.
func (w *world) refundLink(l netlink.Link) error {
	for try := 0; ; try++ {
		hostNames := w.hostNames()
		if hostNames[l.Attrs().Name] {
			name := ""
			for i := 0; name == "" || hostNames[name]; i++ {
				name = fmt.Sprintf("dev%d", i)
			}
			_ = netlink.LinkSetDown(l)
			if err := netlink.LinkSetName(l, name); err != nil {
				return fmt.Errorf("rename %s to %s: %w", l.Attrs().Name, name, err)
			}
			l.Attrs().Name = name
		}
		err := netlink.LinkSetNsFd(l, int(w.Host.Fd()))
		if err == nil || !errors.Is(err, unix.EEXIST) || try > 20 {
			if err != nil {
				return fmt.Errorf("move %s to host: %w", l.Attrs().Name, err)
			}
			return nil
		}
		// A plugin process took the name meanwhile: pick again.
	}
}

func (w *world) hostNames() map[string]bool {
	out := map[string]bool{}
	h, err := netlink.NewHandleAt(netnsHandle(w.Host))
	if err != nil {
		w.t.Errorf("netlink handle in host: %v", err)
		return out
	}
	defer h.Close()
	links, _ := h.LinkList()
	for _, l := range links {
		out[l.Attrs().Name] = true
		for _, a := range l.Attrs().AltNames {
			out[a] = true
		}
	}
	return out
}

// attachment names one CNI attachment.
type attachment struct {
	cid, ifname string
	pod         *pod // nil: CNI_NETNS empty
}

// run is one plugin invocation: how it ended.
type run struct {
	cmd     string
	out     []byte
	err     error // nil: exit 0
	killed  bool
	hit     string // failpoint hit, "" if none
	trace   []string
	elapsed time.Duration
}

func (r run) String() string {
	return fmt.Sprintf("%s killed=%v hit=%q err=%v out=%s", r.cmd, r.killed, r.hit, r.err, bytes.TrimSpace(r.out))
}

// proc is a running plugin process.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// traceAll as opts.failpoint kills nothing and records every failpoint
// passed in run.trace.
const traceAll = "*trace*"

// opts tune one invocation.
type opts struct {
	failpoint string        // SRIOVPT_FAILPOINT
	killAfter time.Duration // > 0: kill -9 at a random moment, this long after start
	conf      []byte        // nil: the world's conf
	onStart   func()        // called once the process runs
}

// exec runs the plugin binary with the calling thread in the host netns, as
// the runtime runs it on a node, and kills it as asked.
func (w *world) exec(cmdName string, a attachment, o opts) run {
	w.t.Helper()
	conf := o.conf
	if conf == nil {
		conf = w.conf
	}
	netnsPath := ""
	if a.pod != nil {
		netnsPath = a.pod.path
	}
	cmd := exec.Command(pluginBin)
	cmd.Env = []string{
		"CNI_COMMAND=" + cmdName, "CNI_CONTAINERID=" + a.cid, "CNI_NETNS=" + netnsPath,
		"CNI_IFNAME=" + a.ifname, "CNI_PATH=" + w.cniPath,
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=stress;K8S_POD_NAME=pod-" + a.cid,
		"PATH=/usr/bin:/bin", w.NodeEnv(),
	}
	var notifyR, traceR *os.File
	var childEnds []*os.File
	pipe := func(env string) *os.File {
		r, wr, err := os.Pipe()
		if err != nil {
			w.t.Fatal(err)
		}
		cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d", env, 3+len(cmd.ExtraFiles)))
		cmd.ExtraFiles = append(cmd.ExtraFiles, wr)
		childEnds = append(childEnds, wr)
		return r
	}
	if o.failpoint == traceAll {
		traceR = pipe(failpoint.TraceEnv)
	} else if o.failpoint != "" {
		cmd.Env = append(cmd.Env, failpoint.Env+"="+o.failpoint)
		notifyR = pipe(failpoint.NotifyEnv)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(conf), &stdout, &stderr

	p := &proc{cmd: cmd, done: make(chan struct{})}
	start := time.Now()
	w.mu.Lock()
	err := w.Host.Do(func(ns.NetNS) error { return cmd.Start() })
	if err == nil {
		w.running[p] = true
	}
	w.mu.Unlock()
	if err != nil {
		w.t.Fatalf("start plugin: %v", err)
	}
	operations.Add(1)
	for _, f := range childEnds {
		f.Close()
	}
	traced := make(chan []string, 1)
	if traceR != nil {
		go func() {
			defer traceR.Close()
			var names []string
			sc := bufio.NewScanner(traceR)
			for sc.Scan() {
				names = append(names, sc.Text())
			}
			traced <- names
		}()
	}
	if o.onStart != nil {
		o.onStart()
	}

	hitCh := make(chan string, 1)
	if notifyR != nil {
		go func() {
			defer notifyR.Close()
			line, _ := bufio.NewReader(notifyR).ReadString('\n')
			hitCh <- strings.TrimSpace(line)
		}()
	}
	var timer <-chan time.Time
	if o.killAfter > 0 {
		timer = time.After(o.killAfter)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	res := run{cmd: cmdName}
	for done := false; !done; {
		select {
		case name := <-hitCh:
			hitCh = nil
			if name != "" {
				res.hit = name
				res.err = w.killCaptured(cmd, waited, cmdName)
				done = true
			}
		case <-timer:
			timer = nil
			if cmd.Process.Signal(syscall.SIGSTOP) == nil && waitStopped(cmd.Process.Pid) {
				res.err = w.killCaptured(cmd, waited, cmdName)
				done = true
			}
		case err := <-waited:
			res.err = err
			done = true
		}
	}
	res.elapsed = time.Since(start)
	if res.elapsed > time.Second && os.Getenv("STRESS_DEBUG") != "" {
		fmt.Fprintf(os.Stderr, "slow %s %s: %s killed=%v\n%s\n", cmdName, a.cid, res.elapsed, res.killed, stderr.String())
	}
	if st, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && st.Signaled() {
		res.killed = st.Signal() == syscall.SIGKILL
		if res.killed {
			kills.Add(1)
		}
	}
	w.mu.Lock()
	delete(w.running, p)
	w.mu.Unlock()
	close(p.done)
	if traceR != nil {
		res.trace = <-traced
	}
	res.out = stdout.Bytes()
	if res.err != nil && !res.killed {
		res.err = fmt.Errorf("%w: %s", res.err, bytes.TrimSpace(stdout.Bytes()))
	}
	_ = stderr
	return res
}

// killCaptured kills a stopped plugin process the way a runtime's kill -9
// would, and then does what the kernel does once it is gone: it destroys
// the private netns the process held and sends the physical devices in
// them home. w.mu is held throughout, so an invariant check never sees the
// devices in between.
func (w *world) killCaptured(cmd *exec.Cmd, waited <-chan error, what string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	waitStopped(cmd.Process.Pid)
	held := w.capture(cmd.Process.Pid)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	err := <-waited
	for _, n := range held {
		w.refund(n, "transit netns of killed "+what)
		n.Close()
	}
	return err
}

// waitStopped waits until pid is stopped; false if it exited instead.
func waitStopped(pid int) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		switch procState(pid) {
		case 'T', 't':
			return true
		case 'Z', 0:
			return false
		}
		time.Sleep(200 * time.Microsecond)
	}
	return false
}

func procState(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}

// capture opens the network namespaces pid holds (file descriptors and
// threads) other than the host and the pods.
func (w *world) capture(pid int) []ns.NetNS {
	known := map[uint64]bool{}
	if id, err := netdev.Inode(w.Host.Fd()); err == nil {
		known[id.Ino] = true
	}
	// Only namespaces still alive: the kernel reuses the inode number of
	// a destroyed netns for the next one, quite possibly a transit netns.
	for _, p := range w.pods { // w.mu is held
		if !p.closed {
			known[p.id.Ino] = true
		}
	}
	var paths []string
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	paths = append(paths, fds...)
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/ns/net", pid))
	paths = append(paths, tasks...)
	var out []ns.NetNS
	for _, path := range paths {
		target, err := os.Readlink(path)
		if err != nil || !strings.HasPrefix(target, "net:[") {
			continue
		}
		ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "net:["), "]"), 10, 64)
		if err != nil || known[ino] {
			continue
		}
		n, err := ns.GetNS(path)
		if err != nil {
			continue
		}
		known[ino] = true
		out = append(out, n)
	}
	return out
}

// gcConf is the world's conf with cni.dev/valid-attachments.
func (w *world) gcConf(valid ...attachment) []byte {
	var c map[string]any
	if err := json.Unmarshal(w.conf, &c); err != nil {
		w.t.Fatal(err)
	}
	list := []map[string]string{}
	for _, a := range valid {
		list = append(list, map[string]string{"containerID": a.cid, "ifname": a.ifname})
	}
	c["cni.dev/valid-attachments"] = list
	b, err := json.Marshal(c)
	if err != nil {
		w.t.Fatal(err)
	}
	return b
}

// confWith is the world's conf with fields changed.
func (w *world) confWith(fields map[string]any) []byte {
	var c map[string]any
	if err := json.Unmarshal(w.conf, &c); err != nil {
		w.t.Fatal(err)
	}
	for k, v := range fields {
		c[k] = v
	}
	b, err := json.Marshal(c)
	if err != nil {
		w.t.Fatal(err)
	}
	return b
}

func netnsHandle(n ns.NetNS) netns.NsHandle { return netns.NsHandle(n.Fd()) }

// sortedKeys is for stable messages.
func sortedKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
