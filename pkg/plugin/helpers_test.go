package plugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// call runs one plugin command in the env's host netns, as the runtime
// would, and returns what it printed on stdout.
func call(t *testing.T, e *kerneltest.Env, cmd string, args *skel.CmdArgs) ([]byte, error) {
	t.Helper()
	out, _, err := callLogged(t, e, cmd, args)
	return out, err
}

// callLogged is call that also returns the command's log.
func callLogged(t *testing.T, e *kerneltest.Env, cmd string, args *skel.CmdArgs) ([]byte, string, error) {
	t.Helper()
	var out, logs bytes.Buffer
	p := &Plugin{NodeConfigFile: e.NodeFile, LockTimeout: 10 * time.Second, SettleTimeout: 200 * time.Millisecond, ProcRoot: e.ProcRoot, Stdout: &out, Stderr: &logs}
	f := map[string]func(*skel.CmdArgs) error{"ADD": p.Add, "DEL": p.Del, "CHECK": p.Check, "GC": p.GC, "STATUS": p.Status}[cmd]
	t.Setenv("CNI_COMMAND", cmd)
	err := e.Host.Do(func(ns.NetNS) error { return f(args) })
	t.Logf("%s %s/%s: err=%v\n%s", cmd, args.ContainerID, args.IfName, err, logs.String())
	return out.Bytes(), logs.String(), err
}

func args(pod ns.NetNS, cid, ifname string, conf []byte) *skel.CmdArgs {
	a := &skel.CmdArgs{ContainerID: cid, IfName: ifname, StdinData: conf,
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=ci;K8S_POD_NAME=job-" + cid}
	if pod != nil {
		a.Netns = pod.Path()
	}
	return a
}

func add(t *testing.T, e *kerneltest.Env, pod ns.NetNS, cid, ifname string, conf []byte) *current.Result {
	t.Helper()
	return addArgs(t, e, args(pod, cid, ifname, conf))
}

// addArgs is add with the runtime's arguments as given.
func addArgs(t *testing.T, e *kerneltest.Env, a *skel.CmdArgs) *current.Result {
	t.Helper()
	out, err := call(t, e, "ADD", a)
	if err != nil {
		t.Fatalf("ADD %s/%s: %v", a.ContainerID, a.IfName, err)
	}
	res, err := current.NewResult(out)
	if err != nil {
		t.Fatalf("decode ADD result %s: %v", out, err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// pfOf is the PF's entry of an ADD result: the last interface, after the
// VFs, where multus v3.x looks for the attachment's interface.
func pfOf(res *current.Result) *current.Interface { return res.Interfaces[len(res.Interfaces)-1] }

func del(t *testing.T, e *kerneltest.Env, pod ns.NetNS, cid, ifname string, conf []byte) {
	t.Helper()
	if _, err := call(t, e, "DEL", args(pod, cid, ifname, conf)); err != nil {
		t.Fatalf("DEL %s/%s: %v", cid, ifname, err)
	}
}

// cniCode extracts the CNI error code, failing the test for other errors.
func cniCode(t *testing.T, err error) uint {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("want a CNI error, got %T %v", err, err)
	}
	return e.Code
}

func names(links map[string]netlink.Link) []string {
	var out []string
	for n := range links {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// assertHostIntact checks that every PF and VF netdev of the env is in the
// host netns under its original name, untagged, and that no record is left.
func assertHostIntact(t *testing.T, e *kerneltest.Env) {
	t.Helper()
	host := kerneltest.Links(t, e.Host)
	for _, n := range e.AllNames() {
		l, ok := host[n]
		if !ok {
			t.Errorf("%s is not back on the host; host has %v", n, names(host))
			continue
		}
		for _, alt := range l.Attrs().AltNames {
			t.Errorf("%s still carries altname %s", n, alt)
		}
	}
	assertNoRecords(t, e)
}

func assertNoRecords(t *testing.T, e *kerneltest.Env) {
	t.Helper()
	recs, _ := filepath.Glob(filepath.Join(e.StateDir, "*.json"))
	if len(recs) != 0 {
		t.Errorf("records left behind: %v", recs)
	}
}

// pciIn maps PCI address -> link name for the devices the plugin tagged or
// that have a PCI parent, in one netns.
func pciIn(t *testing.T, n ns.NetNS) map[string]string {
	t.Helper()
	out := map[string]string{}
	for name, l := range kerneltest.Links(t, n) {
		if a := netdev.PCIOf(l); a != "" {
			out[a] = name
		}
	}
	return out
}

func readRecord(t *testing.T, e *kerneltest.Env, cid, ifname string) *state.Record {
	t.Helper()
	r, err := state.Store{Dir: e.StateDir}.Get(state.Key(cid, ifname))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// moveLink moves a link by name from one netns to another, optionally
// renaming it on arrival: what a workload, or the kernel, does behind the
// plugin's back.
func moveLink(t *testing.T, from, to ns.NetNS, name, newName string) {
	t.Helper()
	kerneltest.MoveLink(t, from, to, name)
	if newName != "" && newName != name {
		err := to.Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			return netlink.LinkSetName(l, newName)
		})
		if err != nil {
			t.Fatalf("rename %s to %s: %v", name, newName, err)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
