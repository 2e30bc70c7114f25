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
// change (sriov_numvfs, sriov_drivers_autoprobe, which driver each VF is
// bound to) and the node must get back.
type State struct {
	NumVFs int
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
	st := State{NumVFs: pf.NumVFs, Autoprobe: true}
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
		if err := writeSysfs(f, "0"); err != nil {
			return fmt.Errorf("set sriov_numvfs of %s to 0: %w", pf, err)
		}
	}
	if n == 0 {
		return nil
	}
	if err := writeSysfs(f, strconv.Itoa(n)); err != nil {
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
	if err := writeSysfs(f, v); err != nil {
		return fmt.Errorf("set sriov_drivers_autoprobe of %s to %s: %w", pf, v, err)
	}
	return nil
}

// Rebind gives a VF of pf back the driver it had: driver_override set to
// what it was, the current driver unbound, and the kernel asked to probe
// (drivers_probe), which binds the override or else the matching driver.
// With want "" it leaves the VF unbound. Unbinding vfio-pci from a VF that a
// process holds blocks in the kernel: callers look for holders first.
func (s Sysfs) Rebind(pf, vf, want, override string) error {
	if err := s.VetVF(pf, vf); err != nil {
		return err
	}
	dev := s.DevicePath(vf)
	if err := writeSysfs(filepath.Join(dev, "driver_override"), override+"\n"); err != nil {
		return fmt.Errorf("set driver_override of %s to %q: %w", vf, override, err)
	}
	if cur := s.Driver(vf); cur != "" {
		if cur == want {
			return nil
		}
		if err := writeSysfs(filepath.Join(dev, "driver", "unbind"), vf); err != nil {
			return fmt.Errorf("unbind %s from %s: %w", vf, cur, err)
		}
	}
	if want == "" {
		return nil
	}
	if err := writeSysfs(filepath.Join(s.Root, "bus", "pci", "drivers_probe"), vf); err != nil {
		return fmt.Errorf("probe a driver for %s: %w", vf, err)
	}
	if got := s.Driver(vf); got != want {
		return fmt.Errorf("%s is bound to %q after the probe, want %q", vf, got, want)
	}
	return nil
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
