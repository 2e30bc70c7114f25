package plugin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

func TestAddMovesPFAndAllVFs(t *testing.T) {
	e := kerneltest.New(t)
	pfA := e.AddPF("ens1f0", 3)
	e.AddPF("ens2f0", 2)
	pod := e.NewPod()
	hostBefore := kerneltest.Links(t, e.Host)

	res := add(t, e, pod, "c1", "net1", e.Conf(nil))

	podLinks := kerneltest.Links(t, pod)
	want := []string{"ens1f0v0", "ens1f0v1", "ens1f0v2", "net1"}
	if got := names(podLinks); !slices.Equal(got, want) {
		t.Fatalf("pod has %v, want %v", got, want)
	}
	if podLinks["net1"].Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("PF net1 is not up in the pod")
	}
	hostAfter := kerneltest.Links(t, e.Host)
	var lost []string
	for n := range hostBefore {
		if _, ok := hostAfter[n]; !ok {
			lost = append(lost, n)
		}
	}
	slices.Sort(lost)
	if want := []string{"ens1f0", "ens1f0v0", "ens1f0v1", "ens1f0v2"}; !slices.Equal(lost, want) {
		t.Errorf("host lost %v, want exactly %v", lost, want)
	}

	if len(res.Interfaces) != 4 {
		t.Fatalf("result has %d interfaces, want 4: %+v", len(res.Interfaces), res.Interfaces)
	}
	pf := pfOf(res)
	if pf.Name != "net1" || pf.PciID != pfA.PCI || pf.Sandbox != pod.Path() ||
		pf.Mac != hostBefore["ens1f0"].Attrs().HardwareAddr.String() || pf.Mtu != hostBefore["ens1f0"].Attrs().MTU {
		t.Errorf("PF entry %+v does not describe ens1f0 (%s) now net1 in %s", pf, pfA.PCI, pod.Path())
	}
	for i, vf := range pfA.VFs {
		got := res.Interfaces[i]
		if got.Name != vf.Name || got.PciID != vf.PCI || got.Mac != hostBefore[vf.Name].Attrs().HardwareAddr.String() {
			t.Errorf("VF %d entry %+v, want %s %s", i, got, vf.Name, vf.PCI)
		}
	}
	rec := readRecord(t, e, "c1", "net1")
	if rec == nil || rec.Phase != state.Attached || rec.Pod.String() != "ci/job-c1" || len(rec.Devices) != 4 {
		t.Fatalf("record %+v", rec)
	}
	if fi, err := os.Stat(filepath.Join(e.StateDir, state.Key("c1", "net1")+".json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("record mode: %v %v", fi.Mode(), err)
	}
	if fi, err := os.Stat(e.StateDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode: %v %v", fi.Mode(), err)
	}
}

func TestAddResultPerCNIVersion(t *testing.T) {
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			e := kerneltest.New(t)
			pf := e.AddPF("ens1f0", 1)
			pod := e.NewPod()
			out, err := call(t, e, "ADD", args(pod, "c1", "net1", e.Conf(map[string]any{"cniVersion": v})))
			if err != nil {
				t.Fatal(err)
			}
			var raw struct {
				CNIVersion string           `json:"cniVersion"`
				Interfaces []map[string]any `json:"interfaces"`
			}
			if err := json.Unmarshal(out, &raw); err != nil {
				t.Fatal(err)
			}
			// The VF, then the PF: multus v3.x names the attachment
			// after the last interface in the sandbox.
			if raw.CNIVersion != v || len(raw.Interfaces) != 2 || raw.Interfaces[0]["name"] != pf.VFs[0].Name ||
				raw.Interfaces[1]["name"] != "net1" || raw.Interfaces[1]["sandbox"] != pod.Path() || raw.Interfaces[1]["mac"] == "" {
				t.Fatalf("result %s, want %s then net1, both in %s", out, pf.VFs[0].Name, pod.Path())
			}
			_, hasPCI := raw.Interfaces[1]["pciID"]
			_, hasMTU := raw.Interfaces[1]["mtu"]
			if wantPCI := v == "1.1.0"; hasPCI != wantPCI || hasMTU != wantPCI {
				t.Errorf("pciID present=%v, mtu present=%v in %s result, want %v: %s", hasPCI, hasMTU, v, wantPCI, out)
			}
			if hasPCI && raw.Interfaces[1]["pciID"] != pf.PCI {
				t.Errorf("pciID %v, want %s", raw.Interfaces[1]["pciID"], pf.PCI)
			}
			del(t, e, pod, "c1", "net1", e.Conf(map[string]any{"cniVersion": v}))
			assertHostIntact(t, e)
		})
	}
}

func TestAddSkipsReservedAndUplinks(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("resconf", 1)
	e.AddPF("resfile", 1)
	e.AddPF("withaddr", 1)
	e.AddPF("withroute", 1)
	e.AddPF("enslaved", 1)
	vfUplink := e.AddPF("vfuplink", 1)
	free := e.AddPF("free0", 1)
	reservedFile := filepath.Join(t.TempDir(), "reserved")
	writeFile(t, reservedFile, "# node NICs\n\nresfile   # the storage NIC\n")
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(e.Host.Do(func(ns.NetNS) error {
		l, _ := netlink.LinkByName("withaddr")
		a, _ := netlink.ParseAddr("192.0.2.10/24")
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		r, _ := netlink.LinkByName("withroute")
		if err := netlink.LinkSetUp(r); err != nil {
			return err
		}
		_, dst, _ := net.ParseCIDR("0.0.0.0/0")
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: r.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		s, _ := netlink.LinkByName("enslaved")
		if err := netlink.LinkSetMaster(s, br); err != nil {
			return err
		}
		v, _ := netlink.LinkByName(vfUplink.VFs[0].Name)
		a6, _ := netlink.ParseAddr("2001:db8::5/64")
		return netlink.AddrAdd(v, a6)
	}))
	e.SetNode(map[string]any{"reservedInterfacesFile": reservedFile})
	conf := e.Conf(map[string]any{"reservedInterfaces": []string{"resconf"}})

	pod := e.NewPod()
	res := add(t, e, pod, "c1", "net1", conf)
	if pfOf(res).PciID != free.PCI {
		t.Fatalf("took %s, want the only free PF %s", pfOf(res).PciID, free.PCI)
	}

	_, err := call(t, e, "ADD", args(e.NewPod(), "c2", "net1", conf))
	if cniCode(t, err) != types.ErrTryAgainLater {
		t.Fatalf("want code 11, got %v", err)
	}
	msg := err.(*types.Error).Details
	for _, want := range []string{"resconf is reserved", "resfile is reserved", "withaddr has global address 192.0.2.10",
		"withroute carries a default route", "enslaved is a port of bridge br0", "its VF vfuplinkv0 has global address 2001:db8::5",
		"in use by pod ci/job-c1"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error details lack %q: %s", want, msg)
		}
	}

	for name, pci := range map[string]string{"resconf": e.PFs[0].PCI, "withaddr": e.PFs[2].PCI} {
		pinned := e.Conf(map[string]any{"reservedInterfaces": []string{"resconf"}, "pciBusID": pci})
		_, err := call(t, e, "ADD", args(e.NewPod(), "c3", "net1", pinned))
		if cniCode(t, err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "refused") {
			t.Errorf("pinned %s: want a refusal with code 7, got %v", name, err)
		}
	}
}

func TestAddNoFreePFChangesNothing(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 2)
	conf := e.Conf(nil)
	add(t, e, e.NewPod(), "c1", "net1", conf)
	hostBefore := names(kerneltest.Links(t, e.Host))
	pod2 := e.NewPod()

	_, err := call(t, e, "ADD", args(pod2, "c2", "net1", conf))

	if cniCode(t, err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "in use by pod ci/job-c1") {
		t.Fatalf("want code 11 naming the holder, got %v", err)
	}
	if got := names(kerneltest.Links(t, e.Host)); !slices.Equal(got, hostBefore) {
		t.Errorf("host changed: %v -> %v", hostBefore, got)
	}
	if got := kerneltest.Links(t, pod2); len(got) != 0 {
		t.Errorf("pod2 got %v", names(got))
	}
	if readRecord(t, e, "c2", "net1") != nil {
		t.Errorf("a record was left for the failed ADD")
	}
}

func TestAddTwoAttachmentsGetDifferentPFs(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 1)
	e.AddPF("ens2f0", 1)
	pod := e.NewPod()
	r1 := add(t, e, pod, "c1", "net1", e.Conf(nil))
	r2 := add(t, e, pod, "c1", "net2", e.Conf(nil))
	if pfOf(r1).PciID == pfOf(r2).PciID {
		t.Fatalf("both attachments got %s", pfOf(r1).PciID)
	}
	if pfOf(r1).PciID != e.PFs[0].PCI {
		t.Errorf("first ADD took %s, want the lowest PCI address %s", pfOf(r1).PciID, e.PFs[0].PCI)
	}
	if got := names(kerneltest.Links(t, pod)); !slices.Equal(got, []string{"ens1f0v0", "ens2f0v0", "net1", "net2"}) {
		t.Errorf("pod has %v", got)
	}
	// No deviceID: the kubelet did not allocate these PFs, and the agent
	// must not count them available (agent.PF.Healthy).
	if rec := readRecord(t, e, "c1", "net1"); !rec.Unpinned {
		t.Error("an ADD without deviceID recorded as pinned")
	}
}

func TestAddPinnedByDeviceID(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 1)
	second := e.AddPF("ens2f0", 1)
	conf := e.Conf(map[string]any{"runtimeConfig": map[string]any{"deviceID": second.PCI}})
	res := add(t, e, e.NewPod(), "c1", "net1", conf)
	if pfOf(res).PciID != second.PCI {
		t.Fatalf("took %s, want pinned %s", pfOf(res).PciID, second.PCI)
	}
	if rec := readRecord(t, e, "c1", "net1"); rec.Unpinned {
		t.Error("an ADD with the kubelet's deviceID recorded as unpinned")
	}
	_, err := call(t, e, "ADD", args(e.NewPod(), "c2", "net1", conf))
	if cniCode(t, err) != types.ErrTryAgainLater {
		t.Errorf("pinned busy PF: want code 11, got %v", err)
	}
	notPF := e.Conf(map[string]any{"pciBusID": "0000:99:00.0"})
	_, err = call(t, e, "ADD", args(e.NewPod(), "c3", "net1", notPF))
	if cniCode(t, err) != types.ErrInvalidNetworkConfig {
		t.Errorf("pinned non-PF: want code 7, got %v", err)
	}
}

func TestAddPFNamesRestrictsPool(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 0)
	e.AddPF("ens2f0", 0)
	res := add(t, e, e.NewPod(), "c1", "net1", e.Conf(map[string]any{"pfNames": []string{"ens2f0"}}))
	if pfOf(res).PciID != e.PFs[1].PCI {
		t.Fatalf("took %s, want ens2f0 %s", pfOf(res).PciID, e.PFs[1].PCI)
	}
}

func TestAddVFNameTakenInPodIsRenamed(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 2)
	pod := e.NewPod()
	// The pod already has a device named like VF 1.
	if err := pod.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: pf.VFs[1].Name}})
	}); err != nil {
		t.Fatal(err)
	}
	res := add(t, e, pod, "c1", "net1", e.Conf(nil))
	if res.Interfaces[1].Name != "net1v1" || res.Interfaces[0].Name != pf.VFs[0].Name {
		t.Fatalf("VF names %s %s, want %s net1v1", res.Interfaces[0].Name, res.Interfaces[1].Name, pf.VFs[0].Name)
	}
	del(t, e, pod, "c1", "net1", e.Conf(nil))
	assertHostIntact(t, e)
}

// The PF moves into the pod under its host name and is renamed there, one
// move; a pod that already has a link by that name makes the kernel refuse
// the move (EEXIST), and the PF goes through the transit netns instead.
func TestAddPFNameTakenInPodGoesThroughTransit(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 2)
	pod := e.NewPod()
	if err := pod.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: "ens1f0"}})
	}); err != nil {
		t.Fatal(err)
	}
	own := kerneltest.Links(t, pod)["ens1f0"].Attrs().Index
	add(t, e, pod, "c1", "net1", e.Conf(nil))
	podLinks := kerneltest.Links(t, pod)
	if got, want := names(podLinks), []string{"ens1f0", "ens1f0v0", "ens1f0v1", "net1"}; !slices.Equal(got, want) {
		t.Fatalf("pod has %v, want %v", got, want)
	}
	if podLinks["ens1f0"].Attrs().Index != own {
		t.Errorf("the pod's own ens1f0 was replaced")
	}
	del(t, e, pod, "c1", "net1", e.Conf(nil))
	assertHostIntact(t, e)
	if _, ok := kerneltest.Links(t, pod)["ens1f0"]; !ok {
		t.Errorf("the pod's own ens1f0 is gone after DEL")
	}
}

func TestAddVFWithoutNetdevIsLeftAlone(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPFWithVFs("ens1f0", 3, map[int]bool{1: true})
	pod := e.NewPod()
	res := add(t, e, pod, "c1", "net1", e.Conf(nil))
	if len(res.Interfaces) != 3 {
		t.Fatalf("want PF + 2 VFs, got %+v", res.Interfaces)
	}
	del(t, e, pod, "c1", "net1", e.Conf(nil))
	assertHostIntact(t, e)
}

func TestAddKeepsVFAdminState(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 2)
	if err := e.Host.Do(func(ns.NetNS) error {
		l, _ := netlink.LinkByName(pf.VFs[1].Name)
		return netlink.LinkSetUp(l)
	}); err != nil {
		t.Fatal(err)
	}
	pod := e.NewPod()
	add(t, e, pod, "c1", "net1", e.Conf(nil))
	links := kerneltest.Links(t, pod)
	if links[pf.VFs[0].Name].Attrs().Flags&net.FlagUp != 0 || links[pf.VFs[1].Name].Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("VF admin state not kept: v0 up=%v v1 up=%v", links[pf.VFs[0].Name].Attrs().Flags&net.FlagUp != 0,
			links[pf.VFs[1].Name].Attrs().Flags&net.FlagUp != 0)
	}
	del(t, e, pod, "c1", "net1", e.Conf(nil))
	host := kerneltest.Links(t, e.Host)
	if host[pf.VFs[1].Name].Attrs().Flags&net.FlagUp == 0 || host[pf.Name].Attrs().Flags&net.FlagUp != 0 {
		t.Errorf("host admin state not restored")
	}
}

func TestAddRefusesBadNetns(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 1)
	notNS := filepath.Join(t.TempDir(), "plainfile")
	writeFile(t, notNS, "")
	for name, path := range map[string]string{
		"missing":  "/var/run/netns/does-not-exist-sriovpt",
		"not a ns": notNS,
		"empty":    "",
		"host":     e.Host.Path(),
	} {
		a := args(nil, "c1", "net1", e.Conf(nil))
		a.Netns = path
		_, err := call(t, e, "ADD", a)
		if cniCode(t, err) != types.ErrInvalidNetNS {
			t.Errorf("%s netns: want code %d, got %v", name, types.ErrInvalidNetNS, err)
		}
	}
	assertHostIntact(t, e)
}

func TestAddRollsBackWhenALaterStepFails(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 3)
	pod := e.NewPod()
	// An IPAM plugin that does not exist fails after every device moved.
	t.Setenv("CNI_PATH", t.TempDir())
	conf := e.Conf(map[string]any{"ipam": map[string]any{"type": "no-such-ipam"}})
	_, err := call(t, e, "ADD", args(pod, "c1", "net1", conf))
	if err == nil || !strings.Contains(err.Error(), "no-such-ipam") {
		t.Fatalf("want the IPAM failure, got %v", err)
	}
	if got := kerneltest.Links(t, pod); len(got) != 0 {
		t.Errorf("pod kept %v after a failed ADD", names(got))
	}
	assertHostIntact(t, e)
}

// A repeated ADD for the same container and ifname is an error (the spec:
// the interface already exists): code 4 naming the attachment, which is
// left exactly as it was, in the same netns or another.
func TestAddRepeatedForSameAttachment(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 1)
	e.AddPF("ens2f0", 1)
	pod := e.NewPod()
	first := add(t, e, pod, "c1", "net1", e.Conf(nil))
	before := readRecord(t, e, "c1", "net1")
	inPod := pciIn(t, pod)
	for _, target := range []ns.NetNS{pod, e.NewPod()} {
		_, err := call(t, e, "ADD", args(target, "c1", "net1", e.Conf(nil)))
		if cniCode(t, err) != types.ErrInvalidEnvironmentVariables ||
			!strings.Contains(err.Error(), "container c1 already has an attachment on net1: PF "+pf.PCI+" (host name ens1f0), pod ci/job-c1, attached") {
			t.Fatalf("repeated ADD: want code 4 naming the attachment, got %v", err)
		}
		if after := readRecord(t, e, "c1", "net1"); !bytes.Equal(mustJSON(t, after), mustJSON(t, before)) {
			t.Errorf("record changed:\n%+v\n%+v", before, after)
		}
		if got := pciIn(t, pod); fmt.Sprint(got) != fmt.Sprint(inPod) {
			t.Errorf("pod changed: %v -> %v", inPod, got)
		}
	}
	if pfOf(first).PciID != pf.PCI || len(kerneltest.Links(t, e.Host)) != 2 {
		t.Errorf("the second PF moved: host has %v", names(kerneltest.Links(t, e.Host)))
	}
	del(t, e, pod, "c1", "net1", e.Conf(nil))
	assertHostIntact(t, e)
}

func TestAddExtendsPrevResult(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 1)
	prev := map[string]any{"cniVersion": "1.1.0", "interfaces": []map[string]any{{"name": "eth0", "sandbox": "/x"}},
		"ips": []map[string]any{{"address": "10.1.0.5/24", "interface": 0}}}
	res := add(t, e, e.NewPod(), "c1", "net1", e.Conf(map[string]any{"prevResult": prev}))
	if len(res.Interfaces) != 3 || res.Interfaces[0].Name != "eth0" || res.Interfaces[2].Name != "net1" ||
		len(res.IPs) != 1 || *res.IPs[0].Interface != 0 {
		t.Fatalf("prevResult not kept and extended: %s", mustJSON(t, res))
	}
}
