// Command floorcni is the benchmark's floor exec'd like a plugin: the
// least a CNI plugin that hands a PF and its VF netdevs to a pod must do,
// run as a runtime runs a plugin (one process for ADD, one for DEL, the
// CNI environment, the configuration on stdin). `make bench-vm` times it
// next to sriov-passthrough-cni, so the difference is the plugin's own
// work and not the two process starts.
//
// ADD reads the PF and VF netdev names from sysfs, moves every netdev into
// the pod, renames the PF to CNI_IFNAME there and sets it up, and writes
// the names to a file so DEL can undo it. DEL sets the PF down, renames
// it back and moves every netdev home. No lock, no record fsync, no tags,
// no SR-IOV capture, no checks: never use it on a node.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kubevirt/sriov-passthrough-cni/test/e2e/floor"
)

// stateDir holds one file per attachment: a line of names (the PF's host
// name, then its VFs'), a line of those that were up.
const stateDir = "/run/sriovpt-floor"

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "floorcni %s: %v\n", os.Getenv("CNI_COMMAND"), err)
		os.Exit(1)
	}
}

func run() error {
	ifname, path := os.Getenv("CNI_IFNAME"), os.Getenv("CNI_NETNS")
	file := filepath.Join(stateDir, os.Getenv("CNI_CONTAINERID")+"-"+ifname)
	switch os.Getenv("CNI_COMMAND") {
	case "ADD":
		var conf struct {
			PCIBusID string `json:"pciBusID"`
		}
		in, err := io.ReadAll(os.Stdin)
		if err == nil {
			err = json.Unmarshal(in, &conf)
		}
		if err != nil {
			return err
		}
		names, err := netdevsOf(conf.PCIBusID)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(stateDir, 0o700); err != nil {
			return err
		}
		up, err := floor.Add(path, ifname, names)
		if err != nil {
			return err
		}
		// One line of names, one of those that were up.
		if err := os.WriteFile(file, []byte(strings.Join(names, " ")+"\n"+strings.Join(up, " ")), 0o600); err != nil {
			return err
		}
		fmt.Printf(`{"cniVersion":"1.1.0","interfaces":[{"name":%q,"sandbox":%q}]}`+"\n", ifname, path)
		return nil
	case "DEL":
		b, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		names, up, _ := strings.Cut(string(b), "\n")
		if err := floor.Del(path, ifname, strings.Fields(names), strings.Fields(up)); err != nil {
			return err
		}
		return os.Remove(file)
	}
	return fmt.Errorf("command %q not supported", os.Getenv("CNI_COMMAND"))
}

// netdevsOf lists the PF's netdev name, then its VFs' in VF order: the
// names sysfs shows under the PCI functions (only the host netns's).
func netdevsOf(pci string) ([]string, error) {
	dev := filepath.Join("/sys/bus/pci/devices", pci)
	pf, err := filepath.Glob(filepath.Join(dev, "net", "*"))
	if err != nil || len(pf) != 1 {
		return nil, fmt.Errorf("PF %s: want one netdev, have %v (%v)", pci, pf, err)
	}
	vfs, err := filepath.Glob(filepath.Join(dev, "virtfn*", "net", "*"))
	if err != nil {
		return nil, err
	}
	sort.Strings(vfs)
	names := []string{filepath.Base(pf[0])}
	for _, v := range vfs {
		names = append(names, filepath.Base(v))
	}
	return names, nil
}
