package sriov

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Holder is a process that has a VF open through vfio, or may have.
type Holder struct {
	VF   string // PCI address
	PID  int
	Comm string
	Path string // what its file descriptor names
}

func (h Holder) String() string {
	return fmt.Sprintf("VF %s held by pid %d (%s) through %s", h.VF, h.PID, h.Comm, h.Path)
}

// anonVFIODevice is what /proc/<pid>/fd/N reads for a vfio device file
// descriptor obtained from a group (VFIO_GROUP_GET_DEVICE_FD): an
// anonymous inode that names no device, so it may be any VF on a vfio
// driver. It is the descriptor that pins the device: a VM monitor may
// close the group's descriptor once it has it.
const anonVFIODevice = "anon_inode:[vfio-device]"

// vfioNode is one character device through which a VF can be reached from
// user space: its IOMMU group (/dev/vfio/N, or /dev/vfio/noiommu-N when
// vfio runs without an IOMMU) or, on kernels with vfio device cdevs, its
// /dev/vfio/devices/vfioM (iommufd).
type vfioNode struct {
	vf   string
	path string // where devtmpfs puts it
	rdev uint64 // its device number; 0 when sysfs does not say
}

// vfioNodes lists the vfio character devices of the VFs, as sysfs names
// them: a group's node exists (class/vfio/<name>) while any device of the
// group is bound to a vfio driver, whichever one, and a cdev lives under
// the device itself. The device numbers come from the same sysfs
// entries' dev files, so a descriptor is matched whatever path it was
// opened through (a /dev mounted elsewhere in a container, a node made
// with mknod).
func (s Sysfs) vfioNodes(vfs []string) []vfioNode {
	var nodes []vfioNode
	for _, vf := range vfs {
		dev := s.DevicePath(vf)
		if g, err := os.Readlink(filepath.Join(dev, "iommu_group")); err == nil {
			group := filepath.Base(g)
			for _, name := range []string{group, "noiommu-" + group} {
				rdev, err := readDevNumber(filepath.Join(s.Root, "class", "vfio", name, "dev"))
				if err == nil || name == group {
					nodes = append(nodes, vfioNode{vf: vf, path: "/dev/vfio/" + name, rdev: rdev})
				}
			}
		}
		cdevs, _ := os.ReadDir(filepath.Join(dev, "vfio-dev"))
		for _, c := range cdevs {
			rdev, _ := readDevNumber(filepath.Join(dev, "vfio-dev", c.Name(), "dev"))
			nodes = append(nodes, vfioNode{vf: vf, path: "/dev/vfio/devices/" + c.Name(), rdev: rdev})
		}
	}
	return nodes
}

// OnVFIODriver reports whether a PCI function is bound to a vfio driver:
// vfio-pci or one of its variants (mlx5_vfio_pci, hisi_acc_vfio_pci,
// virtio_vfio_pci...), which all register the device with vfio.
func (s Sysfs) OnVFIODriver(addr string) bool {
	return strings.Contains(s.Driver(addr), "vfio")
}

// VFIOHolders lists the processes (from the proc tree at procRoot) that
// have, or may have, one of the VFs open through vfio. Unbinding the
// driver of such a VF, or removing it by lowering sriov_numvfs, does not
// fail: the kernel waits, uninterruptibly, until the process lets go, and
// every reader of sriov_numvfs waits behind it. Looking first is the only
// way not to hang, so every doubt counts as a holder or an error:
//   - a descriptor of the VF's group or cdev, matched by device number
//     and by path;
//   - an anonymous vfio device descriptor, which names no device, held by
//     anyone while one of the VFs is on a vfio driver;
//   - a process whose descriptors cannot be read (no ptrace access);
//   - a /proc that shows only part of the node's processes (not the
//     initial pid namespace's): the holder may be one it does not show.
//
// An open group descriptor alone does not block the kernel, but it is how
// a VM monitor gets at the device, so it counts too.
func (s Sysfs) VFIOHolders(procRoot string, vfs []string) ([]Holder, error) {
	nodes := s.vfioNodes(vfs)
	var onVFIO []string
	for _, vf := range vfs {
		if s.OnVFIODriver(vf) {
			onVFIO = append(onVFIO, vf)
		}
	}
	if len(nodes) == 0 && len(onVFIO) == 0 {
		return nil, nil // nothing of vfio's: no process can hold them
	}
	if err := SeesEveryProcess(procRoot); err != nil {
		return nil, err
	}
	byPath, byRdev := map[string]string{}, map[uint64]string{}
	for _, n := range nodes {
		byPath[n.path] = n.vf
		if n.rdev != 0 {
			byRdev[n.rdev] = n.vf
		}
	}
	procs, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var out []Holder
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		held, err := heldBy(filepath.Join(procRoot, p.Name()), byPath, byRdev, onVFIO)
		if errors.Is(err, fs.ErrNotExist) {
			continue // gone meanwhile
		}
		if err != nil {
			// Without ptrace access to a process (a container without
			// CAP_SYS_PTRACE) its fds are unknown: it may hold a VF, and
			// guessing wrong hangs the node.
			return nil, fmt.Errorf("cannot see the open files of pid %d: %w", pid, err)
		}
		if len(held) == 0 {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join(procRoot, p.Name(), "comm"))
		for _, h := range held {
			h.PID, h.Comm = pid, strings.TrimSpace(string(comm))
			out = append(out, h)
		}
	}
	return out, nil
}

// heldBy lists what one process holds of the VFs (without pid and comm).
func heldBy(proc string, byPath map[string]string, byRdev map[uint64]string, onVFIO []string) ([]Holder, error) {
	fdDir := filepath.Join(proc, "fd")
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return nil, err
	}
	var out []Holder
	for _, fd := range fds {
		link := filepath.Join(fdDir, fd.Name())
		target, err := os.Readlink(link)
		if err != nil {
			continue // closed meanwhile
		}
		if target == anonVFIODevice {
			for _, vf := range anonHeld(filepath.Join(proc, "fdinfo", fd.Name()), onVFIO) {
				out = append(out, Holder{VF: vf, Path: target})
			}
			if len(out) > 0 {
				return out, nil
			}
			continue
		}
		if vf, ok := byPath[target]; ok {
			return append(out, Holder{VF: vf, Path: target}), nil
		}
		if len(byRdev) == 0 || !strings.HasPrefix(target, "/") {
			continue
		}
		// stat follows the descriptor to the file it has open, whatever
		// path it was opened by.
		var st unix.Stat_t
		if err := unix.Stat(link, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
			continue
		}
		if vf, ok := byRdev[st.Rdev]; ok {
			return append(out, Holder{VF: vf, Path: fmt.Sprintf("%s (device %d:%d)", target, unix.Major(st.Rdev), unix.Minor(st.Rdev))}), nil
		}
	}
	return out, nil
}

// anonHeld says which of the VFs on a vfio driver an anonymous vfio device
// descriptor may be. Newer kernels (vfio's fdinfo patch of 2025) print the
// device's sysfs path in the descriptor's fdinfo ("vfio-device-syspath:
// /sys/devices/.../<pci>"); older ones (6.1, 6.12) say nothing, and then it
// may be any of them.
func anonHeld(fdinfo string, onVFIO []string) []string {
	b, err := os.ReadFile(fdinfo)
	if err != nil {
		return onVFIO
	}
	for line := range strings.Lines(string(b)) {
		if path, ok := strings.CutPrefix(line, "vfio-device-syspath:"); ok {
			dev := filepath.Base(strings.TrimSpace(path))
			for _, vf := range onVFIO {
				if vf == dev {
					return []string{vf}
				}
			}
			return nil
		}
	}
	return onVFIO
}

// initPIDNamespaceIno is the inode number of the initial pid namespace's
// nsfs file (PROC_PID_INIT_INO); every other pid namespace gets another.
const initPIDNamespaceIno = 0xEFFFFFFC

// ErrNotNodeProc says a proc tree does not show every process of the node.
var ErrNotNodeProc = errors.New("this process is not in the node's initial pid namespace, so /proc does not show every process that may hold a VF")

// SeesEveryProcess checks that the proc tree shows the whole machine: the
// process it calls "self" (this one, unless the proc tree belongs to a pid
// namespace this process is not in) is in the initial pid namespace. A
// proc tree other than /proc without a "self" entry is a test's fake one
// and is taken as it is.
//
// Looking for kernel threads is not enough: in a pid namespace of its
// own, a multi-threaded pid 1 (the agent as its container's entrypoint)
// has threads 2, 3, ... whose /proc/<tid>/status read like kthreadd's
// (parent 0).
func SeesEveryProcess(procRoot string) error {
	var st unix.Stat_t
	err := unix.Stat(filepath.Join(procRoot, "self", "ns", "pid"), &st)
	if errors.Is(err, unix.ENOENT) && procRoot != "/proc" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cannot tell which processes %s shows: %w", procRoot, err)
	}
	if st.Ino != initPIDNamespaceIno {
		return ErrNotNodeProc
	}
	return nil
}

// readDevNumber reads a sysfs dev file ("major:minor").
func readDevNumber(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	maj, min, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	if !ok {
		return 0, fmt.Errorf("%s: %q is not major:minor", path, b)
	}
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%s: %q is not major:minor", path, b)
	}
	return unix.Mkdev(uint32(ma), uint32(mi)), nil
}

// ErrGroupBusy says a VF's vfio group is open in another process.
var ErrGroupBusy = errors.New("vfio group is open in another process")

// HoldGroups opens the vfio group of each VF that has one (under devRoot,
// "/dev" on a node) and keeps it open until release is called. It closes
// the window between looking for holders and writing to sysfs: a vfio
// group can be open in one process at a time (the kernel answers EBUSY to
// a second open), and while it is open here no process can get a device
// descriptor through it, nor open the VF's cdev (vfio blocks a device's
// cdev while its group is open). A group descriptor without a container
// does not itself hold the device, so the unbind or the sriov_numvfs
// write that follows does not wait for it. A group that cannot be opened
// here (busy, or no /dev/vfio in this mount namespace, or not allowed by
// the device cgroup) is an error: the caller must not write.
func (s Sysfs) HoldGroups(devRoot string, vfs []string) (release func(), err error) {
	var held []*os.File
	release = func() {
		for _, f := range held {
			f.Close()
		}
	}
	seen := map[string]bool{}
	for _, n := range s.vfioNodes(vfs) {
		if n.rdev == 0 || seen[n.path] || strings.HasPrefix(n.path, "/dev/vfio/devices/") {
			continue // no group node (no vfio driver in the group), or a cdev
		}
		seen[n.path] = true
		path := filepath.Join(devRoot, strings.TrimPrefix(n.path, "/dev/"))
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if errors.Is(err, unix.EBUSY) {
			release()
			return nil, fmt.Errorf("VF %s: %s: %w", n.vf, n.path, ErrGroupBusy)
		}
		if err != nil {
			release()
			return nil, fmt.Errorf("VF %s: hold its vfio group: %w", n.vf, err)
		}
		held = append(held, f)
	}
	return release, nil
}
