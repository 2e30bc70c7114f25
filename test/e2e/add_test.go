//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
)

// ADD net1 into a fresh netns with cnitool: the pod holds the lowest PF as
// net1 (its sysfs visible there) and all 7 VFs; the host lost exactly those.
func TestAddMovesPFAndAllVFs(t *testing.T) {
	h := newHarness(t, nil)
	p := h.newPod()
	before := mustLinks(t, "")

	res := h.toolAdd(p, "net1")

	a := wholePF(p, "net1", pfs[0])
	if len(a.vfs) != 7 {
		t.Fatalf("%s has %d VFs, the igb model has 7", pfs[0], len(a.vfs))
	}
	assertAttached(t, a, res)
	assertPodHolds(t, p, a.pcis()...)
	assertHostLost(t, before, a)
	// The plugin tags a device only where netlink cannot name its PCI
	// function (kernels before 5.14): the tag costs DEL a removal.
	inPod := mustLinks(t, p.path)
	for _, addr := range a.pcis() {
		if tagged := slices.Contains(inPod[addr].AltNames, netdev.Tag(addr)); tagged == kernelSendsParents {
			t.Errorf("%s in the pod has altnames %q: tagged=%v on a kernel that sends parent devices=%v", addr, inPod[addr].AltNames, tagged, kernelSendsParents)
		}
	}
	if res.CNIVersion != "1.1.0" {
		t.Errorf("result cniVersion = %q, want 1.1.0", res.CNIVersion)
	}
	if n := len(h.records()); n != 1 {
		t.Errorf("state dir holds %d records, want 1: %v", n, h.records())
	}
	t.Logf("pod %s holds %s as net1 and VFs %v", p.name, pfs[0], a.vfs)
}

// One pod asking twice (net1, net2) gets two different PFs, lowest first.
func TestTwoAttachmentsGetDifferentPFs(t *testing.T) {
	h := newHarness(t, nil)
	p := h.newPod()
	before := mustLinks(t, "")

	r1 := h.toolAdd(p, "net1")
	r2 := h.toolAdd(p, "net2")

	a1, a2 := wholePF(p, "net1", pfs[0]), wholePF(p, "net2", pfs[1])
	assertAttached(t, a1, r1)
	assertAttached(t, a2, r2)
	assertPodHolds(t, p, append(a1.pcis(), a2.pcis()...)...)
	assertHostLost(t, before, a1, a2)
	if r1.pf().PciID == r2.pf().PciID {
		t.Errorf("net1 and net2 got the same PF %s", r1.pf().PciID)
	}
}

// With every PF taken, ADD fails with CNI code 11 ("try again later"), says
// why each PF is unavailable, and changes nothing anywhere.
func TestNoFreePFIsCode11AndChangesNothing(t *testing.T) {
	h := newHarness(t, nil)
	pa, pb, pc := h.newPod(), h.newPod(), h.newPod()
	h.mustLibAdd(pa, "net1")
	h.mustLibAdd(pa, "net2")
	h.mustLibAdd(pb, "net1")

	host := mustLinks(t, "")
	inA, inB := mustLinks(t, pa.path), mustLinks(t, pb.path)
	records := h.records()

	_, err := h.libAdd(pc, "net1")
	if err == nil {
		t.Cleanup(func() { _ = h.libDel(pc, "net1") })
		t.Fatal("ADD succeeded with no free PF")
	}
	if code := cniCode(err); code != 11 {
		t.Errorf("ADD error code = %d, want 11: %v", code, err)
	}
	for _, f := range pfs {
		if !strings.Contains(err.Error(), f.PCI) && !strings.Contains(err.Error(), f.Name) {
			t.Errorf("error does not say why %s is unavailable: %v", f, err)
		}
	}
	t.Logf("ADD with no free PF: %v", err)

	// cnitool reports the same failure with a non-zero exit.
	if _, err := h.cnitool("add", netName, pc.path, "-i", "net1"); err == nil {
		t.Cleanup(func() { _, _ = h.cnitool("del", netName, pc.path, "-i", "net1") })
		t.Error("cnitool add succeeded with no free PF")
	}

	assertSame(t, "host", host, mustLinks(t, ""))
	assertSame(t, pa.name, inA, mustLinks(t, pa.path))
	assertSame(t, pb.name, inB, mustLinks(t, pb.path))
	if got, _, _ := netnsLinks(pc.path); len(got) != 0 {
		t.Errorf("the refused pod holds %v", got)
	}
	if got := h.records(); fmt.Sprint(got) != fmt.Sprint(records) {
		t.Errorf("state records changed: %v -> %v", records, got)
	}
}

func assertSame(t *testing.T, where string, before, after map[string]link) {
	t.Helper()
	for pci, b := range before {
		if a, ok := after[pci]; !ok || a.Name != b.Name || a.MAC != b.MAC || a.Up != b.Up {
			t.Errorf("%s: %v changed to %v", where, b, a)
		}
	}
	for pci, a := range after {
		if _, ok := before[pci]; !ok {
			t.Errorf("%s: %v appeared", where, a)
		}
	}
}

// Parallel ADDs never hand one PF to two pods: three pods race for three PFs
// and each gets a different one, then a fourth finds none.
func TestParallelAddsGetDistinctPFs(t *testing.T) {
	h := newHarness(t, nil)
	pods := []*pod{h.newPod(), h.newPod(), h.newPod()}
	outs := make([]string, len(pods))
	errs := make([]error, len(pods))
	var wg sync.WaitGroup
	for i, p := range pods {
		t.Cleanup(func() { h.toolDel(p, "net1") })
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = h.cnitool("add", netName, p.path, "-i", "net1")
		}()
	}
	wg.Wait()
	results := make([]*result, len(pods))
	seen := map[string]string{}
	for i, p := range pods {
		if errs[i] != nil {
			t.Errorf("parallel ADD %s: %v", p.name, errs[i])
			continue
		}
		results[i] = decodeResult(t, []byte(outs[i]))
		if len(results[i].Interfaces) == 0 {
			t.Errorf("parallel ADD %s: result lists no interfaces", p.name)
			continue
		}
		pci := results[i].pf().PciID
		if other, dup := seen[pci]; dup {
			t.Errorf("PF %s handed to both %s and %s", pci, other, p.name)
		}
		seen[pci] = p.name
		for _, f := range pfs {
			if f.PCI == pci {
				assertAttached(t, wholePF(p, "net1", f), results[i])
				assertPodHolds(t, p, wholePF(p, "net1", f).pcis()...)
			}
		}
	}
	if len(seen) != len(pfs) {
		t.Errorf("3 parallel ADDs took %d PFs, want %d", len(seen), len(pfs))
	}
	extra := h.newPod()
	if _, err := h.libAdd(extra, "net1"); cniCode(err) != 11 {
		t.Errorf("fourth ADD: got %v, want CNI error 11", err)
	}
}

// The result is converted to the requested cniVersion: older runtimes still
// get the PF last, with its MAC (pciID and mtu exist from 1.1.0 only).
func TestResultInOlderCNIVersions(t *testing.T) {
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0"} {
		t.Run(v, func(t *testing.T) {
			h := newHarness(t, map[string]any{"cniVersion": v})
			p := h.newPod()
			res := h.mustLibAdd(p, "net1")
			if res.CNIVersion != v {
				t.Errorf("result cniVersion = %q, want %q", res.CNIVersion, v)
			}
			inPod := mustLinks(t, p.path)
			if len(res.Interfaces) != 8 {
				t.Fatalf("result has %d interfaces, want 8", len(res.Interfaces))
			}
			got := res.pf()
			if got.Name != "net1" || got.Mac != inPod[pfs[0].PCI].MAC || got.Sandbox != p.path {
				t.Errorf("last interface = %+v, want net1 %s in %s", got, inPod[pfs[0].PCI].MAC, p.path)
			}
			if !strings.HasPrefix(v, "0.3.") { // CHECK exists from 0.4.0 on
				if err := h.libCheck(p, "net1"); err != nil {
					t.Errorf("CHECK (%s): %v", v, err)
				}
			}
		})
	}
}

// STATUS is ok with PFs free and with PFs busy.
func TestStatus(t *testing.T) {
	h := newHarness(t, nil)
	if err := h.cni.GetStatusNetworkList(context.Background(), h.list); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	p := h.newPod()
	h.mustLibAdd(p, "net1")
	if err := h.cni.GetStatusNetworkList(context.Background(), h.list); err != nil {
		t.Errorf("STATUS with a busy PF: %v", err)
	}
	info, err := h.cni.GetVersionInfo(context.Background(), "sriov-passthrough-cni")
	if err != nil {
		t.Fatalf("VERSION: %v", err)
	}
	want := []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}
	got := info.SupportedVersions()
	slices.Sort(got)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("supported versions = %v, want %v", got, want)
	}
}

// A VF keeps its name in the pod unless the pod already has that name; then
// it becomes <ifname>v<index>, and DEL still gives back the original name.
func TestVFNameTakenInPod(t *testing.T) {
	h := newHarness(t, nil)
	p := h.newPod()
	vf1 := vfsOf[pfs[0].PCI][1]
	clash := baseline[vf1].Name
	run(t, "ip", "-n", p.name, "link", "add", clash, "type", "veth", "peer", "name", "e2epeer")

	res := h.toolAdd(p, "net1")
	a := wholePF(p, "net1", pfs[0])
	a.names = map[string]string{vf1: "net1v1"}
	assertAttached(t, a, res)
	if _, other, _ := netnsLinks(p.path); !slices.Contains(other, clash) {
		t.Errorf("the pod's own %s is gone: %v", clash, other)
	}

	h.toolDel(p, "net1")
	assertRestored(t, a.pcis()...)
}

// A repeated ADD of the same attachment is an error (the spec: the
// interface exists already): code 4 naming the attachment, which stays as
// it was, and no second PF moves.
func TestRepeatedAddIsRefused(t *testing.T) {
	h := newHarness(t, nil)
	p := h.newPod()
	before := mustLinks(t, "")
	first := h.mustLibAdd(p, "net1")
	_, err := h.libAdd(p, "net1")
	if cniCode(err) != int(types.ErrInvalidEnvironmentVariables) || !strings.Contains(err.Error(), "already has an attachment on net1: PF "+pfs[0].PCI) {
		t.Errorf("second ADD of the same attachment: want code 4 naming PF %s, got %v", pfs[0].PCI, err)
	}
	a := wholePF(p, "net1", pfs[0])
	assertAttached(t, a, first)
	assertPodHolds(t, p, a.pcis()...)
	assertHostLost(t, before, a)
}

// ADD refuses a CNI_NETNS that is the host's own netns or does not exist,
// and moves nothing.
func TestAddRefusesBadNetns(t *testing.T) {
	h := newHarness(t, nil)
	for _, path := range []string{"/proc/1/ns/net", "/var/run/netns/e2e-no-such-pod"} {
		before := mustLinks(t, "")
		p := &pod{name: "bad", path: path}
		if _, err := h.libAdd(p, "net1"); err == nil {
			t.Cleanup(func() { _ = h.libDel(p, "net1") })
			t.Errorf("ADD into %s succeeded", path)
		} else {
			t.Logf("ADD into %s: %v", path, err)
		}
		assertSame(t, "host", before, mustLinks(t, ""))
	}
	if r := h.records(); len(r) != 0 {
		t.Errorf("refused ADDs left records: %v", r)
	}
}

// runtimeConfig.deviceID (a device plugin's PCI address, passed by multus
// through the deviceID capability) pins the PF.
func TestDeviceIDCapabilityPinsPF(t *testing.T) {
	h := newHarness(t, map[string]any{"capabilities": map[string]any{"deviceID": true}})
	p := h.newPod()
	before := mustLinks(t, "")
	rt := h.rt(p, "net1")
	rt.CapabilityArgs = map[string]any{"deviceID": pfs[1].PCI}
	t.Cleanup(func() {
		if err := h.cni.DelNetworkList(context.Background(), h.list, rt); err != nil {
			t.Errorf("DEL: %v", err)
		}
	})
	r, err := h.cni.AddNetworkList(context.Background(), h.list, rt)
	if err != nil {
		t.Fatalf("ADD with deviceID %s: %v", pfs[1].PCI, err)
	}
	var buf bytes.Buffer
	if err := r.PrintTo(&buf); err != nil {
		t.Fatal(err)
	}
	a := wholePF(p, "net1", pfs[1])
	assertAttached(t, a, decodeResult(t, buf.Bytes()))
	assertHostLost(t, before, a)
}

// pfNames restricts the pool: only the named PF is ever taken.
func TestPFNamesRestrictThePool(t *testing.T) {
	h := newHarness(t, map[string]any{"pfNames": []string{pfs[2].Name}})
	p := h.newPod()
	res := h.toolAdd(p, "net1")
	assertAttached(t, wholePF(p, "net1", pfs[2]), res)
	if _, err := h.libAdd(h.newPod(), "net1"); cniCode(err) != 11 {
		t.Errorf("second ADD with the only pool PF taken: got %v, want CNI error 11", err)
	}
}

// A pod whose netns died without a DEL leaves a stale record; the next ADD
// repairs it first: the PF and VFs get their names back on the host and the
// PF is free again, so the new pod gets it.
func TestAddRepairsStaleAttachment(t *testing.T) {
	h := newHarness(t, nil)
	dead := h.newPod()
	h.toolAdd(dead, "net1") // its DEL, registered as cleanup, must then be a no-op
	a := wholePF(dead, "net1", pfs[0])
	dead.remove()
	waitOnHost(t, a.pcis()...)

	p := h.newPod()
	res := h.toolAdd(p, "net1")
	b := wholePF(p, "net1", pfs[0])
	assertAttached(t, b, res)
	assertPodHolds(t, p, b.pcis()...)
	if n := len(h.records()); n != 1 {
		t.Errorf("state dir holds %d records after the repair, want 1: %v", n, h.records())
	}
}
