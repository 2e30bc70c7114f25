package sriov

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// jobTree is a PF with three VFs as a kind-sriov job leaves them: VF0 on
// igbvf, VF1 bound to vfio-pci by driver_override (IOMMU group 7), VF2
// with no driver; plus a second PF whose VF must never be touched through
// the first.
func jobTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mk := func(p string) { must(os.MkdirAll(filepath.Join(root, p), 0o755)) }
	ln := func(target, link string) { must(os.Symlink(target, filepath.Join(root, link))) }
	write := func(p, s string) { must(os.WriteFile(filepath.Join(root, p), []byte(s), 0o644)) }
	mk("class/net")
	mk("bus/pci/devices")
	for _, d := range []string{"igbvf", "vfio-pci", "igb"} {
		mk("bus/pci/drivers/" + d)
		write("bus/pci/drivers/"+d+"/unbind", "")
	}
	write("bus/pci/drivers_probe", "")
	mk("kernel/iommu_groups/7")
	dev := func(pci, drv, override string) string {
		d := "devices/pci0000:00/" + pci
		mk(d)
		ln("../../../"+d, "bus/pci/devices/"+pci)
		write(d+"/driver_override", override+"\n")
		if drv != "" {
			ln("../../../bus/pci/drivers/"+drv, d+"/driver")
		}
		return d
	}
	for i, pfAddr := range []string{"0000:3b:00.0", "0000:3c:00.0"} {
		pf := dev(pfAddr, "igb", "(null)")
		write(pf+"/sriov_totalvfs", "7\n")
		write(pf+"/sriov_numvfs", "3\n")
		write(pf+"/sriov_drivers_autoprobe", "1\n")
		for v, drv := range []string{"igbvf", "vfio-pci", ""} {
			vf := fmt.Sprintf("0000:%x:10.%d", 0x3b+i, v)
			override := "(null)"
			if drv == "vfio-pci" {
				override = "vfio-pci"
			}
			d := dev(vf, drv, override)
			ln("../"+pfAddr, d+"/physfn")
			ln("../"+vf, fmt.Sprintf("%s/virtfn%d", pf, v))
		}
	}
	ln("../../../kernel/iommu_groups/7", "devices/pci0000:00/0000:3b:10.1/iommu_group")
	mk("devices/pci0000:00/0000:3b:10.1/vfio-dev/vfio3")
	return root
}

func TestStateReadsDriversAndOverrides(t *testing.T) {
	s := Sysfs{Root: jobTree(t)}
	st, err := s.State("0000:3b:00.0")
	if err != nil {
		t.Fatal(err)
	}
	want := State{Driver: "igb", NumVFs: 3, Autoprobe: true, VFs: []VFState{
		{0, "0000:3b:10.0", "igbvf", ""},
		{1, "0000:3b:10.1", "vfio-pci", "vfio-pci"},
		{2, "0000:3b:10.2", "", ""},
	}}
	if fmt.Sprint(st) != fmt.Sprint(want) {
		t.Errorf("State = %+v, want %+v", st, want)
	}
}

// A tampered record names another PF's VF, the other PF, the PF itself or
// a path: every write refuses before touching a file.
func TestWritesTouchOnlyThisPFsVFs(t *testing.T) {
	root := jobTree(t)
	s := Sysfs{Root: root}
	snapshot := func() map[string]string {
		m := map[string]string{}
		_ = filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				b, _ := os.ReadFile(p)
				m[p] = string(b)
			}
			return nil
		})
		return m
	}
	before := snapshot()
	pf := "0000:3b:00.0"
	for _, vf := range []string{"0000:3c:10.1", "0000:3c:00.0", pf, "../../3c:10.1", "0000:3b:10.1/../0000:3c:10.1"} {
		if err := s.Rebind(pf, vf, "igbvf", ""); !errors.Is(err, ErrNotVF) {
			t.Errorf("Rebind(%s, %s) = %v, want ErrNotVF", pf, vf, err)
		}
	}
	for _, notPF := range []string{"0000:3b:10.0", "0000:99:00.0", "../3b:00.0"} {
		if err := s.SetNumVFs(notPF, 0); !errors.Is(err, ErrNotPF) {
			t.Errorf("SetNumVFs(%s) = %v, want ErrNotPF", notPF, err)
		}
		if err := s.SetAutoprobe(notPF, false); !errors.Is(err, ErrNotPF) {
			t.Errorf("SetAutoprobe(%s) = %v, want ErrNotPF", notPF, err)
		}
	}
	after := snapshot()
	for p, v := range before {
		if after[p] != v {
			t.Errorf("%s changed from %q to %q", p, v, after[p])
		}
	}
}

// Rebind writes driver_override, the old driver's unbind, drivers_probe and
// driver_override again (its recorded value), and only for the vetted VF
// (the fake files just keep the last value written; bind_test.go plays the
// kernel's part, and the kernel's own answer is checked in the VM).
func TestRebindWritesTheVFsFiles(t *testing.T) {
	root := jobTree(t)
	s := Sysfs{Root: root}
	vf := "0000:3b:10.1"
	err := s.Rebind("0000:3b:00.0", vf, "igbvf", "")
	// The fake tree has no kernel behind it: the VF stays on vfio-pci.
	if err == nil {
		t.Fatal("Rebind reported success though the driver did not change")
	}
	read := func(p string) string {
		b, _ := os.ReadFile(filepath.Join(root, p))
		return string(b)
	}
	if got := read("devices/pci0000:00/" + vf + "/driver_override"); got != "\n" {
		t.Errorf("driver_override = %q, want cleared", got)
	}
	if got := read("bus/pci/drivers/vfio-pci/unbind"); got != vf {
		t.Errorf("vfio-pci/unbind = %q, want %s", got, vf)
	}
	if got := read("bus/pci/drivers_probe"); got != vf {
		t.Errorf("drivers_probe = %q, want %s", got, vf)
	}
	if got := read("bus/pci/drivers/igbvf/unbind"); got != "" {
		t.Errorf("igbvf/unbind written: %q", got)
	}
}

// Holders are found through the group node and the iommufd device node;
// other fds and other groups are not holders.
func TestVFIOHolders(t *testing.T) {
	s := Sysfs{Root: jobTree(t)}
	proc := t.TempDir()
	proc1 := func(pid int, comm string, targets ...string) {
		dir := filepath.Join(proc, fmt.Sprint(pid))
		if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
			t.Fatal(err)
		}
		_ = os.WriteFile(filepath.Join(dir, "comm"), []byte(comm+"\n"), 0o644)
		for i, tg := range targets {
			if err := os.Symlink(tg, filepath.Join(dir, "fd", fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	proc1(10, "qemu", "/dev/null", "/dev/vfio/vfio", "/dev/vfio/7")
	proc1(11, "vm", "/dev/vfio/devices/vfio3")
	proc1(12, "other", "/dev/vfio/8", "/dev/vfio/devices/vfio4")
	got := holderStrings(t, s, proc, "0000:3b:10.0", "0000:3b:10.1", "0000:3b:10.2")
	want := []string{
		"VF 0000:3b:10.1 held by pid 10 (qemu) through /dev/vfio/7",
		"VF 0000:3b:10.1 held by pid 11 (vm) through /dev/vfio/devices/vfio3",
	}
	if !slices.Equal(got, want) {
		t.Errorf("holders = %q, want %q", got, want)
	}
}

// A process whose open files cannot be listed (no ptrace access, here an
// fd entry that is not a directory) may hold a VF: the answer is an error,
// never "no holders".
func TestVFIOHoldersUnreadableProcess(t *testing.T) {
	s := Sysfs{Root: jobTree(t)}
	proc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(proc, "99"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, "99", "fd"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.VFIOHolders(proc, []string{"0000:3b:10.1"}); err == nil {
		t.Error("a process whose fds could not be listed was taken for no holder")
	}
}
