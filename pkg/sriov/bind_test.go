package sriov

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeKernel plays the kernel behind a jobTree's writable files, as far
// as binding goes: a driver's unbind file unbinds, and drivers_probe binds
// the driver driver_override names, else the one the device ID matches
// (igb for a PF, igbvf for a VF), and a VF of a PF whose
// sriov_drivers_autoprobe is 0 only through an override
// (pci_device_can_probe). It keeps every write, in order.
type fakeKernel struct {
	t      *testing.T
	root   string
	writes []string
}

func newFakeKernel(t *testing.T, root string) (*fakeKernel, Sysfs) {
	k := &fakeKernel{t: t, root: root}
	return k, Sysfs{Root: root, Kernel: k.write}
}

func (k *fakeKernel) dev(addr string) string {
	return filepath.Join(k.root, "bus", "pci", "devices", addr)
}

func (k *fakeKernel) write(path, value string) error {
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return err
	}
	rel, err := filepath.Rel(k.root, filepath.Join(dir, filepath.Base(path)))
	if err != nil {
		return err
	}
	k.writes = append(k.writes, rel+"="+strings.TrimSpace(value))
	switch {
	case rel == "bus/pci/drivers_probe":
		k.probe(value)
		return nil
	case filepath.Base(rel) == "unbind":
		return os.Remove(filepath.Join(k.dev(value), "driver"))
	}
	return os.WriteFile(path, []byte(value), 0o644)
}

func (k *fakeKernel) probe(addr string) {
	s := Sysfs{Root: k.root}
	if s.Driver(addr) != "" {
		return
	}
	override := s.DriverOverride(addr)
	drv := "igb"
	if pf, err := os.Readlink(filepath.Join(k.dev(addr), "physfn")); err == nil {
		drv = "igbvf"
		auto, _ := os.ReadFile(filepath.Join(k.dev(filepath.Base(pf)), "sriov_drivers_autoprobe"))
		if strings.TrimSpace(string(auto)) == "0" && override == "" {
			return
		}
	}
	if override != "" {
		drv = override
	}
	if err := os.Symlink("../../../bus/pci/drivers/"+drv, filepath.Join(k.dev(addr), "driver")); err != nil {
		k.t.Fatal(err)
	}
}

// bindAs puts a device of the tree on drv ("" for none) with override.
func (k *fakeKernel) bindAs(addr, drv, override string) {
	k.t.Helper()
	link := filepath.Join(k.dev(addr), "driver")
	_ = os.Remove(link)
	if drv != "" {
		if err := os.Symlink("../../../bus/pci/drivers/"+drv, link); err != nil {
			k.t.Fatal(err)
		}
	}
	if override == "" {
		override = "(null)"
	}
	if err := os.WriteFile(filepath.Join(k.dev(addr), "driver_override"), []byte(override+"\n"), 0o644); err != nil {
		k.t.Fatal(err)
	}
}

func (k *fakeKernel) want(addr, drv, override string) {
	k.t.Helper()
	s := Sysfs{Root: k.root}
	if got, gotOverride := s.Driver(addr), s.DriverOverride(addr); got != drv || gotOverride != override {
		k.t.Errorf("%s is on %q with driver_override %q, want %q and %q (writes: %q)", addr, got, gotOverride, drv, override, k.writes)
	}
}

// A VF that was on vfio-pci with its driver_override cleared at ADD (the
// bash plugin and kubevirtci's configure_vf_driver leave VFs so), and that
// the job's re-creation put on igbvf, goes back to vfio-pci: the probe
// goes through vfio-pci's override, which is then cleared again.
func TestRebindWithoutRecordedOverride(t *testing.T) {
	root := jobTree(t)
	k, s := newFakeKernel(t, root)
	vf := "0000:3b:10.1"
	k.bindAs(vf, "igbvf", "")
	if err := s.Rebind("0000:3b:00.0", vf, "vfio-pci", ""); err != nil {
		t.Fatal(err)
	}
	k.want(vf, "vfio-pci", "")
	dev := "devices/pci0000:00/" + vf + "/driver_override"
	want := []string{dev + "=vfio-pci", "bus/pci/drivers/igbvf/unbind=" + vf, "bus/pci/drivers_probe=" + vf, dev + "="}
	if !slices.Equal(k.writes, want) {
		t.Errorf("writes %q, want %q", k.writes, want)
	}
}

// A recorded override stays, and a VF already on its driver only gets its
// override back.
func TestRebindKeepsARecordedOverride(t *testing.T) {
	root := jobTree(t)
	k, s := newFakeKernel(t, root)
	vf := "0000:3b:10.2"
	if err := s.Rebind("0000:3b:00.0", vf, "vfio-pci", "vfio-pci"); err != nil {
		t.Fatal(err)
	}
	k.want(vf, "vfio-pci", "vfio-pci")
	k.writes = nil
	k.bindAs(vf, "vfio-pci", "")
	if err := s.Rebind("0000:3b:00.0", vf, "vfio-pci", "vfio-pci"); err != nil {
		t.Fatal(err)
	}
	k.want(vf, "vfio-pci", "vfio-pci")
	if len(k.writes) != 1 {
		t.Errorf("a VF on its driver was rebound: %q", k.writes)
	}
}

// With sriov_drivers_autoprobe 0 the kernel probes a VF only through an
// override: a VF that had igbvf and no override gets igbvf back.
func TestRebindWithAutoprobeOff(t *testing.T) {
	root := jobTree(t)
	k, s := newFakeKernel(t, root)
	if err := s.SetAutoprobe("0000:3b:00.0", false); err != nil {
		t.Fatal(err)
	}
	vf := "0000:3b:10.2" // no driver, as a VF created with autoprobe off
	if err := s.Rebind("0000:3b:00.0", vf, "igbvf", ""); err != nil {
		t.Fatal(err)
	}
	k.want(vf, "igbvf", "")
}

// A PF the job unbound gets its driver back; BindPF refuses anything that
// is not an SR-IOV PF.
func TestBindPF(t *testing.T) {
	root := jobTree(t)
	k, s := newFakeKernel(t, root)
	pf := "0000:3b:00.0"
	k.bindAs(pf, "", "")
	if err := s.BindPF(pf, "igb", ""); err != nil {
		t.Fatal(err)
	}
	k.want(pf, "igb", "")
	k.writes = nil
	for _, notPF := range []string{"0000:3b:10.0", "0000:99:00.0", "../3b:00.0"} {
		if err := s.BindPF(notPF, "igb", ""); err == nil {
			t.Errorf("BindPF(%s) succeeded", notPF)
		}
	}
	if len(k.writes) > 0 {
		t.Errorf("BindPF of no PF wrote %q", k.writes)
	}
}

// A VF the bash plugin left on vfio-pci with its override cleared goes to
// its default driver: no override during the probe, none after it.
func TestBindDefault(t *testing.T) {
	root := jobTree(t)
	k, s := newFakeKernel(t, root)
	vf := "0000:3b:10.1"
	k.bindAs(vf, "vfio-pci", "vfio-pci")
	got, err := s.BindDefault("0000:3b:00.0", vf)
	if err != nil || got != "igbvf" {
		t.Fatalf("BindDefault: %q %v", got, err)
	}
	k.want(vf, "igbvf", "")
	dev := "devices/pci0000:00/" + vf
	want := []string{dev + "/driver_override=", "bus/pci/drivers/vfio-pci/unbind=" + vf, "bus/pci/drivers_probe=" + vf}
	if !slices.Equal(k.writes, want) {
		t.Errorf("writes %q, want %q", k.writes, want)
	}
	// Autoprobe off: the kernel binds nothing, and BindDefault says so.
	if err := s.SetAutoprobe("0000:3b:00.0", false); err != nil {
		t.Fatal(err)
	}
	k.bindAs(vf, "vfio-pci", "")
	if _, err := s.BindDefault("0000:3b:00.0", vf); err == nil || !strings.Contains(err.Error(), "no driver after the probe") {
		t.Errorf("autoprobe off: %v", err)
	}
	k.writes = nil
	if _, err := s.BindDefault("0000:3b:00.0", "0000:3b:00.0"); err == nil || len(k.writes) > 0 {
		t.Errorf("BindDefault of the PF itself: %v, wrote %q", err, k.writes)
	}
}

// class gives a device of the tree its PCI class, as sysfs shows it.
func (k *fakeKernel) class(addr, class string) {
	k.t.Helper()
	if err := os.WriteFile(filepath.Join(k.dev(addr), "class"), []byte(class+"\n"), 0o644); err != nil {
		k.t.Fatal(err)
	}
}

// A PF whose own driver was unbound has no netdev, so class/net does not
// show it: Driverless finds it on the PCI bus. A PF on its driver, a VF
// without a driver and an SR-IOV function of another class (an NVMe
// drive) are not listed.
func TestDriverless(t *testing.T) {
	root := jobTree(t)
	k, s := newFakeKernel(t, root)
	for _, pf := range []string{"0000:3b:00.0", "0000:3c:00.0"} {
		k.class(pf, "0x020000")
	}
	k.class("0000:3b:10.2", "0x020000") // a VF on no driver
	k.bindAs("0000:3c:00.0", "", "")
	nvme := "0000:3c:10.2" // repurposed: an SR-IOV function of class 0x0108
	k.class(nvme, "0x010802")
	if err := os.Remove(filepath.Join(k.dev(nvme), "physfn")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(k.dev(nvme), "sriov_totalvfs"), []byte("4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := s.Driverless()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].PCIAddress != "0000:3c:00.0" || !got[0].Driverless || got[0].Name != "" ||
		got[0].TotalVFs != 7 || got[0].NumVFs != 3 {
		t.Fatalf("Driverless = %+v, want only PF 0000:3c:00.0 with its 3 VFs of 7", got)
	}
	if pfs, err := s.PFs(); err != nil || len(pfs) != 0 {
		t.Errorf("PFs (class/net) = %+v, %v: a PF without netdev is not there", pfs, err)
	}
}

// A PF without a driver is bound to its default driver through
// drivers_probe alone: driver_override is never written, so nothing is
// left for a later probe. One with an override is left alone, and a probe
// that binds nothing says so.
func TestBindDefaultPF(t *testing.T) {
	root := jobTree(t)
	k, s := newFakeKernel(t, root)
	pf := "0000:3c:00.0"
	k.bindAs(pf, "", "")
	got, err := s.BindDefaultPF(pf)
	if err != nil || got != "igb" {
		t.Fatalf("BindDefaultPF: %q %v", got, err)
	}
	k.want(pf, "igb", "")
	if want := []string{"bus/pci/drivers_probe=" + pf}; !slices.Equal(k.writes, want) {
		t.Errorf("writes %q, want %q", k.writes, want)
	}

	k.writes = nil
	k.bindAs(pf, "", "vfio-pci")
	if _, err := s.BindDefaultPF(pf); err == nil || !strings.Contains(err.Error(), `driver_override "vfio-pci"`) || len(k.writes) > 0 {
		t.Errorf("PF with an override: %v, wrote %q", err, k.writes)
	}
	k.want(pf, "", "vfio-pci")

	// No loaded driver claims it: the probe binds nothing.
	k.bindAs(pf, "", "")
	s.Kernel = func(path, value string) error { return nil }
	if _, err := s.BindDefaultPF(pf); err == nil || !strings.Contains(err.Error(), "no driver after the probe") {
		t.Errorf("probe that binds nothing: %v", err)
	}
	for _, notPF := range []string{"0000:3b:10.0", "0000:99:00.0"} {
		if _, err := s.BindDefaultPF(notPF); !errors.Is(err, ErrNotPF) {
			t.Errorf("BindDefaultPF(%s) = %v, want ErrNotPF", notPF, err)
		}
	}
}
