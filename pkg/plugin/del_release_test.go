package plugin

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// squat makes a link called name on the host, as a VF that another job
// created while the plugin's device was away takes the lowest free kernel
// name; it returns a func that deletes it (the other job ends).
func squat(t *testing.T, e *kerneltest.Env, name string) (leave func()) {
	t.Helper()
	if err := e.Host.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}})
	}); err != nil {
		t.Fatalf("squat %s: %v", name, err)
	}
	return func() {
		t.Helper()
		if err := e.Host.Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			return netlink.LinkDel(l)
		}); err != nil {
			t.Fatalf("delete squatter %s: %v", name, err)
		}
	}
}

// Another job's VF holds the PF's kernel name when DEL comes: DEL brings
// the PF home anyway, under a temporary name, succeeds and keeps the
// record, saying why; ADD finds the PF busy. Once the name is free, the
// next DEL gives the PF its name and removes the record.
func TestDelParksADeviceWhoseNameIsTaken(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 2)
	pod := e.NewPod()
	conf := e.Conf(nil)
	add(t, e, pod, "c1", "net1", conf)
	leave := squat(t, e, pf.Name)

	for try := 0; try < 2; try++ {
		if _, err := call(t, e, "DEL", args(pod, "c1", "net1", conf)); err != nil {
			t.Fatalf("DEL %d while another device holds the PF's name: %v", try, err)
		}
	}
	host := pciIn(t, e.Host)
	if name, ok := host[pf.PCI]; !ok || !netdev.IsParked(name) {
		t.Fatalf("PF %s is on the host as %q (present %v), want it home under a temporary name", pf.PCI, name, ok)
	}
	assertOnHost(t, e, pf.VFs[0].Name, pf.VFs[1].Name)
	rec := readRecord(t, e, "c1", "net1")
	if rec == nil || rec.PF().Released || rec.PF().ParkedAs != host[pf.PCI] {
		t.Fatalf("record after DEL: %+v, want it kept with the PF parked as %s", rec, host[pf.PCI])
	}
	_, err := call(t, e, "ADD", args(e.NewPod(), "c2", "net1", conf))
	if err == nil || cniCode(t, err) != types.ErrTryAgainLater {
		t.Fatalf("ADD while the only PF is parked: %v, want code 11", err)
	}
	if !strings.Contains(err.Error(), "until another device lets go of its name") {
		t.Errorf("code 11 does not say the PF waits for its name: %v", err)
	}

	leave()
	del(t, e, pod, "c1", "net1", conf)
	assertHostIntact(t, e)
}

// The job's own extra VF (sriov_numvfs raised while the PF was away) holds
// a recorded VF's name: only the SR-IOV restore, which writes
// sriov_numvfs, removes it. The restore must run once the PF is home,
// without waiting for that VF.
func TestSRIOVRestoreRunsWhileAVFWaitsForItsName(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 2)
	pod := e.NewPod()
	conf := e.Conf(nil)
	add(t, e, pod, "c1", "net1", conf)
	// The job raised the VF count (0, then 3): the kernel removed the
	// VFs' netdevs from the pod and gave the new VFs netdevs on the host
	// under kernel names.
	numvfs := filepath.Join(e.SysfsRoot, "bus", "pci", "devices", pf.PCI, "sriov_numvfs")
	writeFile(t, numvfs, "3\n")
	for i, vf := range pf.VFs {
		e.NetdevAnew(vf, fmt.Sprintf("eth%d", 7+i), dropNetdev(t, pod, vf.Name))
	}
	leave := squat(t, e, pf.VFs[1].Name)
	defer leave()

	if _, err := call(t, e, "DEL", args(pod, "c1", "net1", conf)); err != nil {
		t.Fatalf("DEL while an extra VF holds a recorded VF's name: %v", err)
	}
	assertOnHost(t, e, pf.Name, pf.VFs[0].Name)
	if b, _ := os.ReadFile(numvfs); strings.TrimSpace(string(b)) != "2" {
		t.Errorf("sriov_numvfs = %q after DEL, want the recorded 2 written while a VF waits for its name", b)
	}
	if _, ok := pciIn(t, e.Host)[pf.VFs[1].PCI]; !ok {
		t.Errorf("VF %s is not on the host under any name", pf.VFs[1].PCI)
	}
}

// A kind-sriov job re-creates the VFs (sriov_numvfs 0, then its own
// count): the VFs' new netdevs sit on the host under kernel names when DEL
// comes. Writing the recorded count removes them all, so DEL re-creates
// the VFs first, with the PF home, and brings no VF netdev home before
// that: moving, renaming and re-addressing netdevs the write throws away
// cost the restore after a kind job twice the kernel's work on 6.12.
func TestDelRecreatesTheVFsBeforeAnyVFComesHome(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 2)
	pod := e.NewPod()
	conf := e.Conf(nil)
	add(t, e, pod, "c1", "net1", conf)
	writeFile(t, filepath.Join(e.SysfsRoot, "bus", "pci", "devices", pf.PCI, "sriov_numvfs"), "3\n")
	for i, vf := range pf.VFs {
		e.NetdevAnew(vf, fmt.Sprintf("eth%d", 7+i), dropNetdev(t, pod, vf.Name))
	}

	_, logs, err := callLogged(t, e, "DEL", args(pod, "c1", "net1", conf))
	if err != nil {
		t.Fatalf("DEL after the job re-created the VFs: %v", err)
	}
	assertHostIntact(t, e)
	recreated := strings.Index(logs, `msg="re-creating the PF's VFs"`)
	if recreated < 0 {
		t.Fatalf("DEL did not re-create the VFs:\n%s", logs)
	}
	for _, line := range strings.Split(logs[:recreated], "\n") {
		if strings.Contains(line, `msg="device back on the host"`) && !strings.Contains(line, "vf=-1") {
			t.Errorf("a VF came home before the VFs were re-created: %s", line)
		}
	}
}
