// Package sriov discovers SR-IOV physical functions and their virtual
// functions from sysfs.
//
// sysfs lists only the netdevs of the network namespace it was mounted for:
// /sys/class/net and /sys/bus/pci/devices/<addr>/net/ are empty for a device
// that sits in a pod. Discovery therefore answers "which PFs exist and which
// VFs belong to them" by PCI address; where a netdev is right now is for
// netlink to say.
package sriov

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
)

// Sysfs reads a sysfs tree mounted at Root ("/sys" on a node, a temp dir
// in tests).
type Sysfs struct {
	Root string
	// Kernel, set only by tests, stands in for the kernel behind the
	// tree's writable files: a fake tree cannot bind a driver on
	// drivers_probe, and the order of the writes is what a test checks.
	// nil writes the files (a node).
	Kernel func(path, value string) error
}

// PF is an SR-IOV physical function.
type PF struct {
	PCIAddress string
	// Name is the PF's netdev name in the netns sysfs was mounted for; ""
	// when the PF has no netdev there.
	Name     string
	TotalVFs int
	NumVFs   int
	VFs      []VF
	// Driverless: no driver is bound to the PF (a job or a person unbound
	// it), so it has no netdev anywhere and nothing can be handed out.
	// Only Driverless lists such PFs.
	Driverless bool
}

// VF is one virtual function of a PF.
type VF struct {
	Index      int
	PCIAddress string
	// Name is the VF's netdev name, "" when it has none in this netns (bound
	// to vfio-pci or no driver at all, or the netdev is elsewhere).
	Name string
}

// PFs lists every netdev under class/net whose PCI device can have VFs
// (sriov_totalvfs > 0), sorted by PCI address.
func (s Sysfs) PFs() ([]PF, error) {
	refs, err := s.PFRefs()
	if err != nil {
		return nil, err
	}
	pfs := make([]PF, 0, len(refs))
	for _, ref := range refs {
		pf, err := s.Read(ref)
		if err != nil {
			return nil, err
		}
		pfs = append(pfs, pf)
	}
	return pfs, nil
}

// PFRef is a PF as PFRefs lists it: where it is, not yet what VFs it has.
type PFRef struct {
	PCIAddress string
	// Name is the PF's netdev under class/net.
	Name string
}

// PFRefs is PFs without reading any PF's VFs: a few reads per netdev,
// where PFs reads two per VF, thousands on a node of several PFs. Read
// then reads the PFs one at a time.
func (s Sysfs) PFRefs() ([]PFRef, error) {
	entries, err := os.ReadDir(filepath.Join(s.Root, "class", "net"))
	if err != nil {
		return nil, fmt.Errorf("list network devices in sysfs: %w", err)
	}
	var refs []PFRef
	for _, e := range entries {
		dev := filepath.Join(s.Root, "class", "net", e.Name(), "device")
		total, err := readInt(filepath.Join(dev, "sriov_totalvfs"))
		if err != nil || total <= 0 {
			continue // virtual netdev, or a PCI device without SR-IOV
		}
		addr, err := pciAddressOf(dev)
		if err != nil {
			return nil, fmt.Errorf("resolve PCI address of %q: %w", e.Name(), err)
		}
		refs = append(refs, PFRef{PCIAddress: addr, Name: e.Name()})
	}
	sort.Slice(refs, func(i, j int) bool { return refs[i].PCIAddress < refs[j].PCIAddress })
	return refs, nil
}

// Driverless lists the SR-IOV PFs that no driver is bound to: network
// functions (PCI class 0x02) with sriov_totalvfs > 0, no driver and no
// netdev. With
// no driver a PF has no netdev, so class/net (PFs, PFRefs) never shows
// it; only the PCI bus does. A VF has no sriov_totalvfs, so it is never
// one. Sorted by PCI address.
func (s Sysfs) Driverless() ([]PF, error) {
	dir := filepath.Join(s.Root, "bus", "pci", "devices")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list PCI devices in sysfs: %w", err)
	}
	var pfs []PF
	for _, e := range entries {
		addr := e.Name()
		dev := filepath.Join(dir, addr)
		// One stat decides for almost every function (VFs, bridges,
		// storage): only an SR-IOV PF has the file.
		if _, err := os.Stat(filepath.Join(dev, "sriov_totalvfs")); err != nil {
			continue
		}
		// Without a driver no netdev can be registered; a fake tree may
		// list one all the same.
		if !isNetworkClass(dev) || s.Driver(addr) != "" || firstNetdev(dev) != "" {
			continue
		}
		if _, err := os.Lstat(filepath.Join(dev, "physfn")); err == nil {
			continue
		}
		pf, err := s.PF(addr)
		if errors.Is(err, ErrNotPF) {
			continue // sriov_totalvfs 0: no SR-IOV on this function
		}
		if err != nil {
			return nil, err
		}
		pf.Driverless = true
		pfs = append(pfs, pf)
	}
	sort.Slice(pfs, func(i, j int) bool { return pfs[i].PCIAddress < pfs[j].PCIAddress })
	return pfs, nil
}

// isNetworkClass reports whether the PCI function's class is a network
// controller (0x02xxxx: Ethernet, InfiniBand, ...).
func isNetworkClass(dev string) bool {
	b, err := os.ReadFile(filepath.Join(dev, "class"))
	return err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), "0x02")
}

// Read reads a PF PFRefs listed, with its VFs, as PFs does.
func (s Sysfs) Read(ref PFRef) (PF, error) {
	pf, err := s.pf(ref.PCIAddress, filepath.Join(s.Root, "class", "net", ref.Name, "device"))
	if err != nil {
		return PF{}, err
	}
	pf.Name = ref.Name
	return pf, nil
}

// PF reads one PF by PCI address. It fails with ErrNotPF when the address
// is not an SR-IOV physical function on this node.
func (s Sysfs) PF(addr string) (PF, error) {
	dev := s.DevicePath(addr)
	total, err := readInt(filepath.Join(dev, "sriov_totalvfs"))
	var garbage *strconv.NumError
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.As(err, &garbage) || err == nil && total <= 0:
		return PF{}, fmt.Errorf("%s: %w", addr, ErrNotPF)
	case err != nil:
		// A read that failed (EIO, EAGAIN, ...) says nothing about what
		// the device is: the caller may try again.
		return PF{}, fmt.Errorf("read sriov_totalvfs of %s: %w", addr, err)
	}
	pf, err := s.pf(addr, dev)
	if err != nil {
		return PF{}, err
	}
	pf.Name = firstNetdev(dev)
	return pf, nil
}

// NumVFs reads the PF's sriov_numvfs alone.
func (s Sysfs) NumVFs(addr string) (int, error) {
	n, err := readInt(filepath.Join(s.DevicePath(addr), "sriov_numvfs"))
	if err != nil {
		return 0, fmt.Errorf("read sriov_numvfs of %s: %w", addr, err)
	}
	return n, nil
}

// ErrNotPF says a PCI address is not an SR-IOV physical function here.
var ErrNotPF = errors.New("not an SR-IOV physical function on this node")

// DevicePath is the sysfs directory of a PCI device.
func (s Sysfs) DevicePath(addr string) string {
	return filepath.Join(s.Root, "bus", "pci", "devices", addr)
}

// DeviceExists reports whether a PCI device is present. A VF's device goes
// away when sriov_numvfs is lowered; its netdev is then gone for good.
// Only sysfs saying so (ENOENT) makes a device gone: callers drop gone
// devices from records, and a failed look is no proof.
func (s Sysfs) DeviceExists(addr string) bool {
	exists, err := s.Exists(addr)
	return exists || err != nil
}

// Exists reports whether a PCI device is present, and the error of a look
// that could not tell.
func (s Sysfs) Exists(addr string) (bool, error) {
	_, err := os.Stat(s.DevicePath(addr))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("look for PCI device %s: %w", addr, err)
}

// NUMANode is the PCI device's NUMA node as sysfs gives it (numa_node);
// false when it has none: the file is missing, or -1 (no NUMA affinity,
// as on a machine with one node).
func (s Sysfs) NUMANode(addr string) (int, bool) {
	n, err := readInt(filepath.Join(s.DevicePath(addr), "numa_node"))
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// Netdev is the name of the PCI function's netdev in the netns sysfs was
// mounted for, "" when it has none there.
func (s Sysfs) Netdev(addr string) string {
	return firstNetdev(s.DevicePath(addr))
}

func (s Sysfs) pf(addr, dev string) (PF, error) {
	pf := PF{PCIAddress: addr}
	var err error
	if pf.TotalVFs, err = readInt(filepath.Join(dev, "sriov_totalvfs")); err != nil {
		return PF{}, fmt.Errorf("read sriov_totalvfs of %s: %w", addr, err)
	}
	if pf.NumVFs, err = readInt(filepath.Join(dev, "sriov_numvfs")); err != nil {
		return PF{}, fmt.Errorf("read sriov_numvfs of %s: %w", addr, err)
	}
	links, err := filepath.Glob(filepath.Join(dev, "virtfn*"))
	if err != nil {
		return PF{}, err
	}
	for _, l := range links {
		idx, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(l), "virtfn"))
		if err != nil {
			continue
		}
		vfAddr, err := pciAddressOf(l)
		if err != nil {
			return PF{}, fmt.Errorf("resolve %s of PF %s: %w", filepath.Base(l), addr, err)
		}
		pf.VFs = append(pf.VFs, VF{Index: idx, PCIAddress: vfAddr, Name: firstNetdev(l)})
	}
	sort.Slice(pf.VFs, func(i, j int) bool { return pf.VFs[i].Index < pf.VFs[j].Index })
	return pf, nil
}

// pciAddressOf resolves a sysfs link to a PCI device directory; the
// directory's base name is the device's address.
func pciAddressOf(link string) (string, error) {
	// sysfs device links point straight at the device directory
	// ("../0000:3b:10.0"), so one readlink names it; resolving the whole
	// path, most of discovery's time, is left for links that do not.
	if target, err := os.Readlink(link); err == nil && config.IsPCIAddress(filepath.Base(target)) {
		return filepath.Base(target), nil
	}
	target, err := filepath.EvalSymlinks(link)
	if err != nil {
		return "", err
	}
	return filepath.Base(target), nil
}

// firstNetdev returns the netdev name under dev/net, "" when there is none.
// A PCI function has at most one netdev for the drivers we care about.
func firstNetdev(dev string) string {
	entries, err := os.ReadDir(filepath.Join(dev, "net"))
	if err != nil || len(entries) == 0 {
		return ""
	}
	return entries[0].Name()
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
