package kerneltest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// A PF's own driver, for tests of a PF a job or a person unbound: the
// tree's PFs have no driver link unless OnDriver gives them one, and a
// FakeKernel plays what the kernel does behind the files a bind writes.

// OnDriver puts a PF on driver as the kernel binds it at boot: its driver
// link, no driver_override, and PCI class 0x020000 (Ethernet), by which
// discovery knows a PF without a driver for a NIC.
func (e *Env) OnDriver(pf PF, driver string) {
	e.t.Helper()
	dev := filepath.Join(e.SysfsRoot, "devices", "pci0000:00", pf.PCI)
	e.driverDir(driver)
	_ = os.Remove(filepath.Join(dev, "driver"))
	must(e.t, os.Symlink("../../../bus/pci/drivers/"+driver, filepath.Join(dev, "driver")))
	e.writeFile(filepath.Join(dev, "driver_override"), "(null)")
	e.writeFile(filepath.Join(dev, "class"), "0x020000")
	if _, err := os.Stat(filepath.Join(e.SysfsRoot, "bus", "pci", "drivers_probe")); err != nil {
		e.writeFile(filepath.Join(e.SysfsRoot, "bus", "pci", "drivers_probe"), "")
	}
}

func (e *Env) driverDir(driver string) {
	dir := filepath.Join(e.SysfsRoot, "bus", "pci", "drivers", driver)
	must(e.t, os.MkdirAll(dir, 0o755))
	if _, err := os.Stat(filepath.Join(dir, "unbind")); err != nil {
		e.writeFile(filepath.Join(dir, "unbind"), "")
	}
}

// UnbindPF plays a job or a person unbinding the PF's own driver: the
// driver link goes, and with it the PF's netdev, named name in the host
// netns ("" when it is elsewhere: the caller deletes it there), and its
// sysfs entries. It returns the netdev's MAC, "" when name is "".
func (e *Env) UnbindPF(pf PF, name string) net.HardwareAddr {
	e.t.Helper()
	dev := filepath.Join(e.SysfsRoot, "devices", "pci0000:00", pf.PCI)
	var mac net.HardwareAddr
	if name != "" {
		err := e.Host.Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			mac = l.Attrs().HardwareAddr
			return netlink.LinkDel(l)
		})
		must(e.t, err)
		_ = os.Remove(filepath.Join(e.SysfsRoot, "class", "net", name))
	}
	must(e.t, os.RemoveAll(filepath.Join(dev, "net")))
	must(e.t, os.Remove(filepath.Join(dev, "driver")))
	return mac
}

// FakeKernel plays the kernel behind the env's sysfs writes
// (sriov.Sysfs.Kernel) for a PF's own driver: drivers_probe binds a PF
// without a driver to the driver its driver_override names, else to
// Default (none when Default is ""), and the driver registers the PF's
// netdev in the host netns with the MAC in MACs, unless NoNetdev, under
// the name in Names (what udev renames it to on a node) or else the
// lowest free kernel name (ethN); a driver's unbind unbinds. Every other
// write goes to its file. Writes keeps each write, in order, as
// "path-under-sysfs=value".
type FakeKernel struct {
	env *Env
	// Default is the driver the kernel matches to a PF by device ID.
	Default string
	// NoNetdev: the driver binds but registers no netdev.
	NoNetdev bool
	// MACs maps a PF's PCI address to the MAC its driver reads from the
	// NIC (an ifb's cannot be changed later).
	MACs map[string]net.HardwareAddr
	// Names maps a PF's PCI address to the name its new netdev gets. The
	// fake tree does not follow a rename: a test that needs sysfs to name
	// the netdev after one gives it its final name here.
	Names map[string]string

	mu     sync.Mutex
	writes []string
}

// NewKernel returns a FakeKernel for the env whose PFs' default driver is
// def.
func (e *Env) NewKernel(def string) *FakeKernel {
	return &FakeKernel{env: e, Default: def, MACs: map[string]net.HardwareAddr{}, Names: map[string]string{}}
}

// Writes returns the writes so far.
func (k *FakeKernel) Writes() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.writes...)
}

// Write is the sriov.Sysfs.Kernel hook.
func (k *FakeKernel) Write(path, value string) error {
	root := k.env.SysfsRoot
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return err
	}
	rel, err := filepath.Rel(root, filepath.Join(dir, filepath.Base(path)))
	if err != nil {
		return err
	}
	value = strings.TrimSpace(value)
	k.mu.Lock()
	k.writes = append(k.writes, rel+"="+value)
	k.mu.Unlock()
	switch {
	case rel == "bus/pci/drivers_probe":
		return k.probe(value)
	case filepath.Base(rel) == "unbind":
		return os.Remove(filepath.Join(root, "bus", "pci", "devices", value, "driver"))
	}
	return os.WriteFile(path, []byte(value+"\n"), 0o644)
}

func (k *FakeKernel) probe(pci string) error {
	e := k.env
	dev := filepath.Join(e.SysfsRoot, "bus", "pci", "devices", pci)
	if _, err := os.Lstat(filepath.Join(dev, "driver")); err == nil {
		return nil
	}
	if _, err := os.Stat(filepath.Join(dev, "sriov_totalvfs")); err != nil {
		return nil // only PFs are played
	}
	drv := k.Default
	if b, err := os.ReadFile(filepath.Join(dev, "driver_override")); err == nil {
		if o := strings.TrimSpace(string(b)); o != "" && o != "(null)" {
			drv = o
		}
	}
	if drv == "" {
		return nil // no driver claims it: the kernel's probe succeeds all the same
	}
	e.driverDir(drv)
	if err := os.Symlink("../../../bus/pci/drivers/"+drv, filepath.Join(dev, "driver")); err != nil {
		return err
	}
	if k.NoNetdev {
		return nil
	}
	name := k.Names[pci]
	if name == "" {
		var err error
		if name, err = k.freeName(); err != nil {
			return err
		}
	}
	e.NetdevAnew(VF{PCI: pci}, name, k.MACs[pci])
	return nil
}

// freeName is the lowest ethN not taken in the host netns, as the kernel
// names a new netdev.
func (k *FakeKernel) freeName() (string, error) {
	taken := map[string]bool{}
	err := k.env.Host.Do(func(ns.NetNS) error {
		links, err := netlink.LinkList()
		for _, l := range links {
			taken[l.Attrs().Name] = true
		}
		return err
	})
	if err != nil {
		return "", err
	}
	for i := 0; ; i++ {
		if n := fmt.Sprintf("eth%d", i); !taken[n] {
			return n, nil
		}
	}
}
