package sriov

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// fakeProc is a proc tree of test processes: pid -> fd link targets.
type fakeProc struct {
	t    *testing.T
	root string
}

func newFakeProc(t *testing.T) fakeProc { return fakeProc{t, t.TempDir()} }

func (p fakeProc) add(pid int, comm string, targets ...string) {
	p.t.Helper()
	dir := filepath.Join(p.root, fmt.Sprint(pid))
	for _, d := range []string{"fd", "fdinfo"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			p.t.Fatal(err)
		}
	}
	_ = os.WriteFile(filepath.Join(dir, "comm"), []byte(comm+"\n"), 0o644)
	for i, tg := range targets {
		if err := os.Symlink(tg, filepath.Join(dir, "fd", fmt.Sprint(i))); err != nil {
			p.t.Fatal(err)
		}
	}
}

func (p fakeProc) fdinfo(pid, fd int, text string) {
	p.t.Helper()
	path := filepath.Join(p.root, fmt.Sprint(pid), "fdinfo", fmt.Sprint(fd))
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

func holderStrings(t *testing.T, s Sysfs, proc string, vfs ...string) []string {
	t.Helper()
	hs, err := s.VFIOHolders(proc, vfs)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range hs {
		got = append(got, h.String())
	}
	slices.Sort(got)
	return got
}

func writeSys(t *testing.T, root, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(filepath.Join(root, path)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, path), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Without an IOMMU, vfio names the group noiommu-N: a descriptor of that
// node holds the VF as a group's does.
func TestVFIOHoldersNoIOMMUGroup(t *testing.T) {
	root := jobTree(t)
	writeSys(t, root, "class/vfio/noiommu-7/dev", "240:0\n")
	p := newFakeProc(t)
	p.add(20, "dpdk", "/dev/vfio/vfio", "/dev/vfio/noiommu-7")
	got := holderStrings(t, Sysfs{Root: root}, p.root, "0000:3b:10.1")
	want := []string{"VF 0000:3b:10.1 held by pid 20 (dpdk) through /dev/vfio/noiommu-7"}
	if !slices.Equal(got, want) {
		t.Errorf("holders = %q, want %q", got, want)
	}
}

// A VM monitor may close its group descriptor once it has the device's:
// that descriptor is an anonymous inode naming no device. It holds every
// VF on a vfio driver (vfio-pci or a variant) unless its fdinfo says which
// device it is; a VF on a netdev driver is never taken for held by it.
func TestVFIOHoldersDeviceDescriptorOnly(t *testing.T) {
	root := jobTree(t)
	// VF2 is on a vfio-pci variant driver, VF0 stays on igbvf.
	if err := os.MkdirAll(filepath.Join(root, "bus/pci/drivers/mlx5_vfio_pci"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../bus/pci/drivers/mlx5_vfio_pci", filepath.Join(root, "bus/pci/devices/0000:3b:10.2/driver")); err != nil {
		t.Fatal(err)
	}
	s := Sysfs{Root: root}
	if !s.OnVFIODriver("0000:3b:10.2") || !s.OnVFIODriver("0000:3b:10.1") || s.OnVFIODriver("0000:3b:10.0") {
		t.Fatalf("vfio drivers: VF0 %q, VF1 %q, VF2 %q", s.Driver("0000:3b:10.0"), s.Driver("0000:3b:10.1"), s.Driver("0000:3b:10.2"))
	}
	p := newFakeProc(t)
	p.add(30, "qemu-kvm", "/dev/kvm", anonVFIODevice)
	got := holderStrings(t, s, p.root, "0000:3b:10.0", "0000:3b:10.1", "0000:3b:10.2")
	want := []string{
		"VF 0000:3b:10.1 held by pid 30 (qemu-kvm) through anon_inode:[vfio-device]",
		"VF 0000:3b:10.2 held by pid 30 (qemu-kvm) through anon_inode:[vfio-device]",
	}
	if !slices.Equal(got, want) {
		t.Errorf("holders = %q, want %q", got, want)
	}
	if got := holderStrings(t, s, p.root, "0000:3b:10.0"); len(got) != 0 {
		t.Errorf("a VF on igbvf is held by a vfio device descriptor: %q", got)
	}

	// A kernel that names the device in fdinfo narrows it down.
	p.fdinfo(30, 1, "pos:\t0\nflags:\t02000002\nvfio-device-syspath: /sys/devices/pci0000:00/0000:3b:10.2\n")
	got = holderStrings(t, s, p.root, "0000:3b:10.1", "0000:3b:10.2")
	want = []string{"VF 0000:3b:10.2 held by pid 30 (qemu-kvm) through anon_inode:[vfio-device]"}
	if !slices.Equal(got, want) {
		t.Errorf("holders with fdinfo = %q, want %q", got, want)
	}
	p.fdinfo(30, 1, "vfio-device-syspath: /sys/devices/pci0000:00/0000:5e:10.0\n")
	if got := holderStrings(t, s, p.root, "0000:3b:10.1", "0000:3b:10.2"); len(got) != 0 {
		t.Errorf("a descriptor of another device is taken for a holder: %q", got)
	}
}

// A proc tree that shows a pid namespace other than the initial one hides
// processes that may hold a VF: no answer but an error.
func TestVFIOHoldersRefusesAPartialProc(t *testing.T) {
	s := Sysfs{Root: jobTree(t)}
	p := newFakeProc(t)
	// self/ns/pid is a file whose inode is not the initial namespace's.
	writeSys(t, p.root, "self/ns/pid", "")
	_, err := s.VFIOHolders(p.root, []string{"0000:3b:10.1"})
	if !errors.Is(err, ErrNotNodeProc) {
		t.Fatalf("VFIOHolders on a partial proc = %v, want ErrNotNodeProc", err)
	}
	// Nothing of vfio's among the VFs: nothing to look for, no error.
	if _, err := s.VFIOHolders(p.root, []string{"0000:3b:10.0"}); err != nil {
		t.Fatalf("VFIOHolders for a VF on igbvf: %v", err)
	}
}

// The real kernel: a process in a pid namespace of its own holds the
// group's character device through a node outside /dev/vfio (as a
// container with its own /dev would). It is found by device number in the
// node's /proc. The fake group's device number is /dev/full's (a node
// needs a real driver to be opened); other processes may have /dev/full
// open too, so only the child is asserted.
func TestVFIOHoldersByDeviceNumberInAnotherPIDNamespace(t *testing.T) {
	kerneltest.RequireRoot(t)
	if err := SeesEveryProcess("/proc"); err != nil {
		t.Skipf("skipped: the test itself runs outside the initial pid namespace: %v", err)
	}
	root := jobTree(t)
	writeSys(t, root, "class/vfio/7/dev", "1:7\n")
	node := filepath.Join(t.TempDir(), "vfio-7")
	if err := unix.Mknod(node, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 7))); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(node)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "60")
	cmd.Stdin = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	hs, err := Sysfs{Root: root}.VFIOHolders("/proc", []string{"0000:3b:10.1"})
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, h := range hs {
		if h.PID == cmd.Process.Pid {
			found = true
			if h.VF != "0000:3b:10.1" || !strings.Contains(h.Path, "(device 1:7)") {
				t.Errorf("holder %s, want VF 0000:3b:10.1 through device 1:7", h)
			}
		}
	}
	if !found {
		t.Fatalf("the child (pid %d in the node's /proc, pid 1 in its own namespace) is not a holder: %v", cmd.Process.Pid, hs)
	}
	// Its own view of itself is pid 1 in another namespace.
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/status"); err == nil &&
		!strings.Contains(string(b), "NSpid:\t"+strconv.Itoa(cmd.Process.Pid)+"\t1") {
		t.Errorf("the child is not in a pid namespace of its own:\n%s", b)
	}
}

// HoldGroups opens the group node of each VF on a vfio driver and nothing
// else; a group node this process cannot open is an error, never a pass.
func TestHoldGroups(t *testing.T) {
	kerneltest.RequireRoot(t)
	root := jobTree(t)
	writeSys(t, root, "class/vfio/7/dev", "1:7\n")
	s := Sysfs{Root: root}
	dev := t.TempDir()
	if _, err := s.HoldGroups(dev, []string{"0000:3b:10.1"}); err == nil {
		t.Fatal("a group whose node is missing was taken as held")
	}
	if err := os.MkdirAll(filepath.Join(dev, "vfio"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(dev, "vfio", "7"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 7))); err != nil {
		t.Fatal(err)
	}
	release, err := s.HoldGroups(dev, []string{"0000:3b:10.0", "0000:3b:10.1", "0000:3b:10.2"})
	if err != nil {
		t.Fatal(err)
	}
	fds := func() (n int) {
		ents, _ := os.ReadDir("/proc/self/fd")
		for _, e := range ents {
			if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); l == filepath.Join(dev, "vfio", "7") {
				n++
			}
		}
		return n
	}
	if n := fds(); n != 1 {
		t.Errorf("group 7 open %d times while held, want 1", n)
	}
	release()
	if n := fds(); n != 0 {
		t.Errorf("group 7 open %d times after release, want 0", n)
	}
}
