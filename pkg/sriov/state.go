package sriov

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
)

// State is a PF's SR-IOV configuration as sysfs shows it: what a job can
// change (the PF's own driver, sriov_numvfs, sriov_drivers_autoprobe,
// which driver each VF is bound to) and the node must get back.
type State struct {
	// Driver and Override are the PF's own driver ("" for none) and
	// driver_override ("" when unset).
	Driver, Override string
	NumVFs           int
	// Autoprobe is sriov_drivers_autoprobe: whether new VFs are bound to a
	// driver by the kernel as they are created.
	Autoprobe bool
	VFs       []VFState
}

// VFState is one VF's PCI-level state.
type VFState struct {
	Index      int
	PCIAddress string
	// Driver is the bound driver's name, "" when none is.
	Driver string
	// Override is driver_override, "" when unset (sysfs shows "(null)").
	Override string
}

// State reads the SR-IOV configuration of the PF at addr.
func (s Sysfs) State(addr string) (State, error) {
	pf, err := s.PF(addr)
	if err != nil {
		return State{}, err
	}
	st := State{Driver: s.Driver(addr), Override: s.DriverOverride(addr), NumVFs: pf.NumVFs, Autoprobe: true}
	// Older kernels and fake trees may lack the file: the kernel's
	// default is on.
	if v, err := readInt(filepath.Join(s.DevicePath(addr), "sriov_drivers_autoprobe")); err == nil {
		st.Autoprobe = v != 0
	}
	for _, vf := range pf.VFs {
		st.VFs = append(st.VFs, VFState{
			Index: vf.Index, PCIAddress: vf.PCIAddress,
			Driver: s.Driver(vf.PCIAddress), Override: s.DriverOverride(vf.PCIAddress),
		})
	}
	return st, nil
}

// Driver is the name of the driver bound to a PCI function, "" for none.
func (s Sysfs) Driver(addr string) string {
	target, err := os.Readlink(filepath.Join(s.DevicePath(addr), "driver"))
	if err != nil {
		return ""
	}
	return filepath.Base(target)
}

// DriverOverride is a PCI function's driver_override, "" when unset.
func (s Sysfs) DriverOverride(addr string) string {
	b, err := os.ReadFile(filepath.Join(s.DevicePath(addr), "driver_override"))
	if err != nil {
		return ""
	}
	v := strings.TrimSpace(string(b))
	if v == "(null)" {
		return ""
	}
	return v
}

// HasNetdev reports whether a PCI function has a netdev in the netns sysfs
// was mounted for.
func (s Sysfs) HasNetdev(addr string) bool {
	return firstNetdev(s.DevicePath(addr)) != ""
}

// ErrNotVF says a PCI function is not a VF of the PF it was named with.
var ErrNotVF = errors.New("not a VF of this PF")

// VetVF checks that vf is a virtual function of the SR-IOV PF pf: its
// physfn link points at pf. Every write below that touches a VF goes
// through it, so a tampered record cannot name another device.
func (s Sysfs) VetVF(pf, vf string) error {
	if !config.IsPCIAddress(pf) || !config.IsPCIAddress(vf) {
		return fmt.Errorf("%s of %s: bad PCI address: %w", vf, pf, ErrNotVF)
	}
	target, err := os.Readlink(filepath.Join(s.DevicePath(vf), "physfn"))
	if err != nil || filepath.Base(target) != pf {
		return fmt.Errorf("%s of %s: %w", vf, pf, ErrNotVF)
	}
	return nil
}

func (s Sysfs) vetPF(pf string) error {
	if !config.IsPCIAddress(pf) {
		return fmt.Errorf("%q: %w", pf, ErrNotPF)
	}
	total, err := readInt(filepath.Join(s.DevicePath(pf), "sriov_totalvfs"))
	if err != nil || total <= 0 {
		return fmt.Errorf("%s: %w", pf, ErrNotPF)
	}
	return nil
}

// SetNumVFs writes the PF's sriov_numvfs. The kernel accepts a new count
// only from 0, so a change goes through 0. Removing a VF that a process
// holds through vfio blocks in the kernel until it lets go: callers look
// for holders first (VFIOHolders).
func (s Sysfs) SetNumVFs(pf string, n int) error {
	if err := s.vetPF(pf); err != nil {
		return err
	}
	f := filepath.Join(s.DevicePath(pf), "sriov_numvfs")
	cur, err := readInt(f)
	if err != nil {
		return fmt.Errorf("read sriov_numvfs of %s: %w", pf, err)
	}
	if cur == n {
		return nil
	}
	if cur != 0 {
		if err := s.write(f, "0"); err != nil {
			return fmt.Errorf("set sriov_numvfs of %s to 0: %w", pf, err)
		}
	}
	if n == 0 {
		return nil
	}
	if err := s.write(f, strconv.Itoa(n)); err != nil {
		return fmt.Errorf("set sriov_numvfs of %s to %d: %w", pf, n, err)
	}
	return nil
}

// SetAutoprobe writes the PF's sriov_drivers_autoprobe.
func (s Sysfs) SetAutoprobe(pf string, on bool) error {
	if err := s.vetPF(pf); err != nil {
		return err
	}
	v := "0"
	if on {
		v = "1"
	}
	f := filepath.Join(s.DevicePath(pf), "sriov_drivers_autoprobe")
	if _, err := os.Stat(f); err != nil {
		return nil // no such knob here: nothing a job could have changed
	}
	if err := s.write(f, v); err != nil {
		return fmt.Errorf("set sriov_drivers_autoprobe of %s to %s: %w", pf, v, err)
	}
	return nil
}

// Rebind gives a VF of pf back the driver it had and its driver_override
// as it was (bind). Unbinding vfio-pci from a VF that a process holds
// blocks in the kernel: callers look for holders first.
func (s Sysfs) Rebind(pf, vf, want, override string) error {
	if err := s.VetVF(pf, vf); err != nil {
		return err
	}
	return s.bind(vf, want, override)
}

// BindDefault puts a VF of pf on its default driver, the one the kernel
// matches by device ID (igbvf for an igb VF), and leaves driver_override
// empty: the baseline a node declares. drivers_probe without an override
// binds that driver, but a VF whose PF has sriov_drivers_autoprobe 0 is
// not probed at all then: callers turn autoprobe on first. The driver
// bound is returned; "" with an error when the probe bound none.
// Unbinding vfio-pci from a VF that a process holds blocks in the kernel:
// callers look for holders first.
func (s Sysfs) BindDefault(pf, vf string) (string, error) {
	if err := s.VetVF(pf, vf); err != nil {
		return "", err
	}
	dev := s.DevicePath(vf)
	if s.DriverOverride(vf) != "" {
		if err := s.write(filepath.Join(dev, "driver_override"), "\n"); err != nil {
			return "", fmt.Errorf("clear driver_override of %s: %w", vf, err)
		}
	}
	if cur := s.Driver(vf); cur != "" {
		if err := s.write(filepath.Join(dev, "driver", "unbind"), vf); err != nil {
			return "", fmt.Errorf("unbind %s from %s: %w", vf, cur, err)
		}
	}
	return s.probeDefault(vf, vf, "no loaded driver claims it without driver_override")
}

// BindDefaultPF binds a PF that no driver is bound to (a job or a person
// unbound it) to its default driver, the one the kernel matches by device
// ID (igb for an 82576), through drivers_probe with no driver_override: no
// override is set, so none is left for the next probe to honour.
// sriov_drivers_autoprobe does not matter here: the kernel consults it
// only for a VF. A PF whose driver_override is set is left alone: the
// probe would bind the driver it names, which someone chose. The driver
// bound is returned; a PF with a driver already is left on it.
func (s Sysfs) BindDefaultPF(pf string) (string, error) {
	if err := s.vetPF(pf); err != nil {
		return "", err
	}
	if cur := s.Driver(pf); cur != "" {
		return cur, nil
	}
	if o := s.DriverOverride(pf); o != "" {
		return "", fmt.Errorf("PF %s has driver_override %q, so a probe would bind %s, not its default driver; "+
			"clear it (echo > %s) if the PF is the node's to hand out",
			pf, o, o, filepath.Join(s.DevicePath(pf), "driver_override"))
	}
	return s.probeDefault(pf, "PF "+pf, "no loaded driver claims it (is its module loaded?)")
}

// probeDefault asks the kernel to bind addr, which has no driver and no
// driver_override, to its default driver (drivers_probe), and returns the
// driver bound; with none, the error names what (as the caller calls it)
// and why.
func (s Sysfs) probeDefault(addr, what, why string) (string, error) {
	if err := s.write(filepath.Join(s.Root, "bus", "pci", "drivers_probe"), addr); err != nil {
		return "", fmt.Errorf("probe the default driver for %s: %w", what, err)
	}
	got := s.Driver(addr)
	if got == "" {
		return "", fmt.Errorf("%s has no driver after the probe: %s", what, why)
	}
	return got, nil
}

// BindPF gives the PF back its own driver and driver_override (bind): a
// job may unbind the PF, which takes its netdev and, with most PF
// drivers, its VFs away. Callers look for holders first when the PF is on
// a vfio driver.
func (s Sysfs) BindPF(pf, want, override string) error {
	if err := s.vetPF(pf); err != nil {
		return err
	}
	return s.bind(pf, want, override)
}

// bind puts the PCI function at addr on driver want ("" leaves it
// unbound) and leaves its driver_override as override. drivers_probe binds
// the driver named in driver_override, or else the one the kernel matches
// by device ID (igbvf for an igb VF); and a VF whose PF has
// sriov_drivers_autoprobe 0 is probed only with an override. A VF that was
// on vfio-pci with its override cleared afterwards (the bash plugin and
// kubevirtci's configure_vf_driver leave VFs so) would come back on
// igbvf. So the probe goes through the wanted driver: driver_override is
// want during the probe, then what it was recorded as, empty included
// (an override only matters at the next probe; the binding stays).
func (s Sysfs) bind(addr, want, override string) (err error) {
	dev := s.DevicePath(addr)
	setOverride := func(v string) error {
		if s.DriverOverride(addr) == v {
			return nil
		}
		if err := s.write(filepath.Join(dev, "driver_override"), v+"\n"); err != nil {
			return fmt.Errorf("set driver_override of %s to %q: %w", addr, v, err)
		}
		return nil
	}
	cur := s.Driver(addr)
	if cur == want {
		return setOverride(override)
	}
	if err := setOverride(want); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, setOverride(override)) }()
	if cur != "" {
		if err := s.write(filepath.Join(dev, "driver", "unbind"), addr); err != nil {
			return fmt.Errorf("unbind %s from %s: %w", addr, cur, err)
		}
	}
	if want == "" {
		return nil
	}
	if err := s.write(filepath.Join(s.Root, "bus", "pci", "drivers_probe"), addr); err != nil {
		return fmt.Errorf("probe a driver for %s: %w", addr, err)
	}
	if got := s.Driver(addr); got != want {
		return fmt.Errorf("%s is bound to %q after the probe, want %q", addr, got, want)
	}
	return nil
}

// write writes a sysfs attribute (writeSysfs), or hands it to the fake
// kernel a test set (Kernel).
func (s Sysfs) write(path, value string) error {
	if s.Kernel != nil {
		return s.Kernel(path, value)
	}
	return writeSysfs(path, value)
}

// writeSysfs writes an attribute in one write(2), as the kernel's sysfs
// store handlers expect; it never creates a file.
func writeSysfs(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	return errors.Join(err, f.Close())
}
