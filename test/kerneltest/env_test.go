package kerneltest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
)

// The fake tree must read, through pkg/sriov, the way /sys reads on a node:
// otherwise every kernel test built on it proves nothing about real hosts.
func TestFakeSysfsReadsLikeRealSysfs(t *testing.T) {
	e := New(t)
	pf := e.AddPFWithVFs("ens1f0", 10, map[int]bool{3: true})
	e.AddPlainNetdev("0000:05:00.0", "eno1")

	s := sriov.Sysfs{Root: e.SysfsRoot}
	pfs, err := s.PFs()
	if err != nil {
		t.Fatal(err)
	}
	if len(pfs) != 1 || pfs[0].PCIAddress != pf.PCI || pfs[0].Name != "ens1f0" || pfs[0].NumVFs != 10 || len(pfs[0].VFs) != 10 {
		t.Fatalf("discovered %+v, want only PF %s with 10 VFs", pfs, pf.PCI)
	}
	for i, vf := range pfs[0].VFs {
		if vf != (sriov.VF{Index: pf.VFs[i].Index, PCIAddress: pf.VFs[i].PCI, Name: pf.VFs[i].Name}) {
			t.Errorf("VF %d discovered as %+v, built as %+v", i, vf, pf.VFs[i])
		}
	}
	if pfs[0].VFs[3].Name != "" {
		t.Errorf("VF 3 was built without a netdev but shows %q", pfs[0].VFs[3].Name)
	}
	byAddr, err := s.PF(pf.PCI)
	if err != nil || byAddr.Name != "ens1f0" {
		t.Fatalf("PF by address: %+v %v", byAddr, err)
	}
	hostLinks := Links(t, e.Host)
	for _, name := range append(e.AllNames(), "eno1") {
		if _, ok := hostLinks[name]; !ok {
			t.Errorf("no real link %s in the host netns", name)
		}
	}
	e.RemoveVF(pf, 9)
	if s.DeviceExists(pf.VFs[9].PCI) {
		t.Errorf("removed VF still exists")
	}
	if got, _ := s.PF(pf.PCI); len(got.VFs) != 9 {
		t.Errorf("after removing a VF the PF has %d VFs, want 9", len(got.VFs))
	}
}

// A netns that something still holds open (here a second file through its
// path, as a plugin process forked meanwhile holds one) leaves no path and
// no mount on the host: a plain unmount would fail with EBUSY and leave it
// mounted there.
func TestRemoveNSWhileHeldLeavesNothingOnTheHost(t *testing.T) {
	RequireRoot(t)
	n, err := CreateNS()
	if err != nil {
		t.Fatal(err)
	}
	path := n.Path()
	// mountinfo names the mount point with symlinks resolved (/var/run is
	// one to /run on most hosts).
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	mountPoint := filepath.Join(dir, filepath.Base(path))
	held, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := unix.Unmount(path, 0); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("plain unmount while held: %v, want EBUSY (the case RemoveNS is for)", err)
	}
	if err := RemoveNS(n); err != nil {
		t.Errorf("RemoveNS while held: %v", err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("%s after RemoveNS: %v, want it gone", path, err)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), " "+mountPoint+" ") {
		t.Errorf("%s is still mounted", mountPoint)
	}
	if err := RemoveNS(n); err != nil {
		t.Errorf("RemoveNS twice: %v", err)
	}
}
