package integration

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// inHostNS runs a command (ip, sysctl) in the test's host netns only.
func (w *world) inHostNS(args ...string) {
	w.t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + w.Host.Path()}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		w.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// The uplink topologies this host's kernel can build (macvlan, bridge,
// nexthop objects; 8021q and bonding are missing here, the VM suite covers
// them on a real PF), in the test's own netns: each PF that carries the
// node's traffic through a stacked device is refused, through the built
// binary, with the chain named; the one PF whose macvlan carries nothing is
// handed out. nexthop_compat_mode is set to 0 in that netns only, so the
// kernel reports nexthop-object routes with no link at all.
func TestUplinkTopologiesAreRefused(t *testing.T) {
	w := newWorld(t)
	for _, name := range []string{"mvpf", "brpf", "vfmv", "nhpf", "grppf"} {
		w.AddPF(name, 1)
	}
	free := w.AddPF("zfree", 1)
	w.inHostNS("sysctl", "-qw", "net.ipv4.nexthop_compat_mode=0")
	for _, l := range []string{"mvpf", "brpf", "vfmvv0", "nhpf", "grppf", "zfree"} {
		w.inHostNS("ip", "link", "set", l, "up")
	}
	// A macvlan on the PF holds the node's address.
	w.inHostNS("ip", "link", "add", "mv0", "link", "mvpf", "type", "macvlan", "mode", "bridge")
	w.inHostNS("ip", "addr", "add", "192.0.2.10/24", "dev", "mv0")
	// The PF is a bridge port; the bridge carries the default route.
	w.inHostNS("ip", "link", "add", "br1", "type", "bridge")
	w.inHostNS("ip", "link", "set", "brpf", "master", "br1")
	w.inHostNS("ip", "link", "set", "br1", "up")
	w.inHostNS("ip", "route", "add", "default", "dev", "br1")
	// A macvlan on a VF carries an IPv6 default route in another table.
	w.inHostNS("ip", "link", "add", "vfmv0", "link", "vfmvv0", "type", "macvlan")
	w.inHostNS("ip", "link", "set", "vfmv0", "up")
	w.inHostNS("ip", "-6", "route", "add", "default", "dev", "vfmv0", "table", "100")
	// IPv4 default route in table 200 through a nexthop object on the PF.
	w.inHostNS("ip", "nexthop", "add", "id", "11", "dev", "nhpf")
	w.inHostNS("ip", "route", "add", "default", "nhid", "11", "table", "200")
	// Main-table default route through a nexthop group, one member on a
	// macvlan of the PF.
	w.inHostNS("ip", "link", "add", "grpmv", "link", "grppf", "type", "macvlan")
	w.inHostNS("ip", "link", "set", "grpmv", "up")
	w.inHostNS("ip", "nexthop", "add", "id", "21", "dev", "grpmv")
	w.inHostNS("ip", "nexthop", "add", "id", "22", "group", "21")
	w.inHostNS("ip", "route", "add", "default", "nhid", "22", "table", "300")
	// A quiet macvlan on the free PF does not make it an uplink.
	w.inHostNS("ip", "link", "add", "zmv", "link", "zfree", "type", "macvlan")

	list := w.list(nil)
	pod := w.NewPod()
	res, err := w.add(list, rt(pod, "job1", "net1"))
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if pfOf(res).PciID != free.PCI {
		t.Fatalf("took %s, want the only PF that carries no node traffic, %s", pfOf(res).PciID, free.PCI)
	}
	_, err = w.add(list, rt(w.NewPod(), "job2", "net1"))
	var e *types.Error
	if !errors.As(err, &e) || e.Code != types.ErrTryAgainLater {
		t.Fatalf("second ADD: want code 11, got %v", err)
	}
	for _, want := range []string{
		"uplink: mvpf: its macvlan mv0 has global address 192.0.2.10",
		"uplink: brpf: its bridge br1 carries a default route",
		"uplink: its VF vfmvv0: its macvlan vfmv0 carries a default route",
		"uplink: nhpf carries a default route",
		"uplink: grppf: its macvlan grpmv carries a default route",
	} {
		if !strings.Contains(e.Details, want) {
			t.Errorf("refusal lacks %q: %s", want, e.Details)
		}
	}
	if got := kerneltest.Links(t, w.Host); got["mv0"] == nil || got["br1"] == nil {
		t.Errorf("the uplink devices changed: %v", names(got))
	}
	if err := w.del(list, rt(pod, "job1", "net1")); err != nil {
		t.Fatal(err)
	}
}

// reservedInterfaces, the reserved file and pfNames match a PF by any of
// its altnames (systemd's predictable name next to eth0), up to 127 bytes.
func TestNamesMatchAltNames(t *testing.T) {
	w := newWorld(t)
	long := "pci-0000-3b-00.0-" + strings.Repeat("n", 100)
	for _, name := range []string{"eth0", "eth1", "eth2", "eth3"} {
		w.AddPF(name, 1)
	}
	w.inHostNS("ip", "link", "property", "add", "dev", "eth0", "altname", "enp59s0f0np0")
	w.inHostNS("ip", "link", "property", "add", "dev", "eth1", "altname", long)
	w.inHostNS("ip", "link", "property", "add", "dev", "eth2", "altname", "enp61s0f0np0")
	w.inHostNS("ip", "link", "property", "add", "dev", "eth3", "altname", "enp62s0f0np0")
	file := filepath.Join(t.TempDir(), "reserved")
	if err := os.WriteFile(file, []byte("enp61s0f0np0 # by altname\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.setNode(map[string]any{"reservedInterfacesFile": file})
	list := w.list(map[string]any{"reservedInterfaces": []string{"enp59s0f0np0", long}})
	pod := w.NewPod()
	res, err := w.add(list, rt(pod, "job1", "net1"))
	if err != nil {
		t.Fatal(err)
	}
	if pfOf(res).PciID != w.PFs[3].PCI {
		t.Fatalf("took %s, want eth3, the only PF no altname reserves", pfOf(res).PciID)
	}
	_, err = w.add(list, rt(w.NewPod(), "job2", "net1"))
	for _, want := range []string{"eth0 (altname enp59s0f0np0) is reserved", "eth1 (altname " + long + ") is reserved", "eth2 (altname enp61s0f0np0) is reserved"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("refusal lacks %q: %v", want, err)
		}
	}
	if err := w.del(list, rt(pod, "job1", "net1")); err != nil {
		t.Fatal(err)
	}

	// pfNames by altname, a long one too, with the node reserving nothing.
	w.setNode(nil)
	for want, pfNames := range map[int][]string{1: {long}, 2: {"enp61s0f0np0"}} {
		res, err := w.add(w.list(map[string]any{"pfNames": pfNames}), rt(pod, "job3", "net1"))
		if err != nil || pfOf(res).PciID != w.PFs[want].PCI {
			t.Fatalf("pfNames %v: took %v (%v), want %s", pfNames, res, err, w.PFs[want].Name)
		}
		if err := w.del(list, rt(pod, "job3", "net1")); err != nil {
			t.Fatal(err)
		}
	}
}
