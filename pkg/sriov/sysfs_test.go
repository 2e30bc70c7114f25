package sriov

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// tree builds a sysfs-like layout: a PF with VFs, one VF without netdev,
// a plain NIC and a virtual netdev with no device link.
func tree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	mk := func(p string) {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ln := func(target, link string) {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, s string) {
		if err := os.WriteFile(filepath.Join(root, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("class/net")
	mk("bus/pci/devices")
	dev := func(pci string) string {
		d := "devices/pci0000:00/" + pci
		mk(d)
		ln("../../../"+d, "bus/pci/devices/"+pci)
		return d
	}
	netdev := func(pci, name string) {
		d := "devices/pci0000:00/" + pci + "/net/" + name
		mk(d)
		ln("../../", d+"/device")
		ln("../../"+d, "class/net/"+name)
	}
	pf := dev("0000:3b:00.0")
	write(pf+"/sriov_totalvfs", "7\n")
	write(pf+"/sriov_numvfs", "3\n")
	netdev("0000:3b:00.0", "ens1f0")
	for i := 2; i >= 0; i-- { // out of order on purpose
		vf := fmt.Sprintf("0000:3b:10.%d", i)
		dev(vf)
		ln("../"+vf, fmt.Sprintf("%s/virtfn%d", pf, i))
		if i != 1 {
			netdev(vf, fmt.Sprintf("ens1f0v%d", i))
		}
	}
	pf2 := dev("0000:1a:00.0")
	write(pf2+"/sriov_totalvfs", "8\n")
	write(pf2+"/sriov_numvfs", "0\n")
	netdev("0000:1a:00.0", "ens0")
	plain := dev("0000:05:00.0")
	write(plain+"/sriov_totalvfs", "0\n")
	netdev("0000:05:00.0", "eno1")
	mk("devices/virtual/net/lo")
	ln("../../devices/virtual/net/lo", "class/net/lo")
	return root
}

func TestPFs(t *testing.T) {
	s := Sysfs{Root: tree(t)}
	pfs, err := s.PFs()
	if err != nil {
		t.Fatal(err)
	}
	if len(pfs) != 2 || pfs[0].PCIAddress != "0000:1a:00.0" || pfs[1].PCIAddress != "0000:3b:00.0" {
		t.Fatalf("want the two PFs sorted by PCI address, got %+v", pfs)
	}
	pf := pfs[1]
	if pf.Name != "ens1f0" || pf.TotalVFs != 7 || pf.NumVFs != 3 || len(pf.VFs) != 3 {
		t.Fatalf("PF %+v", pf)
	}
	for i, want := range []VF{{0, "0000:3b:10.0", "ens1f0v0"}, {1, "0000:3b:10.1", ""}, {2, "0000:3b:10.2", "ens1f0v2"}} {
		if pf.VFs[i] != want {
			t.Errorf("VF %d = %+v, want %+v", i, pf.VFs[i], want)
		}
	}
}

// TestPFRefsThenRead checks that listing the PFs first and reading each
// one then gives what PFs gives.
func TestPFRefsThenRead(t *testing.T) {
	s := Sysfs{Root: tree(t)}
	refs, err := s.PFRefs()
	if err != nil {
		t.Fatal(err)
	}
	want := []PFRef{{"0000:1a:00.0", "ens0"}, {"0000:3b:00.0", "ens1f0"}}
	if fmt.Sprint(refs) != fmt.Sprint(want) {
		t.Fatalf("refs %v, want %v", refs, want)
	}
	all, err := s.PFs()
	if err != nil {
		t.Fatal(err)
	}
	for i, ref := range refs {
		pf, err := s.Read(ref)
		if err != nil || fmt.Sprintf("%+v", pf) != fmt.Sprintf("%+v", all[i]) {
			t.Errorf("Read(%v) = %+v, %v; PFs has %+v", ref, pf, err, all[i])
		}
	}
}

func TestPFByAddress(t *testing.T) {
	s := Sysfs{Root: tree(t)}
	pf, err := s.PF("0000:3b:00.0")
	if err != nil || pf.Name != "ens1f0" || len(pf.VFs) != 3 {
		t.Fatalf("PF: %+v %v", pf, err)
	}
	for _, addr := range []string{"0000:05:00.0", "0000:99:00.0", "0000:3b:10.0"} {
		if _, err := s.PF(addr); !errors.Is(err, ErrNotPF) {
			t.Errorf("%s: want ErrNotPF, got %v", addr, err)
		}
	}
	if !s.DeviceExists("0000:3b:10.1") || s.DeviceExists("0000:99:00.0") {
		t.Errorf("DeviceExists wrong")
	}
}

func TestPFsUnreadableSysfs(t *testing.T) {
	if _, err := (Sysfs{Root: filepath.Join(t.TempDir(), "none")}).PFs(); err == nil {
		t.Fatal("want an error for a missing sysfs")
	}
}
