package integration

import (
	"context"
	"encoding/json"
	"os"
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

// named is w.list for a network of another name (same plugin, same state
// dir), as two NADs on one node are.
func (w *world) named(name string, fields map[string]any) *libcni.NetworkConfigList {
	w.t.Helper()
	list := w.list(fields)
	var raw map[string]any
	if err := json.Unmarshal(list.Bytes, &raw); err != nil {
		w.t.Fatal(err)
	}
	raw["name"] = name
	b, _ := json.Marshal(raw)
	out, err := libcni.ConfListFromBytes(b)
	if err != nil {
		w.t.Fatal(err)
	}
	return out
}

// gc runs GC through libcni with an empty cache: libcni itself DELs every
// attachment it cached and the list leaves out, which would hide what the
// plugin's GC does. This runtime cached nothing, as after a node reboot.
func (w *world) gc(list *libcni.NetworkConfigList, valid ...types.GCAttachment) error {
	cni := libcni.NewCNIConfigWithCacheDir([]string{binDir}, w.t.TempDir(), w.Exec())
	return w.inHost(func() error {
		return cni.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: valid})
	})
}

// GC of one network releases only that network's attachments: network B's
// GC, which lists none of A's, leaves A's running pods alone. A record of
// an earlier release (no network in it) is not released by any GC's list.
func TestGCIsScopedToItsNetwork(t *testing.T) {
	w := newWorld(t)
	for _, n := range []string{"ens1f0", "ens2f0", "ens3f0"} {
		w.AddPF(n, 1)
	}
	before := w.hostNames()
	a, b := w.named("net-a", nil), w.named("net-b", nil)
	pods := map[string]ns.NetNS{"a1": w.NewPod(), "b1": w.NewPod(), "old1": w.NewPod()}
	for cid, list := range map[string]*libcni.NetworkConfigList{"a1": a, "b1": b, "old1": a} {
		if _, err := w.add(list, rt(pods[cid], cid, "net1")); err != nil {
			t.Fatal(err)
		}
	}
	store := state.Store{Dir: w.StateDir}
	if r, _ := store.Get(state.Key("a1", "net1")); r == nil || r.Network != "net-a" {
		t.Fatalf("record of a1 does not name its network: %+v", r)
	}
	// old1's record as the previous release wrote it: no network field.
	old, err := store.Get(state.Key("old1", "net1"))
	if err != nil || old == nil {
		t.Fatal(err)
	}
	old.Network = ""
	if err := store.Save(old); err != nil {
		t.Fatal(err)
	}

	if err := w.gc(b); err != nil {
		t.Fatalf("GC of net-b: %v", err)
	}
	held := func() []string {
		var out []string
		for cid, p := range pods {
			if len(kerneltest.Links(t, p)) > 0 {
				out = append(out, cid)
			}
		}
		slices.Sort(out)
		return out
	}
	if got := held(); !slices.Equal(got, []string{"a1", "old1"}) {
		t.Errorf("after net-b's GC with nothing valid, pods holding a PF: %v, want a1 and old1", got)
	}
	if err := w.gc(a, types.GCAttachment{ContainerID: "a1", IfName: "net1"}); err != nil {
		t.Fatalf("GC of net-a: %v", err)
	}
	if got := held(); !slices.Equal(got, []string{"a1", "old1"}) {
		t.Errorf("after net-a's GC listing a1, pods holding a PF: %v, want a1 and old1 (no network: not GC's to judge)", got)
	}
	if err := w.gc(a); err != nil {
		t.Fatalf("GC of net-a: %v", err)
	}
	if got := held(); !slices.Equal(got, []string{"old1"}) {
		t.Errorf("after net-a's GC with nothing valid, pods holding a PF: %v, want old1", got)
	}
	if err := w.del(a, rt(pods["old1"], "old1", "net1")); err != nil {
		t.Fatal(err)
	}
	if after := w.hostNames(); !slices.Equal(after, before) {
		t.Errorf("host not restored:\nbefore %v\nafter  %v", before, after)
	}
}

// leases lists host-local's leases for a network: file name (the IP) ->
// "containerID ifname".
func leases(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Count(e.Name(), ".") != 3 {
			continue // lock, last_reserved_ip.0
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = strings.Join(strings.Fields(string(b)), " ")
	}
	return out
}

// Repair (of a pod whose netns died without DEL) and GC call the IPAM
// plugin's DEL for what they release, with the attachment's own
// configuration, container ID and ifname; GC is passed on to the IPAM
// plugin, which drops a lease no attachment holds.
func TestRepairAndGCReleaseIPAMLeases(t *testing.T) {
	w := newWorld(t)
	for _, n := range []string{"ens1f0", "ens2f0", "ens3f0"} {
		w.AddPF(n, 1)
	}
	before := w.hostNames()
	dataDir := filepath.Join(t.TempDir(), "ipam")
	list := w.named("net-ipam", map[string]any{"ipam": map[string]any{"type": "host-local", "subnet": "192.0.2.0/28", "dataDir": dataDir}})
	leaseDir := filepath.Join(dataDir, "net-ipam")
	pods := map[string]ns.NetNS{}
	for _, cid := range []string{"dead", "gone", "live"} {
		pods[cid] = w.NewPod()
		if _, err := w.add(list, rt(pods[cid], cid, "net1")); err != nil {
			t.Fatal(err)
		}
	}
	if got := leases(t, leaseDir); len(got) != 3 {
		t.Fatalf("leases after three ADDs: %v", got)
	}

	// "dead": its netns goes away without DEL. The kernel hands physical
	// devices back to the host; the test plays that part for its ifb links.
	for name := range kerneltest.Links(t, pods["dead"]) {
		moveLinkTo(t, pods["dead"], w.Host, name)
	}
	kerneltest.DeleteNS(t, pods["dead"])
	// The next ADD repairs it, IPAM lease included.
	extra := w.NewPod()
	if _, err := w.add(w.named("net-other", nil), rt(extra, "other", "net1")); err != nil {
		t.Fatalf("ADD that repairs: %v", err)
	}
	if got := leases(t, leaseDir); len(got) != 2 || slices.Contains(mapValues(got), "dead net1") {
		t.Errorf("after repair, leases %v: want dead's released", got)
	}

	// A lease nobody holds (its plugin died between IPAM and the record).
	ghost := filepath.Join(leaseDir, "192.0.2.14")
	if err := os.WriteFile(ghost, []byte("ghost\r\nnet1"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := w.gc(list, types.GCAttachment{ContainerID: "live", IfName: "net1"}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := leases(t, leaseDir); len(got) != 1 || mapValues(got)[0] != "live net1" {
		t.Errorf("after GC listing only live, leases %v: want live's alone", got)
	}
	for cid, l := range map[string]*libcni.NetworkConfigList{"live": list, "other": w.named("net-other", nil)} {
		p := pods[cid]
		if cid == "other" {
			p = extra
		}
		if err := w.del(l, rt(p, cid, "net1")); err != nil {
			t.Fatal(err)
		}
	}
	if after := w.hostNames(); !slices.Equal(after, before) {
		t.Errorf("host not restored:\nbefore %v\nafter  %v", before, after)
	}
}

func moveLinkTo(t *testing.T, from, to ns.NetNS, name string) {
	t.Helper()
	setLink(t, from, name, func(l netlink.Link) error { return netlink.LinkSetNsFd(l, int(to.Fd())) })
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}
