//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// vfDriver is the driver a PCI function is bound to, "" for none.
func vfDriver(pci string) string {
	target, err := os.Readlink(filepath.Join(pciDevices, pci, "driver"))
	if err != nil {
		return ""
	}
	return filepath.Base(target)
}

// bindVFIO does what kubevirtci's kind-sriov does to give a VF to a VM:
// driver_override, unbind from its driver, drivers_probe.
func bindVFIO(pci string) error {
	dev := filepath.Join(pciDevices, pci)
	if err := writeSysfs(filepath.Join(dev, "driver_override"), "vfio-pci"); err != nil {
		return fmt.Errorf("%s driver_override: %w", pci, err)
	}
	if drv := vfDriver(pci); drv != "" {
		if err := writeSysfs(filepath.Join(dev, "driver", "unbind"), pci); err != nil {
			return fmt.Errorf("unbind %s from %s: %w", pci, drv, err)
		}
	}
	if err := writeSysfs("/sys/bus/pci/drivers_probe", pci); err != nil {
		return fmt.Errorf("drivers_probe %s: %w", pci, err)
	}
	return poll(10*time.Second, func() error {
		if d := vfDriver(pci); d != "vfio-pci" {
			return fmt.Errorf("%s is bound to %q, want vfio-pci", pci, d)
		}
		return nil
	})
}

// vfioGroup is the IOMMU group of a PCI function, as /dev/vfio/N names it.
func vfioGroup(pci string) (string, error) {
	target, err := os.Readlink(filepath.Join(pciDevices, pci, "iommu_group"))
	if err != nil {
		return "", fmt.Errorf("%s has no IOMMU group (is the VM's intel-iommu on?): %w", pci, err)
	}
	return filepath.Base(target), nil
}

// unbindVFIO gives a VF back to the driver the kernel picks for it.
func unbindVFIO(pci string) error {
	dev := filepath.Join(pciDevices, pci)
	if err := writeSysfs(filepath.Join(dev, "driver_override"), "\n"); err != nil {
		return err
	}
	if vfDriver(pci) != "" {
		if err := writeSysfs(filepath.Join(dev, "driver", "unbind"), pci); err != nil {
			return err
		}
	}
	return writeSysfs("/sys/bus/pci/drivers_probe", pci)
}

// The VM harness gives vfio-pci what it needs (QEMU's intel-iommu, the vfio
// modules): a VF binds to it as a kind-sriov job binds it, its netdev goes
// away while its PCI function stays, and its /dev/vfio group appears.
func TestVFBindsToVFIO(t *testing.T) {
	f := pfs[2]
	vf := vfsOf[f.PCI][1]
	requireHostRestored(t)
	saved := baseline[vf]
	t.Cleanup(func() {
		if err := unbindVFIO(vf); err != nil {
			t.Errorf("rebind %s: %v", vf, err)
		}
		if err := poll(20*time.Second, func() error {
			if _, ok := mustLinks(t, "")[vf]; !ok {
				return fmt.Errorf("VF %s has no netdev after rebinding", vf)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		// igbvf may come back with another MAC: set the one it had.
		run(t, "ip", "link", "set", saved.Name, "address", saved.MAC)
	})
	if err := bindVFIO(vf); err != nil {
		t.Fatal(err)
	}
	if _, ok := mustLinks(t, "")[vf]; ok {
		t.Errorf("VF %s bound to vfio-pci still has a netdev", vf)
	}
	if _, err := os.Stat(filepath.Join(pciDevices, vf)); err != nil {
		t.Errorf("VF %s's PCI function is gone: %v", vf, err)
	}
	g, err := vfioGroup(vf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/dev/vfio/" + g); err != nil {
		t.Errorf("no /dev/vfio/%s for %s: %v", g, vf, err)
	}
	entries, _ := os.ReadDir("/dev/vfio")
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	fmt.Printf("e2e: VF %s bound to vfio-pci, IOMMU group %s, /dev/vfio: %s\n", vf, g, strings.Join(names, " "))
}
