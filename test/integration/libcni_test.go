// Package integration drives the built plugin binary through libcni, the
// code path multus and cnitool use, against real links in throwaway netns.
package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

var binDir string

func TestMain(m *testing.M) { os.Exit(kerneltest.RunWithBinaries(m, "sriovpt-integration-", &binDir)) }

type world struct {
	*kerneltest.Env
	t       *testing.T
	logFile string
}

// cni returns a fresh libcni client per call: CNIConfig sets up its exec
// lazily and is not safe to share between goroutines, and separate
// runtimes would not share one either.
func (w *world) cni() *libcni.CNIConfig { return libcni.NewCNIConfig([]string{binDir}, w.Exec()) }

// newWorld makes a test world whose plugin logs go to a file (the node
// configuration's logFile) that is shown only when the test fails.
func newWorld(t *testing.T) *world {
	e := kerneltest.New(t)
	w := &world{Env: e, t: t, logFile: filepath.Join(t.TempDir(), "plugin.log")}
	w.setNode(nil)
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := os.ReadFile(w.logFile)
			t.Logf("plugin log:\n%s", logs)
		}
	})
	return w
}

// setNode rewrites the node configuration: the world's, its log file, and
// fields.
func (w *world) setNode(fields map[string]any) {
	n := map[string]any{"logFile": w.logFile}
	for k, v := range fields {
		n[k] = v
	}
	w.SetNode(n)
}

// list wraps the plugin conf in a conflist, as multus and cnitool load it;
// a cniVersion among fields is the list's (1.1.0 if none).
func (w *world) list(fields map[string]any) *libcni.NetworkConfigList {
	w.t.Helper()
	var plugin map[string]any
	if err := json.Unmarshal(w.Conf(fields), &plugin); err != nil {
		w.t.Fatal(err)
	}
	version := "1.1.0"
	if v, ok := fields["cniVersion"].(string); ok {
		version = v
	}
	delete(plugin, "cniVersion")
	delete(plugin, "name")
	b, _ := json.Marshal(map[string]any{"cniVersion": version, "name": "sriov-passthrough-cni", "plugins": []any{plugin}})
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		w.t.Fatal(err)
	}
	return list
}

func rt(pod ns.NetNS, cid, ifname string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: cid, NetNS: pod.Path(), IfName: ifname,
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "kubevirt-prow"}, {"K8S_POD_NAME", "job-" + cid}},
	}
}

// inHost runs f with the calling thread in the host netns, so the plugin
// processes libcni starts inherit it.
func (w *world) inHost(f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return w.Host.Do(func(ns.NetNS) error { return f() })
}

func (w *world) add(list *libcni.NetworkConfigList, r *libcni.RuntimeConf) (*current.Result, error) {
	var res types.Result
	err := w.inHost(func() (err error) {
		res, err = w.cni().AddNetworkList(context.Background(), list, r)
		return err
	})
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

// pfOf is the PF's entry of an ADD result: the last interface, after the
// VFs, where multus v3.x looks for the attachment's interface.
func pfOf(res *current.Result) *current.Interface { return res.Interfaces[len(res.Interfaces)-1] }

func (w *world) del(list *libcni.NetworkConfigList, r *libcni.RuntimeConf) error {
	return w.inHost(func() error { return w.cni().DelNetworkList(context.Background(), list, r) })
}

func (w *world) hostNames() []string {
	var out []string
	for n := range kerneltest.Links(w.t, w.Host) {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func TestLifecycleThroughLibcni(t *testing.T) {
	w := newWorld(t)
	w.AddPF("ens1f0", 4)
	w.AddPF("ens2f0", 4)
	before := w.hostNames()
	list := w.list(nil)
	pod := w.NewPod()

	r1, err := w.add(list, rt(pod, "job1", "net1"))
	if err != nil {
		t.Fatalf("ADD net1: %v", err)
	}
	r2, err := w.add(list, rt(pod, "job1", "net2"))
	if err != nil {
		t.Fatalf("ADD net2: %v", err)
	}
	if pfOf(r1).PciID == pfOf(r2).PciID || len(r1.Interfaces) != 5 || len(r2.Interfaces) != 5 {
		t.Fatalf("net1 %+v net2 %+v", r1.Interfaces, r2.Interfaces)
	}
	if got := len(kerneltest.Links(t, pod)); got != 10 {
		t.Errorf("pod has %d links, want 10", got)
	}
	for _, ifname := range []string{"net1", "net2"} {
		if err := w.inHost(func() error { return w.cni().CheckNetworkList(context.Background(), list, rt(pod, "job1", ifname)) }); err != nil {
			t.Errorf("CHECK %s: %v", ifname, err)
		}
	}
	for _, ifname := range []string{"net1", "net2"} {
		for range 2 { // DEL twice: the second must succeed too
			if err := w.del(list, rt(pod, "job1", ifname)); err != nil {
				t.Fatalf("DEL %s: %v", ifname, err)
			}
		}
	}
	if after := w.hostNames(); !slices.Equal(after, before) {
		t.Errorf("host not restored:\nbefore %v\nafter  %v", before, after)
	}
}

func TestGCThroughLibcni(t *testing.T) {
	w := newWorld(t)
	w.AddPF("ens1f0", 2)
	w.AddPF("ens2f0", 2)
	before := w.hostNames()
	list := w.list(nil)
	for _, cid := range []string{"a", "b"} {
		if _, err := w.add(list, rt(w.NewPod(), cid, "net1")); err != nil {
			t.Fatal(err)
		}
	}
	err := w.inHost(func() error {
		return w.cni().GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if after := w.hostNames(); !slices.Equal(after, before) {
		t.Errorf("GC did not release everything:\nbefore %v\nafter  %v", before, after)
	}
}

func TestDeviceIDCapabilityPinsPF(t *testing.T) {
	w := newWorld(t)
	w.AddPF("ens1f0", 1)
	second := w.AddPF("ens2f0", 1)
	list := w.list(map[string]any{"capabilities": map[string]bool{"deviceID": true}})
	r := rt(w.NewPod(), "job1", "net1")
	r.CapabilityArgs = map[string]any{"deviceID": second.PCI}
	res, err := w.add(list, r)
	if err != nil {
		t.Fatal(err)
	}
	if pfOf(res).PciID != second.PCI {
		t.Fatalf("took %s, want the device plugin's %s", pfOf(res).PciID, second.PCI)
	}
}

// Parallel ADDs from separate processes never hand one PF to two pods.
func TestConcurrentAddsNeverShareAPF(t *testing.T) {
	w := newWorld(t)
	for i := range 3 {
		w.AddPF(fmt.Sprintf("ens%df0", i+1), 2)
	}
	before := w.hostNames()
	list := w.list(nil)
	const pods = 6
	type outcome struct {
		pci string
		err error
	}
	results := make([]outcome, pods)
	podNS := make([]ns.NetNS, pods)
	for i := range pods {
		podNS[i] = w.NewPod()
	}
	var wg sync.WaitGroup
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := w.add(list, rt(podNS[i], fmt.Sprintf("job%d", i), "net1"))
			if err == nil {
				results[i].pci = pfOf(res).PciID
			}
			results[i].err = err
		}()
	}
	wg.Wait()
	held := map[string]int{}
	busy := 0
	for i, r := range results {
		var cniErr *types.Error
		switch {
		case r.err == nil:
			held[r.pci]++
		case errors.As(r.err, &cniErr) && cniErr.Code == types.ErrTryAgainLater:
			busy++
		default:
			t.Errorf("pod %d: unexpected error %v", i, r.err)
		}
	}
	if len(held) != 3 || busy != pods-3 {
		t.Fatalf("want 3 distinct PFs held and %d told to try later; held %v, busy %d", pods-3, held, busy)
	}
	for pci, n := range held {
		if n != 1 {
			t.Errorf("PF %s handed to %d pods", pci, n)
		}
	}
	for i := range pods {
		if err := w.del(list, rt(podNS[i], fmt.Sprintf("job%d", i), "net1")); err != nil {
			t.Errorf("DEL job%d: %v", i, err)
		}
	}
	if after := w.hostNames(); !slices.Equal(after, before) {
		t.Errorf("host not restored:\nbefore %v\nafter  %v", before, after)
	}
}

func TestIPAMAddressesGoOnThePF(t *testing.T) {
	w := newWorld(t)
	w.AddPF("ens1f0", 1)
	list := w.list(map[string]any{"ipam": map[string]any{
		"type": "host-local", "subnet": "192.0.2.0/28", "dataDir": filepath.Join(t.TempDir(), "ipam"),
	}})
	pod := w.NewPod()
	res, err := w.add(list, rt(pod, "job1", "net1"))
	if err != nil {
		t.Fatal(err)
	}
	if pf := len(res.Interfaces) - 1; len(res.IPs) != 1 || *res.IPs[0].Interface != pf || res.Interfaces[pf].Name != "net1" {
		t.Fatalf("IPs %+v, want one on the PF net1 (interface %d) of %s", res.IPs, pf, mustMarshal(t, res.Interfaces))
	}
	var addrs []netlink.Addr
	if err := pod.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("net1")
		if err != nil {
			return err
		}
		addrs, err = netlink.AddrList(l, netlink.FAMILY_V4)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || !addrs[0].IP.Equal(res.IPs[0].Address.IP) || !(&net.IPNet{IP: net.ParseIP("192.0.2.0"), Mask: net.CIDRMask(28, 32)}).Contains(addrs[0].IP) {
		t.Fatalf("net1 addresses %v, result %v", addrs, res.IPs)
	}
	if err := w.del(list, rt(pod, "job1", "net1")); err != nil {
		t.Fatal(err)
	}
}

// exec runs the binary directly with a raw environment, for inputs libcni
// would refuse to send.
func (w *world) exec(env map[string]string, stdin string) (string, error) {
	return w.run(exec.Command(filepath.Join(binDir, "sriov-passthrough-cni")), env, stdin)
}

// run runs cmd in the host netns with the CNI environment env (and
// CNI_PATH) and stdin, and returns its stdout.
func (w *world) run(cmd *exec.Cmd, env map[string]string, stdin string) (string, error) {
	cmd.Env = append(cmd.Env, "CNI_PATH="+binDir, w.NodeEnv())
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(stdin)
	var out []byte
	err := w.inHost(func() error {
		var err error
		out, err = cmd.Output()
		return err
	})
	return string(out), err
}

func TestBadInputGetsCNIErrorAndChangesNothing(t *testing.T) {
	w := newWorld(t)
	w.AddPF("ens1f0", 2)
	before := w.hostNames()
	pod := w.NewPod()
	good := string(w.Conf(nil))
	base := func() map[string]string {
		return map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "job1", "CNI_NETNS": pod.Path(), "CNI_IFNAME": "net1"}
	}
	for _, tc := range []struct {
		name  string
		env   func(map[string]string)
		stdin string
		code  uint
		says  string
	}{
		{"ifname too long", func(e map[string]string) { e["CNI_IFNAME"] = "a-very-long-ifname" }, good, types.ErrInvalidEnvironmentVariables, "interface name is too long"},
		{"ifname with slash", func(e map[string]string) { e["CNI_IFNAME"] = "net/1" }, good, types.ErrInvalidEnvironmentVariables, "interface name contains /"},
		{"not JSON", nil, "{", types.ErrDecodingFailure, "unmarshal"},
		{"wrong type", nil, strings.Replace(good, `"type":`, `"pfNames":"ens1f0","type":`, 1), types.ErrDecodingFailure, `"pfNames"`},
		{"node-only field", nil, strings.Replace(good, `"type":`, `"stateDir":"`+t.TempDir()+`","type":`, 1), types.ErrInvalidNetworkConfig, `"stateDir" is node-only`},
		{"unknown CNI_ARGS", func(e map[string]string) { e["CNI_ARGS"] = "FOO=bar" }, good, types.ErrInvalidEnvironmentVariables, "CNI_ARGS"},
		{"missing netns", func(e map[string]string) { e["CNI_NETNS"] = "/var/run/netns/nope-sriovpt" }, good, types.ErrInvalidNetNS, "does not exist"},
		{"host netns", func(e map[string]string) { e["CNI_NETNS"] = w.Host.Path() }, good, types.ErrInvalidNetNS, "host"},
	} {
		env := base()
		if tc.env != nil {
			tc.env(env)
		}
		out, err := w.exec(env, tc.stdin)
		if err == nil {
			t.Errorf("%s: accepted: %s", tc.name, out)
			continue
		}
		var e types.Error
		if jerr := json.Unmarshal([]byte(out), &e); jerr != nil {
			t.Errorf("%s: stdout is not a CNI error: %q", tc.name, out)
			continue
		}
		if e.Code != tc.code || !strings.Contains(e.Msg+" "+e.Details, tc.says) {
			t.Errorf("%s: got code %d %q %q, want code %d mentioning %q", tc.name, e.Code, e.Msg, e.Details, tc.code, tc.says)
		}
	}
	if after := w.hostNames(); !slices.Equal(after, before) {
		t.Errorf("bad input changed the host: %v -> %v", before, after)
	}
	if got := kerneltest.Links(t, pod); len(got) != 0 {
		t.Errorf("bad input moved %v into the pod", got)
	}
	if out, err := w.exec(map[string]string{"CNI_COMMAND": "VERSION"}, good); err != nil || !strings.Contains(out, `"1.1.0"`) || !strings.Contains(out, `"0.3.0"`) {
		t.Errorf("VERSION: %s %v", out, err)
	}
}
