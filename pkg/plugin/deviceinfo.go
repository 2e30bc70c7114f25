package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// deviceInfo is the device-info file of the Network Plumbing WG's
// device-info spec (version 1.1.0), type "pci": multus reads it after ADD
// and puts it into the pod's network-status annotation as "device-info".
type deviceInfo struct {
	Type    string        `json:"type"`
	Version string        `json:"version"`
	PCI     deviceInfoPCI `json:"pci"`
}

type deviceInfoPCI struct {
	PCIAddress string `json:"pci-address"`
}

// writeDeviceInfo writes the PF's device-info file where the runtime asked
// (runtimeConfig.CNIDeviceInfoFile, the CNIDeviceInfoFile capability),
// unless a file is there already: multus may have copied the device
// plugin's. It never replaces a file, and removes only the one it wrote
// (the returned undo). Multus removes the file on DEL.
func (o *op) writeDeviceInfo(pciAddr string) (undo func() error, err error) {
	path := o.conf.RuntimeConfig.CNIDeviceInfoFile
	nothing := func() error { return nil }
	if path == "" {
		return nothing, nil
	}
	if _, err := os.Lstat(path); err == nil {
		o.log.Info("device-info file exists already; left as it is", "path", path)
		return nothing, nil
	}
	data, err := json.Marshal(deviceInfo{Type: "pci", Version: "1.1.0", PCI: deviceInfoPCI{PCIAddress: pciAddr}})
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("write device-info file: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".sriovpt-devinfo-*")
	if err != nil {
		return nil, fmt.Errorf("write device-info file: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	err = errors.Join(err, tmp.Chmod(0o444), tmp.Close())
	if err == nil {
		// A hard link publishes the whole file at once and fails if a
		// file appeared meanwhile: never half a file, never a clobber.
		err = os.Link(tmp.Name(), path)
	}
	if errors.Is(err, fs.ErrExist) {
		o.log.Info("device-info file appeared meanwhile; left as it is", "path", path)
		return nothing, nil
	}
	if err != nil {
		return nil, fmt.Errorf("write device-info file %q: %w", path, err)
	}
	o.log.Info("wrote device-info file", "path", path, "pci", pciAddr)
	return func() error {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove device-info file %q: %w", path, err)
		}
		return nil
	}, nil
}
