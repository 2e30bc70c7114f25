package integration

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// cniError decodes what the binary printed as a CNI error.
func cniError(t *testing.T, what, out string, err error) types.Error {
	t.Helper()
	var e types.Error
	if err == nil {
		t.Fatalf("%s: accepted: %s", what, out)
	}
	if jerr := json.Unmarshal([]byte(out), &e); jerr != nil {
		t.Fatalf("%s: stdout is not a CNI error: %q", what, out)
	}
	return e
}

// A CNI_IFNAME that is not valid UTF-8 passes skel's check (it looks at
// runes) but cannot be carried by JSON: ADD and CHECK refuse it with code
// 4 before anything moves; DEL has provably nothing to release for it.
func TestIfNameNotUTF8IsRefused(t *testing.T) {
	w := newWorld(t)
	w.AddPF("ens1f0", 2)
	before := w.hostNames()
	pod := w.NewPod()
	conf := string(w.Conf(nil))
	for _, name := range []string{"net\xff", "n\xc3", "\xed\xa0\x80"} {
		for _, cmd := range []string{"ADD", "CHECK"} {
			env := map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": "job1", "CNI_NETNS": pod.Path(), "CNI_IFNAME": name}
			out, err := w.exec(env, conf)
			e := cniError(t, cmd+" "+name, out, err)
			if e.Code != types.ErrInvalidEnvironmentVariables || !strings.Contains(e.Msg, "not valid UTF-8") {
				t.Errorf("%s %q: got code %d %q, want code 4 saying not valid UTF-8", cmd, name, e.Code, e.Msg)
			}
		}
		env := map[string]string{"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "job1", "CNI_NETNS": pod.Path(), "CNI_IFNAME": name}
		if out, err := w.exec(env, conf); err != nil {
			t.Errorf("DEL %q: %v %s", name, err, out)
		}
	}
	if after := w.hostNames(); !slices.Equal(after, before) {
		t.Errorf("a refused ifname changed the host: %v -> %v", before, after)
	}
	if got := kerneltest.Links(t, pod); len(got) != 0 {
		t.Errorf("a refused ifname moved %v into the pod", got)
	}
	if recs, _ := filepath.Glob(filepath.Join(w.StateDir, "*.json")); len(recs) != 0 {
		t.Errorf("records written: %v", recs)
	}
}

// A repeated ADD for the same container and ifname is refused with code 4
// naming the existing attachment, which stays as it is; the second PF stays
// on the host.
func TestRepeatedAddIsRefused(t *testing.T) {
	w := newWorld(t)
	first := w.AddPF("ens1f0", 2)
	w.AddPF("ens2f0", 2)
	list := w.list(nil)
	pod := w.NewPod()
	if _, err := w.add(list, rt(pod, "job1", "net1")); err != nil {
		t.Fatal(err)
	}
	inPod := names(kerneltest.Links(t, pod))
	record, _ := os.ReadFile(filepath.Join(w.StateDir, state.Key("job1", "net1")+".json"))
	_, err := w.add(list, rt(pod, "job1", "net1"))
	var e *types.Error
	if !errors.As(err, &e) || e.Code != types.ErrInvalidEnvironmentVariables ||
		!strings.Contains(e.Msg, "container job1 already has an attachment on net1: PF "+first.PCI+" (host name ens1f0)") {
		t.Fatalf("repeated ADD: want code 4 naming the attachment, got %v", err)
	}
	if got := names(kerneltest.Links(t, pod)); !slices.Equal(got, inPod) {
		t.Errorf("pod changed: %v -> %v", inPod, got)
	}
	if again, _ := os.ReadFile(filepath.Join(w.StateDir, state.Key("job1", "net1")+".json")); string(again) != string(record) {
		t.Errorf("record changed:\n%s\n%s", record, again)
	}
	if err := w.del(list, rt(pod, "job1", "net1")); err != nil {
		t.Fatal(err)
	}
}

// CHECK through libcni consults the cached ADD result as prevResult: it
// passes for the attachment as ADD left it and with a VF gone, fails when
// the PF is not CNI_IFNAME in the pod, and says "try again later" (11) for
// an attachment whose ADD or DEL has not finished.
func TestCheckConsultsPrevResult(t *testing.T) {
	w := newWorld(t)
	pf := w.AddPF("ens1f0", 2)
	list := w.list(nil)
	pod := w.NewPod()
	cache := t.TempDir()
	cni := libcni.NewCNIConfigWithCacheDir([]string{binDir}, cache, w.Exec())
	r := rt(pod, "job1", "net1")
	check := func() error {
		return w.inHost(func() error { return cni.CheckNetworkList(context.Background(), list, r) })
	}
	if err := w.inHost(func() error { _, err := cni.AddNetworkList(context.Background(), list, r); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.inHost(func() error { return cni.DelNetworkList(context.Background(), list, r) }) })
	if err := check(); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	setLink(t, pod, pf.VFs[1].Name, func(l netlink.Link) error { return netlink.LinkSetNsFd(l, int(w.Host.Fd())) })
	if err := check(); err != nil {
		t.Fatalf("CHECK with a VF gone from the pod: want success (reported in the log), got %v", err)
	}
	setLink(t, pod, "net1", func(l netlink.Link) error { return netlink.LinkSetName(l, "renamed") })
	if err := check(); err == nil || !strings.Contains(err.Error(), `is not in the pod as "net1"`) {
		t.Fatalf("CHECK with the PF renamed: want it named, got %v", err)
	}
	setLink(t, pod, "renamed", func(l netlink.Link) error { return netlink.LinkSetName(l, "net1") })

	store := state.Store{Dir: w.StateDir}
	rec, err := store.Get(state.Key("job1", "net1"))
	if err != nil || rec == nil {
		t.Fatalf("record: %v %v", rec, err)
	}
	rec.Phase = state.Releasing
	if err := store.Save(rec); err != nil {
		t.Fatal(err)
	}
	var e *types.Error
	if err := check(); !errors.As(err, &e) || e.Code != types.ErrTryAgainLater {
		t.Fatalf("CHECK of an attachment being released: want code 11, got %v", err)
	}
}

// With the CNIDeviceInfoFile capability the plugin writes the device-info
// file (type pci, the PF's PCI address) where the runtime asked; a file
// that is there already is left alone, and a failed ADD removes its own.
func TestDeviceInfoFile(t *testing.T) {
	w := newWorld(t)
	first := w.AddPF("ens1f0", 1)
	w.AddPF("ens2f0", 1)
	third := w.AddPF("ens3f0", 1)
	list := w.list(map[string]any{"capabilities": map[string]bool{"CNIDeviceInfoFile": true}})
	dir := t.TempDir()
	withInfo := func(pod ns.NetNS, cid, path string) *libcni.RuntimeConf {
		r := rt(pod, cid, "net1")
		r.CapabilityArgs = map[string]any{"CNIDeviceInfoFile": path}
		return r
	}

	path := filepath.Join(dir, "job1-net1.json")
	pod := w.NewPod()
	if _, err := w.add(list, withInfo(pod, "job1", path)); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("device-info file not written: %v", err)
	}
	var info map[string]any
	if err := json.Unmarshal(data, &info); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"type": "pci", "version": "1.1.0", "pci": map[string]any{"pci-address": first.PCI}}
	if got, _ := json.Marshal(info); string(got) != string(mustMarshal(t, want)) {
		t.Errorf("device-info %s, want %s", got, mustMarshal(t, want))
	}

	existing := filepath.Join(dir, "job2-net1.json")
	if err := os.WriteFile(existing, []byte(`{"type":"pci","version":"1.1.0","pci":{"pci-address":"from-the-device-plugin"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	pod2 := w.NewPod()
	if _, err := w.add(list, withInfo(pod2, "job2", existing)); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(existing); !strings.Contains(string(got), "from-the-device-plugin") {
		t.Errorf("an existing device-info file was replaced: %s", got)
	}

	// An ADD that fails after the file was written (here its IPAM plugin
	// does not exist) removes it, with everything else it did.
	failed := filepath.Join(dir, "job3-net1.json")
	broken := w.list(map[string]any{"capabilities": map[string]bool{"CNIDeviceInfoFile": true}, "ipam": map[string]any{"type": "no-such-ipam"}})
	if _, err := w.add(broken, withInfo(w.NewPod(), "job3", failed)); err == nil || !strings.Contains(err.Error(), "no-such-ipam") {
		t.Fatalf("ADD with a missing IPAM plugin: want its failure, got %v", err)
	}
	if _, err := os.Stat(failed); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed ADD left a device-info file: %v", err)
	}
	if !slices.Contains(w.hostNames(), third.Name) {
		t.Errorf("the failed ADD did not give %s back", third.Name)
	}
	for cid, p := range map[string]ns.NetNS{"job1": pod, "job2": pod2} {
		if err := w.del(list, rt(p, cid, "net1")); err != nil {
			t.Fatal(err)
		}
	}
}

func setLink(t *testing.T, n ns.NetNS, name string, f func(netlink.Link) error) {
	t.Helper()
	err := n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		return f(l)
	})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func names(links map[string]netlink.Link) []string {
	var out []string
	for n := range links {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// execIn runs the plugin like exec, inside a private mount namespace that
// setup (shell) prepares first: the mounts die with the process, so
// nothing is left on the host even if the test is killed.
func (w *world) execIn(setup string, env map[string]string, stdin string) (string, error) {
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-ec", setup+"\nexec \"$0\"",
		filepath.Join(binDir, "sriov-passthrough-cni"))
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	return w.run(cmd, env, stdin)
}

// DEL succeeds when the state dir cannot be used (read-only, full, missing)
// but provably holds no record of the attachment; it fails (code 5) when a
// record is there and it could not release it, and the devices stay in the
// pod until a DEL that can.
func TestDelWithUnusableStateDir(t *testing.T) {
	w := newWorld(t)
	w.AddPF("ens1f0", 2)
	before := w.hostNames()
	pod := w.NewPod()
	env := func(cmd string) map[string]string {
		return map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": "job1", "CNI_NETNS": pod.Path(), "CNI_IFNAME": "net1"}
	}
	dir := t.TempDir()
	// The state dir is the node's: each case points the node
	// configuration at its own.
	conf := func(stateDir string) string {
		w.setNode(map[string]any{"stateDir": stateDir})
		return string(w.Conf(nil))
	}
	for _, tc := range []struct{ name, setup, stateDir string }{
		{"read-only, state dir missing", "mount -t tmpfs -o ro tmpfs " + dir, filepath.Join(dir, "state")},
		{"read-only, state dir empty", "mount -t tmpfs tmpfs " + dir + "; mkdir " + dir + "/state; mount -o remount,ro " + dir, filepath.Join(dir, "state")},
		{"full (no inode left)", "mount -t tmpfs -o nr_inodes=2 tmpfs " + dir + "; mkdir " + dir + "/state", filepath.Join(dir, "state")},
		{"a file where the dir should be", "mount -t tmpfs tmpfs " + dir + "; : > " + dir + "/file", filepath.Join(dir, "file", "state")},
	} {
		if out, err := w.execIn(tc.setup, env("DEL"), conf(tc.stateDir)); err != nil {
			t.Errorf("DEL with %s and no record: %v %s", tc.name, err, out)
		}
		// The setup does make the state dir unusable: the same ADD fails.
		out, err := w.execIn(tc.setup, env("ADD"), conf(tc.stateDir))
		if e := cniError(t, "ADD with "+tc.name, out, err); e.Code != types.ErrIOFailure {
			t.Errorf("ADD with %s: code %d %s, want 5", tc.name, e.Code, e.Msg)
		}
	}
	if after := w.hostNames(); !slices.Equal(after, before) {
		t.Fatalf("host changed: %v -> %v", before, after)
	}

	// A record in a state dir that is now read-only: DEL cannot release.
	if out, err := w.exec(env("ADD"), conf(w.StateDir)); err != nil {
		t.Fatalf("ADD: %v %s", err, out)
	}
	inPod := names(kerneltest.Links(t, pod))
	ro := "mount --bind " + w.StateDir + " " + w.StateDir + "; mount -o remount,bind,ro " + w.StateDir
	out, err := w.execIn(ro, env("DEL"), conf(w.StateDir))
	if e := cniError(t, "DEL of a recorded attachment with a read-only state dir", out, err); e.Code != types.ErrIOFailure {
		t.Errorf("DEL with a record and a read-only state dir: code %d %s, want 5", e.Code, e.Msg)
	}
	if got := names(kerneltest.Links(t, pod)); !slices.Equal(got, inPod) {
		t.Errorf("a failed DEL changed the pod: %v -> %v", inPod, got)
	}
	// The same record on a full file system: DEL cannot mark it releasing,
	// so it moves nothing and says I/O failure.
	full := "mount -t tmpfs -o size=1m tmpfs " + dir + "; cp -a " + w.StateDir + "/. " + dir + "/; mount --bind " + dir + " " + w.StateDir +
		"; dd if=/dev/zero of=" + dir + "/fill bs=4k >/dev/null 2>&1 || true"
	out, err = w.execIn(full, env("DEL"), conf(w.StateDir))
	if e := cniError(t, "DEL of a recorded attachment with a full state dir", out, err); e.Code != types.ErrIOFailure {
		t.Errorf("DEL with a record and a full state dir: code %d %s %s, want 5", e.Code, e.Msg, e.Details)
	}
	if got := names(kerneltest.Links(t, pod)); !slices.Equal(got, inPod) {
		t.Errorf("a failed DEL changed the pod: %v -> %v", inPod, got)
	}
	if out, err := w.exec(env("DEL"), conf(w.StateDir)); err != nil {
		t.Fatalf("DEL with the state dir usable again: %v %s", err, out)
	}
	if after := w.hostNames(); !slices.Equal(after, before) {
		t.Errorf("host not restored: %v -> %v", before, after)
	}
}

// With IPAM, CHECK also holds the PF to the result's addresses and routes
// (containernetworking's validators): an address the job removed fails it.
func TestCheckWithIPAMChecksAddressesAndRoutes(t *testing.T) {
	w := newWorld(t)
	w.AddPF("ens1f0", 1)
	list := w.list(map[string]any{"ipam": map[string]any{
		"type": "host-local", "subnet": "192.0.2.0/28", "dataDir": filepath.Join(t.TempDir(), "ipam"),
		"routes": []map[string]string{{"dst": "198.51.100.0/24", "gw": "192.0.2.1"}},
	}})
	pod := w.NewPod()
	cni := libcni.NewCNIConfigWithCacheDir([]string{binDir}, t.TempDir(), w.Exec())
	r := rt(pod, "job1", "net1")
	var res types.Result
	if err := w.inHost(func() (err error) { res, err = cni.AddNetworkList(context.Background(), list, r); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.inHost(func() error { return cni.DelNetworkList(context.Background(), list, r) }) })
	check := func() error {
		return w.inHost(func() error { return cni.CheckNetworkList(context.Background(), list, r) })
	}
	if err := check(); err != nil {
		t.Fatalf("CHECK after ADD with IPAM: %v", err)
	}
	var out struct {
		IPs []struct{ Address string } `json:"ips"`
	}
	b, _ := json.Marshal(res)
	if err := json.Unmarshal(b, &out); err != nil || len(out.IPs) != 1 {
		t.Fatalf("result IPs: %s", b)
	}
	setLink(t, pod, "net1", func(l netlink.Link) error {
		routes, err := netlink.RouteList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, rt := range routes {
			if rt.Dst != nil && rt.Dst.String() == "198.51.100.0/24" {
				return netlink.RouteDel(&rt)
			}
		}
		return errors.New("the result's route is not in the pod")
	})
	if err := check(); err == nil || !strings.Contains(err.Error(), "Expected Route {Dst:{IP:198.51.100.0") {
		t.Errorf("CHECK with the result's route gone: want it named, got %v", err)
	}
	setLink(t, pod, "net1", func(l netlink.Link) error {
		a, err := netlink.ParseAddr(out.IPs[0].Address)
		if err != nil {
			return err
		}
		return netlink.AddrDel(l, a)
	})
	if err := check(); err == nil || !strings.Contains(err.Error(), "Failed to match addr") {
		t.Errorf("CHECK with the PF's address gone: want it named, got %v", err)
	}
}
