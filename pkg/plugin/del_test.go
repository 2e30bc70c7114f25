package plugin

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

func TestDelRestoresNamesMTUAndStateThenSecondDelSucceeds(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 3)
	if err := e.Host.Do(func(ns.NetNS) error {
		l, _ := netlink.LinkByName(pf.Name)
		if err := netlink.LinkSetMTU(l, 9000); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	}); err != nil {
		t.Fatal(err)
	}
	pod := e.NewPod()
	conf := e.Conf(nil)
	add(t, e, pod, "c1", "net1", conf)
	// The workload changes the PF's MTU inside the pod.
	if err := pod.Do(func(ns.NetNS) error {
		l, _ := netlink.LinkByName("net1")
		return netlink.LinkSetMTU(l, 1400)
	}); err != nil {
		t.Fatal(err)
	}

	del(t, e, pod, "c1", "net1", conf)

	assertHostIntact(t, e)
	host := kerneltest.Links(t, e.Host)
	if a := host[pf.Name].Attrs(); a.MTU != 9000 || a.Flags&net.FlagUp == 0 {
		t.Errorf("PF MTU %d up=%v, want 9000 and up", a.MTU, a.Flags&net.FlagUp != 0)
	}
	if got := kerneltest.Links(t, pod); len(got) != 0 {
		t.Errorf("pod still has %v", names(got))
	}
	del(t, e, pod, "c1", "net1", conf)
}

func TestDelWithoutRecordOrNetns(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 1)
	a := args(nil, "never-added", "net1", e.Conf(nil))
	a.Netns = ""
	if _, err := call(t, e, "DEL", a); err != nil {
		t.Fatalf("DEL without record and netns: %v", err)
	}
	a.Netns = "/var/run/netns/gone-sriovpt"
	if _, err := call(t, e, "DEL", a); err != nil {
		t.Fatalf("DEL with a missing netns path: %v", err)
	}
}

func TestDelAfterPodRenamedPF(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 2)
	pod := e.NewPod()
	conf := e.Conf(nil)
	add(t, e, pod, "c1", "net1", conf)
	// The workload renames the PF and swaps a VF's name to one the host uses.
	if err := pod.Do(func(ns.NetNS) error {
		l, _ := netlink.LinkByName("net1")
		if err := netlink.LinkSetName(l, "workload0"); err != nil {
			return err
		}
		v, _ := netlink.LinkByName(pf.VFs[0].Name)
		return netlink.LinkSetName(v, pf.VFs[1].Name+"x")
	}); err != nil {
		t.Fatal(err)
	}
	del(t, e, pod, "c1", "net1", conf)
	assertHostIntact(t, e)
}

// When a pod's netns dies, the kernel hands physical netdevs back to
// init_net under the names they had inside, or devN on a clash. ifb links
// would die with the netns instead, so the test puts them back the way the
// kernel would, then deletes the netns.
func TestDelAfterNetnsDiedAndDevicesCameBack(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 2)
	e.AddPF("net1", 0) // a host device already called net1: the PF comes back as dev7
	pod := e.NewPod()
	conf := e.Conf(map[string]any{"pfNames": []string{"ens1f0"}})
	add(t, e, pod, "c1", "net1", conf)
	moveLink(t, pod, e.Host, pf.VFs[0].Name, "")
	moveLink(t, pod, e.Host, pf.VFs[1].Name, "")
	if err := pod.Do(func(ns.NetNS) error {
		l, _ := netlink.LinkByName("net1")
		return netlink.LinkSetName(l, "dev7")
	}); err != nil {
		t.Fatal(err)
	}
	moveLink(t, pod, e.Host, "dev7", "")
	kerneltest.DeleteNS(t, pod)

	a := args(nil, "c1", "net1", conf)
	a.Netns = pod.Path()
	if _, err := call(t, e, "DEL", a); err != nil {
		t.Fatal(err)
	}
	assertHostIntact(t, e)
}

func TestDelLeavesMissingDeviceForLaterRun(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 2)
	pod := e.NewPod()
	conf := e.Conf(nil)
	add(t, e, pod, "c1", "net1", conf)
	// The job moved a VF on into a nested netns (a kind node) that is
	// still alive at DEL time.
	nested := e.NewPod()
	moveLink(t, pod, nested, pf.VFs[1].Name, "eth1")

	del(t, e, pod, "c1", "net1", conf)

	host := kerneltest.Links(t, e.Host)
	for _, n := range []string{pf.Name, pf.VFs[0].Name} {
		if _, ok := host[n]; !ok {
			t.Errorf("%s not restored", n)
		}
	}
	rec := readRecord(t, e, "c1", "net1")
	if rec == nil || rec.Phase != state.Releasing || len(rec.Pending()) != 1 || rec.Pending()[0].PCIAddress != pf.VFs[1].PCI {
		t.Fatalf("want a releasing record with the nested VF pending, got %+v", rec)
	}
	// The PF is not handed out while its VF is missing.
	if _, err := call(t, e, "ADD", args(e.NewPod(), "c2", "net1", conf)); cniCode(t, err) != types.ErrTryAgainLater {
		t.Fatalf("want code 11 while a VF is missing, got %v", err)
	}
	// The nested netns dies; its VF comes back to the host as eth1.
	moveLink(t, nested, e.Host, "eth1", "")
	pod2 := e.NewPod()
	res := add(t, e, pod2, "c2", "net1", conf)
	if len(res.Interfaces) != 3 {
		t.Fatalf("the next ADD should repair the record and get PF + 2 VFs, got %+v", res.Interfaces)
	}
	del(t, e, pod2, "c2", "net1", conf)
	assertHostIntact(t, e)
}

func TestDelAfterVFWasRemoved(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 2)
	pod := e.NewPod()
	conf := e.Conf(nil)
	add(t, e, pod, "c1", "net1", conf)
	// The job lowered sriov_numvfs: VF 1's PCI function and netdev are gone.
	if err := pod.Do(func(ns.NetNS) error {
		l, _ := netlink.LinkByName(pf.VFs[1].Name)
		return netlink.LinkDel(l)
	}); err != nil {
		t.Fatal(err)
	}
	e.RemoveVF(pf, 1)
	del(t, e, pod, "c1", "net1", conf)
	assertNoRecords(t, e)
	host := kerneltest.Links(t, e.Host)
	if _, ok := host[pf.Name]; !ok {
		t.Errorf("PF not restored")
	}
}

func TestCheck(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 2)
	pod := e.NewPod()
	conf := e.Conf(nil)
	if _, err := call(t, e, "CHECK", args(pod, "c1", "net1", conf)); cniCode(t, err) != types.ErrUnknownContainer {
		t.Fatalf("CHECK before ADD: want code 3, got %v", err)
	}
	res := add(t, e, pod, "c1", "net1", conf)
	withPrev := e.Conf(map[string]any{"prevResult": res})
	for what, c := range map[string][]byte{"prevResult": withPrev, "the record's result": conf} {
		if _, err := call(t, e, "CHECK", args(pod, "c1", "net1", c)); err != nil {
			t.Fatalf("CHECK after ADD against %s: %v", what, err)
		}
	}
	// A VF the job moved away (or re-created, or rebound) is reported in
	// the log, not failed.
	moveLink(t, pod, e.Host, pf.VFs[0].Name, "")
	if _, err := call(t, e, "CHECK", args(pod, "c1", "net1", withPrev)); err != nil {
		t.Fatalf("CHECK with a VF gone: want success, got %v", err)
	}
	moveLink(t, e.Host, pod, pf.VFs[0].Name, "")

	// The PF is checked strictly against prevResult.
	lied := *res
	lied.Interfaces = []*current.Interface{{Name: "net1", Mac: "02:00:00:00:00:01", Sandbox: pod.Path()}}
	_, err := call(t, e, "CHECK", args(pod, "c1", "net1", e.Conf(map[string]any{"prevResult": &lied})))
	if cniCode(t, err) != types.ErrInternal || !strings.Contains(err.Error(), "the result says 02:00:00:00:00:01") {
		t.Fatalf("CHECK with another MAC in prevResult: want it named, got %v", err)
	}
	lied.Interfaces = []*current.Interface{{Name: "net1", Mac: pfOf(res).Mac, Sandbox: "/var/run/netns/other"}}
	_, err = call(t, e, "CHECK", args(pod, "c1", "net1", e.Conf(map[string]any{"prevResult": &lied})))
	if err == nil || !strings.Contains(err.Error(), `prevResult lists no interface "net1" in sandbox`) {
		t.Fatalf("CHECK with the PF in another sandbox in prevResult: want a refusal, got %v", err)
	}
	moveLink(t, pod, pod, "net1", "renamed")
	_, err = call(t, e, "CHECK", args(pod, "c1", "net1", withPrev))
	if err == nil || !strings.Contains(err.Error(), "PF "+pf.PCI+" (host name ens1f0) is not in the pod as \"net1\"") {
		t.Fatalf("CHECK with the PF renamed: want it named, got %v", err)
	}
	moveLink(t, pod, pod, "renamed", "net1")

	// An attachment whose ADD or DEL has not finished: try again later.
	r := readRecord(t, e, "c1", "net1")
	for _, phase := range []state.Phase{state.Adding, state.Releasing} {
		r.Phase = phase
		if err := (state.Store{Dir: e.StateDir}).Save(r); err != nil {
			t.Fatal(err)
		}
		if _, err := call(t, e, "CHECK", args(pod, "c1", "net1", withPrev)); cniCode(t, err) != types.ErrTryAgainLater {
			t.Fatalf("CHECK of an attachment %s: want code 11, got %v", phase, err)
		}
	}
	del(t, e, pod, "c1", "net1", conf)
	assertHostIntact(t, e)
}

func TestGCReleasesAttachmentsNotListed(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 1)
	e.AddPF("ens2f0", 1)
	e.AddPF("ens3f0", 1)
	conf := e.Conf(nil)
	keep := e.NewPod()
	add(t, e, keep, "keep", "net1", conf)
	add(t, e, e.NewPod(), "gone1", "net1", conf)
	add(t, e, e.NewPod(), "gone2", "net1", conf)

	gc := e.Conf(map[string]any{"cni.dev/valid-attachments": []map[string]string{{"containerID": "keep", "ifname": "net1"}}})
	if _, err := call(t, e, "GC", args(nil, "", "", gc)); err != nil {
		t.Fatal(err)
	}
	if readRecord(t, e, "keep", "net1") == nil || readRecord(t, e, "gone1", "net1") != nil || readRecord(t, e, "gone2", "net1") != nil {
		t.Fatalf("GC kept the wrong records")
	}
	if _, ok := kerneltest.Links(t, keep)["net1"]; !ok {
		t.Errorf("GC took the valid attachment's PF")
	}
	if _, err := call(t, e, "GC", args(nil, "", "", conf)); cniCode(t, err) != types.ErrInvalidNetworkConfig {
		t.Fatalf("GC without a valid-attachments list must refuse, got %v", err)
	}
	if readRecord(t, e, "keep", "net1") == nil {
		t.Fatalf("GC without a list released the valid attachment")
	}
	empty := e.Conf(map[string]any{"cni.dev/attachments": []map[string]string{}})
	if _, err := call(t, e, "GC", args(nil, "", "", empty)); err != nil {
		t.Fatal(err)
	}
	assertHostIntact(t, e)
}

func TestAddRepairsStaleAttachmentOfDeadPod(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 1)
	conf := e.Conf(nil)
	pod := e.NewPod()
	add(t, e, pod, "c1", "net1", conf)
	// Force-deleted pod: no DEL; the kernel returned the devices.
	moveLink(t, pod, e.Host, "net1", "")
	moveLink(t, pod, e.Host, pf.VFs[0].Name, "")
	kerneltest.DeleteNS(t, pod)

	pod2 := e.NewPod()
	res := add(t, e, pod2, "c2", "net1", conf)
	if pfOf(res).PciID != pf.PCI || readRecord(t, e, "c1", "net1") != nil {
		t.Fatalf("stale record not repaired before allocation")
	}
}

func TestAddRollsBackInterruptedAdd(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 1)
	conf := e.Conf(nil)
	pod := e.NewPod()
	add(t, e, pod, "c1", "net1", conf)
	// Make it look as if the ADD died before finishing.
	rec := readRecord(t, e, "c1", "net1")
	rec.Phase = state.Adding
	if err := (state.Store{Dir: e.StateDir}).Save(rec); err != nil {
		t.Fatal(err)
	}
	res := add(t, e, e.NewPod(), "c2", "net1", conf)
	if pfOf(res).PciID != pf.PCI {
		t.Fatalf("interrupted ADD not rolled back")
	}
}

func TestCorruptRecordIsSetAsideAndOthersWork(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 1)
	if err := os.MkdirAll(e.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(e.StateDir, state.Key("junk", "net1")+".json")
	writeFile(t, bad, `{"version":1,"containerID":"junk",`)
	add(t, e, e.NewPod(), "c1", "net1", e.Conf(nil))
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Errorf("corrupt record still in place")
	}
	aside, _ := filepath.Glob(bad + ".bad-*")
	if len(aside) != 1 {
		t.Errorf("corrupt record not kept aside: %v", aside)
	}
}

func TestTamperedRecordMovesNothing(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 1)
	e.AddPlainNetdev("0000:05:00.0", "uplink0")
	conf := e.Conf(nil)
	pod := e.NewPod()
	add(t, e, pod, "c1", "net1", conf)
	// Someone edits the record to name the node's plain NIC as the PF.
	rec := readRecord(t, e, "c1", "net1")
	rec.Devices[0].PCIAddress = "0000:05:00.0"
	rec.Devices[0].OriginalName = "uplink0"
	if err := (state.Store{Dir: e.StateDir}).Save(rec); err != nil {
		t.Fatal(err)
	}
	del(t, e, pod, "c1", "net1", conf)
	if _, ok := kerneltest.Links(t, e.Host)["uplink0"]; !ok {
		t.Fatalf("the plain NIC was touched")
	}
	aside, _ := filepath.Glob(filepath.Join(e.StateDir, "*.bad-*"))
	if len(aside) != 1 {
		t.Errorf("tampered record not set aside: %v", aside)
	}
}

func TestStatus(t *testing.T) {
	e := kerneltest.New(t)
	if _, err := call(t, e, "STATUS", args(nil, "", "", e.Conf(nil))); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	e.SetNode(map[string]any{"sysfsRoot": "/nonexistent-sysfs"})
	_, err := call(t, e, "STATUS", args(nil, "", "", e.Conf(nil)))
	if cniCode(t, err) != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS with unreadable sysfs: want code 50, got %v", err)
	}
}

// A VF netdev that a job's re-creation (or rebind) brought back sits on
// the host under a kernel name without the plugin's tag, and a kernel
// before 5.14 (Debian 11's 5.10) names no parent device over netlink, as
// an ifb never has one: the host's sysfs, which lists it under the VF's
// PCI function, is what finds it. DEL gives it back its name.
func TestDelFindsAVFBackUnderAKernelNameThroughSysfs(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 2)
	pod := e.NewPod()
	conf := e.Conf(nil)
	add(t, e, pod, "c1", "net1", conf)
	vf := pf.VFs[1]
	e.NetdevAnew(vf, "eth7", dropNetdev(t, pod, vf.Name))

	del(t, e, pod, "c1", "net1", conf)
	assertHostIntact(t, e)
	if _, ok := kerneltest.Links(t, e.Host)["eth7"]; ok {
		t.Errorf("the VF's new netdev is still eth7")
	}
}

// dropNetdev deletes a VF's netdev in the pod, as the VF's re-creation
// or rebind does, and returns its MAC.
func dropNetdev(t *testing.T, pod ns.NetNS, name string) (mac net.HardwareAddr) {
	t.Helper()
	if err := pod.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr
		return netlink.LinkDel(l)
	}); err != nil {
		t.Fatal(err)
	}
	return mac
}
