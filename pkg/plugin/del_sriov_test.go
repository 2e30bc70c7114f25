package plugin

import (
	"maps"
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

// fakeHolder makes a proc tree in which pid 4242 (qemu) has group's
// /dev/vfio node open, as a VM monitor does; remove it to let go.
func fakeHolder(t *testing.T, group string) (procRoot string, release func()) {
	t.Helper()
	procRoot = t.TempDir()
	dir := filepath.Join(procRoot, "4242")
	if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "comm"), []byte("qemu\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/vfio/"+group, filepath.Join(dir, "fd", "17")); err != nil {
		t.Fatal(err)
	}
	return procRoot, func() { _ = os.RemoveAll(dir) }
}

// A job bound a VF to vfio-pci and a VM still holds it when DEL comes:
// DEL succeeds with every netdev home, writes nothing to sysfs while the
// VF is held (the kernel would block), keeps the record with the reason,
// and ADD reports the PF busy naming the VF and the process. Once the
// holder is gone, GC gives the VF back to its driver.
func TestDelWithAVFHeldThroughVFIO(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 2)
	pod := e.NewPod()
	conf := e.Conf(nil)
	add(t, e, pod, "c1", "net1", conf)
	rec := readRecord(t, e, "c1", "net1")
	if rec.SRIOV == nil || rec.SRIOV.NumVFs != 2 || len(rec.SRIOV.VFs) != 2 {
		t.Fatalf("ADD recorded SR-IOV state %+v, want 2 VFs", rec.SRIOV)
	}
	// The job binds VF 1 to vfio-pci: its netdev goes away.
	if err := pod.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(pf.VFs[1].Name)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}); err != nil {
		t.Fatal(err)
	}
	e.BindVFIO(pf.VFs[1], 9)
	var release func()
	e.ProcRoot, release = fakeHolder(t, "9")
	unbind := filepath.Join(e.SysfsRoot, "bus", "pci", "drivers", "vfio-pci", "unbind")
	override := filepath.Join(e.SysfsRoot, "bus", "pci", "devices", pf.VFs[1].PCI, "driver_override")

	del(t, e, pod, "c1", "net1", conf)
	assertOnHost(t, e, pf.Name, pf.VFs[0].Name)
	if b, _ := os.ReadFile(unbind); strings.TrimSpace(string(b)) != "" {
		t.Errorf("vfio-pci unbind written while the VF is held: %q", b)
	}
	if b, _ := os.ReadFile(override); strings.TrimSpace(string(b)) != "vfio-pci" {
		t.Errorf("driver_override written while the VF is held: %q", b)
	}
	rec = readRecord(t, e, "c1", "net1")
	if rec == nil || rec.SRIOV == nil || !strings.Contains(rec.SRIOV.Blocked, "pid 4242 (qemu)") {
		t.Fatalf("record after DEL: %+v, want it kept with the holder named", rec)
	}

	_, err := call(t, e, "ADD", args(e.NewPod(), "c2", "net1", conf))
	if err == nil || cniCode(t, err) != types.ErrTryAgainLater {
		t.Fatalf("ADD while the only PF waits for its VF: %v, want code 11", err)
	}
	if msg := err.Error(); !strings.Contains(msg, pf.VFs[1].PCI) || !strings.Contains(msg, "pid 4242") {
		t.Errorf("code 11 does not say which VF is held by whom: %s", msg)
	}

	release()
	// The fake kernel does not rebind: GC's release writes the VF's files
	// and keeps the record until the VF's netdev is back, which only the
	// VM's real kernel does (test/e2e).
	if _, err := call(t, e, "GC", args(nil, "", "", e.Conf(map[string]any{"cni.dev/valid-attachments": []any{}}))); err != nil {
		t.Logf("GC: %v", err)
	}
	if b, _ := os.ReadFile(unbind); strings.TrimSpace(string(b)) != pf.VFs[1].PCI {
		t.Errorf("vfio-pci unbind = %q after the holder left, want %s", b, pf.VFs[1].PCI)
	}
	if b, _ := os.ReadFile(override); strings.TrimSpace(string(b)) != "" {
		t.Errorf("driver_override = %q after the holder left, want cleared", b)
	}
}

// A record written by the previous release (no SR-IOV state) whose VF was
// bound to vfio-pci meanwhile is released: the VF is left as it is, not
// waited for forever.
func TestDelOfPreviousReleaseRecord(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 2)
	pod := e.NewPod()
	conf := e.Conf(nil)
	add(t, e, pod, "c1", "net1", conf)
	rec := readRecord(t, e, "c1", "net1")
	rec.SRIOV = nil // as the previous release wrote it
	if err := (state.Store{Dir: e.StateDir}).Save(rec); err != nil {
		t.Fatal(err)
	}
	if err := pod.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(pf.VFs[1].Name)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}); err != nil {
		t.Fatal(err)
	}
	e.BindVFIO(pf.VFs[1], 9)
	del(t, e, pod, "c1", "net1", conf)
	assertNoRecords(t, e)
	assertOnHost(t, e, pf.Name, pf.VFs[0].Name)
}

func assertOnHost(t *testing.T, e *kerneltest.Env, names ...string) {
	t.Helper()
	host := kerneltest.Links(t, e.Host)
	for _, n := range names {
		if _, ok := host[n]; !ok {
			t.Errorf("%s is not home; the host has %v", n, slices.Sorted(maps.Keys(host)))
		}
	}
}
