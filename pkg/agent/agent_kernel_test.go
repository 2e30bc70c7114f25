package agent

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/plugin"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// node is a kerneltest world with the agent running in it, its device
// plugin registered with a test kubelet, and a ListAndWatch stream open:
// every list the kubelet would receive arrives on lists, stamped.
type node struct {
	t        *testing.T
	env      *kerneltest.Env
	reserved string
	conf     []byte
	lists    chan stamped
	last     devs
	agent    *Agent
	kubelet  *fakeKubelet
	dir      string // the device-plugin directory
	// stop ends the agent and returns what Run returned.
	stop func() error
}

type stamped struct {
	at   time.Time
	devs devs
}

func startNode(t *testing.T, judge func(string) error) *node {
	env := kerneltest.New(t)
	n := &node{t: t, env: env, reserved: filepath.Join(t.TempDir(), "reserved"), lists: make(chan stamped, 64)}
	env.SetNode(map[string]any{"reservedInterfacesFile": n.reserved})
	n.conf = env.Conf(nil)
	conf, err := config.NodeConf(env.NodeFile)
	if err != nil {
		t.Fatal(err)
	}
	return n.run(conf, judge)
}

func (n *node) run(conf *config.NetConf, judge func(string) error) *node {
	t := n.t
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	dir := t.TempDir()
	kubelet := startKubelet(t, dir)
	dp := NewDevicePlugin("prow/sriov", log)
	// An hour: only events can drive what the test sees.
	a := &Agent{Conf: conf, HostNetns: n.env.Host.Path(), JudgeNetns: judge, Resync: time.Hour, Log: log, Publish: dp.Update}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	srv := &Server{Dir: dir, Socket: "sriov-passthrough.sock", Plugin: dp, Log: log}
	go func() { done <- Run(ctx, a, srv) }()
	var once sync.Once
	var runErr error
	n.stop = func() error { once.Do(func() { cancel(); runErr = <-done }); return runErr }
	t.Cleanup(func() { n.stop() })
	n.agent, n.kubelet, n.dir = a, kubelet, dir
	reg := kubelet.registered(t)
	c := dialPlugin(t, dir, reg.Endpoint)
	stream, err := c.ListAndWatch(ctx, &pluginapi.Empty{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			d := devs{}
			for _, dev := range r.Devices {
				d[dev.ID] = dev.Health
			}
			n.lists <- stamped{time.Now(), d}
		}
	}()
	return n
}

// await waits for the kubelet's view to satisfy ok and returns how long
// after since that list arrived.
func (n *node) await(what string, since time.Time, ok func(devs) bool) time.Duration {
	n.t.Helper()
	if ok(n.last) {
		n.t.Fatalf("%s: already true before the change: %v", what, n.last)
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l := <-n.lists:
			n.last = l.devs
			if ok(l.devs) {
				took := l.at.Sub(since)
				n.t.Logf("%s: ListAndWatch update %v after its cause", what, took)
				return took
			}
		case <-timeout:
			n.t.Fatalf("%s: not seen in 10s; last list %v", what, n.last)
		}
	}
}

// withinASecond is the promise for ListAndWatch: the kubelet hears
// of a change within a second of its cause.
func withinASecond(t *testing.T, what string, took time.Duration) {
	t.Helper()
	if took > time.Second {
		t.Errorf("%s took %v to reach ListAndWatch, want at most 1s", what, took)
	}
}

func (n *node) cni(cmd string, pod ns.NetNS, cid string) error {
	n.t.Helper()
	var out, logs bytes.Buffer
	p := &plugin.Plugin{NodeConfigFile: n.env.NodeFile, LockTimeout: 10 * time.Second, SettleTimeout: 200 * time.Millisecond,
		Stdout: &out, Stderr: &logs}
	f := map[string]func(*skel.CmdArgs) error{"ADD": p.Add, "DEL": p.Del}[cmd]
	n.t.Setenv("CNI_COMMAND", cmd)
	args := &skel.CmdArgs{ContainerID: cid, IfName: "net1", Netns: pod.Path(), StdinData: n.conf,
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=ci;K8S_POD_NAME=job-" + cid}
	err := n.env.Host.Do(func(ns.NetNS) error { return f(args) })
	n.t.Logf("%s %s: err=%v\n%s", cmd, cid, err, logs.String())
	return err
}

// setUplink gives a link a global address (documentation range), or takes
// it away again.
func setUplink(t *testing.T, host ns.NetNS, name string, on bool) {
	t.Helper()
	err := host.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr("192.0.2.10/24")
		if on {
			return netlink.AddrAdd(l, addr)
		}
		return netlink.AddrDel(l, addr)
	})
	if err != nil {
		t.Fatalf("uplink %s %v: %v", name, on, err)
	}
}

// replaceFile writes path the way admins do: a temp file renamed over it.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestHealthFollowsTheKernelWithinASecond(t *testing.T) {
	n := startNode(t, CanSeeNetns)
	start := time.Now()
	pfA, pfB := n.env.AddPF("ens1", 2), n.env.AddPF("ens2", 1)
	n.env.AddPlainNetdev("0000:00:1f.6", "eno1")
	// Discovery and links were made after the agent started: the link
	// events alone must bring them in.
	n.await("PFs appear", start, func(d devs) bool {
		return d[pfA.PCI] == pluginapi.Healthy && d[pfB.PCI] == pluginapi.Healthy && len(d) == 2
	})

	start = time.Now()
	replaceFile(t, n.reserved, "ens2\n")
	withinASecond(t, "reserving ens2", n.await("ens2 reserved (file replaced by rename)", start, func(d devs) bool {
		_, ok := d[pfB.PCI]
		return !ok
	}))
	start = time.Now()
	replaceFile(t, n.reserved, "# nothing\n")
	withinASecond(t, "unreserving ens2", n.await("ens2 back", start, func(d devs) bool { return d[pfB.PCI] == pluginapi.Healthy }))

	// ens2 turns into an uplink: a global address, which no link event
	// announces.
	start = time.Now()
	setUplink(t, n.env.Host, "ens2", true)
	withinASecond(t, "ens2 becoming an uplink", n.await("ens2 an uplink (global address)", start, func(d devs) bool {
		_, ok := d[pfB.PCI]
		return !ok
	}))
	start = time.Now()
	setUplink(t, n.env.Host, "ens2", false)
	withinASecond(t, "ens2 no longer an uplink", n.await("ens2 back from uplink", start, func(d devs) bool { return d[pfB.PCI] == pluginapi.Healthy }))

	// ens2 leaves the host netns behind the plugin's back (no record):
	// missing, Unhealthy, until it is back.
	elsewhere := n.env.NewPod()
	start = time.Now()
	kerneltest.MoveLink(t, n.env.Host, elsewhere, "ens2")
	withinASecond(t, "ens2 missing", n.await("ens2 missing", start, func(d devs) bool { return d[pfB.PCI] == pluginapi.Unhealthy }))
	start = time.Now()
	kerneltest.MoveLink(t, elsewhere, n.env.Host, "ens2")
	withinASecond(t, "ens2 back", n.await("ens2 back from elsewhere", start, func(d devs) bool { return d[pfB.PCI] == pluginapi.Healthy }))

	// A job takes ens1: held, still Healthy (the kubelet counts it as
	// allocated). Its workload moves the PF on into a nested netns the
	// pod's DEL cannot see, so the release stays pending: Unhealthy.
	pod, nested := n.env.NewPod(), n.env.NewPod()
	if err := n.cni("ADD", pod, "c1"); err != nil {
		t.Fatal(err)
	}
	kerneltest.MoveLink(t, pod, nested, "net1")
	start = time.Now()
	if err := n.cni("DEL", pod, "c1"); err != nil {
		t.Fatal(err)
	}
	rec, err := state.Store{Dir: n.env.StateDir}.Get(state.Key("c1", "net1"))
	if err != nil || rec == nil || rec.Phase != state.Releasing {
		t.Fatalf("after DEL with the PF in a nested netns: record %+v, %v", rec, err)
	}
	withinASecond(t, "pending release", n.await("ens1 release pending", start, func(d devs) bool { return d[pfA.PCI] == pluginapi.Unhealthy }))

	// The PF comes home (as the kernel hands a dying netns's physical
	// devices back to init_net): the agent finishes the release through
	// the release engine (pkg/release, DEL's path) and reports it Healthy.
	start = time.Now()
	kerneltest.MoveLink(t, nested, n.env.Host, "net1")
	took := n.await("ens1 home", start, func(d devs) bool { return d[pfA.PCI] == pluginapi.Healthy })
	t.Logf("MEASURED: PF back on the host -> Healthy in ListAndWatch: %v", took)
	withinASecond(t, "a PF coming home", took)
	links := kerneltest.Links(t, n.env.Host)
	for _, name := range n.env.AllNames() {
		if _, ok := links[name]; !ok {
			t.Errorf("%s not on the host under its name after the agent's release", name)
		}
	}
	if recs, _ := filepath.Glob(filepath.Join(n.env.StateDir, "*.json")); len(recs) != 0 {
		t.Errorf("records left: %v", recs)
	}
}

// Stopping, the agent stops looking first, then serving, and removes its
// socket last: when Run returns, nothing serves the socket and it is
// gone, so the kubelet dials nothing and a process exiting right after
// leaves nothing behind.
func TestStopsInOrder(t *testing.T) {
	n := startNode(t, CanSeeNetns)
	pf := n.env.AddPF("ens1", 1)
	n.await("PF appears", time.Now(), func(d devs) bool { return d[pf.PCI] == pluginapi.Healthy })
	if n.agent.LastTurn().IsZero() {
		t.Error("the loop ran without marking its turns: liveness would fail")
	}
	if err := n.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(n.dir, "sriov-passthrough*.sock"))
	if len(left) != 0 {
		t.Errorf("sockets left when Run returned: %v", left)
	}
	// The kubelet saw the stream end (as the server stopped): it drops
	// the plugin and marks the device Unhealthy.
	deadline := time.Now().Add(10 * time.Second)
	for ok, _, _ := n.kubelet.healthy(pf.PCI); ok; ok, _, _ = n.kubelet.healthy(pf.PCI) {
		if time.Now().After(deadline) {
			t.Fatal("the kubelet is still connected to the stopped plugin")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// While a release waits for a device, only that device's return asks for
// repair (a release attempt under the node lock); the links every pod
// makes (veths) ask only for a look. 50 unrelated veths while a record is
// pending cost at most a couple of repairs, and the device coming home
// still finishes the release at once.
func TestRepairsOnlyForTheDevicesAReleaseWaitsFor(t *testing.T) {
	n := startNode(t, CanSeeNetns)
	pf := n.env.AddPF("ens1", 1)
	n.await("PF appears", time.Now(), func(d devs) bool { return d[pf.PCI] == pluginapi.Healthy })
	pod, nested := n.env.NewPod(), n.env.NewPod()
	if err := n.cni("ADD", pod, "c1"); err != nil {
		t.Fatal(err)
	}
	kerneltest.MoveLink(t, pod, nested, "net1")
	if err := n.cni("DEL", pod, "c1"); err != nil {
		t.Fatal(err)
	}
	n.await("release pending", time.Now(), func(d devs) bool { return d[pf.PCI] == pluginapi.Unhealthy })

	before := n.agent.repairs.Load()
	for i := range 50 {
		err := n.env.Host.Do(func(ns.NetNS) error {
			return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("veth%d", i)}, PeerName: fmt.Sprintf("veth%dp", i)})
		})
		if err != nil {
			t.Fatal(err)
		}
		// Paced like pods starting, so that an agent repairing on every
		// new link has the time to do so; the count is what is checked.
		time.Sleep(60 * time.Millisecond)
	}
	if got := n.agent.repairs.Load() - before; got > 2 {
		t.Errorf("%d repairs while 50 unrelated veths appeared; want at most 2", got)
	}

	before = n.agent.repairs.Load()
	kerneltest.MoveLink(t, nested, n.env.Host, "net1")
	n.await("PF home and released", time.Now(), func(d devs) bool { return d[pf.PCI] == pluginapi.Healthy })
	if n.agent.repairs.Load() == before {
		t.Error("the PF came home and was released without a repair?")
	}
	if recs, _ := filepath.Glob(filepath.Join(n.env.StateDir, "*.json")); len(recs) != 0 {
		t.Errorf("records left: %v", recs)
	}
}

// An address or route event (a PF turning into an uplink, or back) changes
// no PF's functions or netdevs: the look it asks for reuses the last sysfs
// read, which on a node of 8 PFs x 256 VFs is most of a look's CPU. A link
// event reads sysfs again.
func TestUplinkSignsReuseTheLastSysfsRead(t *testing.T) {
	n := startNode(t, CanSeeNetns)
	start := time.Now()
	pf := n.env.AddPF("ens1", 2)
	n.await("PF appears", start, func(d devs) bool { return d[pf.PCI] == pluginapi.Healthy })
	before := n.quietReads()

	start = time.Now()
	setUplink(t, n.env.Host, "ens1", true)
	n.await("ens1 an uplink", start, func(d devs) bool { _, ok := d[pf.PCI]; return !ok })
	start = time.Now()
	setUplink(t, n.env.Host, "ens1", false)
	n.await("ens1 back from uplink", start, func(d devs) bool { return d[pf.PCI] == pluginapi.Healthy })
	if after := n.quietReads(); after != before {
		t.Errorf("the address events read sysfs %d more times, want none", after-before)
	}

	n.env.AddPlainNetdev("0000:00:1f.6", "eno1")
	deadline := time.Now().Add(10 * time.Second)
	for n.agent.pfReads.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("a new host link did not have the agent read sysfs again within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// quietReads waits until the agent's count of sysfs reads has not moved
// for half a second (the looks of earlier events are done) and returns it.
func (n *node) quietReads() int64 {
	n.t.Helper()
	last, since := n.agent.pfReads.Load(), time.Now()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cur := n.agent.pfReads.Load(); cur != last {
			last, since = cur, time.Now()
		} else if time.Since(since) > 500*time.Millisecond {
			return last
		}
	}
	n.t.Fatal("the agent kept reading sysfs for 10s")
	return 0
}
