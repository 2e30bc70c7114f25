package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// world is one bench world: a throwaway "host" netns holding one or more
// PFs and their VFs as ifb links, and a fake sysfs tree that describes them as
// test/kerneltest does (class/net/<name>/device -> the PCI function,
// sriov_totalvfs, virtfnN, <function>/net/<name>). kerneltest wants a
// testing.TB; the bench is a plain program, so it builds its own.
type world struct {
	host ns.NetNS
	// removeHost and removeDir undo the host netns and dir, tracked
	// (cleanup.go) so that an interrupted bench removes them too.
	removeHost, removeDir func()
	dir                   string
	sysfs                 string
	stateDir              string
	// nodeFile is the node configuration that points the plugin at sysfs
	// and stateDir, as a node's does.
	nodeFile string
	// pf and vfs are the PF that is handed out and its VFs: the first
	// PF, which has the lowest PCI address, so the plugin picks it.
	pf  device
	vfs []device
	// others are the node's other PFs and their VFs: they stay on the
	// host, and make the link dumps and the sysfs scans a node's size.
	others []device
}

// device is one netdev of the world: its PCI address, host name, and the
// name it gets in the pod (the PF becomes net1, a VF keeps its name).
type device struct {
	pci, name, podName string
}

const podIfName = "net1"

// newWorld builds a node of pfs PFs, bpf0, bpf1, ..., with numVFs VF
// netdevs each; bpf0 is the one the methods hand out.
func newWorld(pfs, numVFs int) (*world, error) {
	dir, removeDir, err := mkdirTemp("sriov-bench-")
	if err != nil {
		return nil, err
	}
	w := &world{dir: dir, removeDir: removeDir, sysfs: filepath.Join(dir, "sys"), stateDir: filepath.Join(dir, "state"), nodeFile: filepath.Join(dir, "node.json")}
	for i := range max(pfs, 1) {
		var other world
		// PFs on buses 0x3b, 0x3c, ...; their VFs 0x40 buses higher.
		if err := writeSysfs(w.sysfs, 0x3b+i, fmt.Sprintf("bpf%d", i), numVFs, &other); err != nil {
			w.close()
			return nil, err
		}
		if i == 0 {
			w.pf, w.vfs = other.pf, other.vfs
		} else {
			w.others = append(w.others, other.devices()...)
		}
	}
	node, err := json.Marshal(map[string]any{"sysfsRoot": w.sysfs, "stateDir": w.stateDir, "reservedInterfacesFile": ""})
	if err == nil {
		err = os.WriteFile(w.nodeFile, node, 0o644)
	}
	if err != nil {
		w.close()
		return nil, fmt.Errorf("write node configuration: %w", err)
	}
	if w.host, w.removeHost, err = createNS(); err != nil {
		w.close()
		return nil, fmt.Errorf("create host netns: %w", err)
	}
	err = w.host.Do(func(ns.NetNS) error {
		for _, d := range append(w.devices(), w.others...) {
			if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: d.name}}); err != nil {
				return fmt.Errorf("create link %q: %w", d.name, err)
			}
		}
		return nil
	})
	if err != nil {
		w.close()
		return nil, err
	}
	return w, nil
}

// devices is the PF handed out, then its VFs.
func (w *world) devices() []device {
	return append([]device{w.pf}, w.vfs...)
}

func (w *world) close() {
	if w.removeHost != nil {
		w.removeHost()
	}
	w.removeDir()
}

// writeSysfs writes the fake sysfs tree for one PF on PCI bus bus with
// numVFs (at most 256) VFs under root, and records the devices in w when w
// is not nil. It needs no root and no links, so discovery benchmarks use it
// alone.
func writeSysfs(root string, bus int, name string, numVFs int, w *world) error {
	if numVFs > 256 {
		return fmt.Errorf("%d VFs: at most 256 fit one fake bus", numVFs)
	}
	for _, d := range []string{"class/net", "bus/pci/devices", "devices/pci0000:00"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	pf := device{pci: fmt.Sprintf("0000:%02x:00.0", bus), name: name, podName: podIfName}
	pfDir, err := pciDir(root, pf.pci)
	if err != nil {
		return err
	}
	files := map[string]string{"sriov_totalvfs": fmt.Sprint(max(numVFs, 1)), "sriov_numvfs": fmt.Sprint(numVFs)}
	for f, v := range files {
		if err := os.WriteFile(filepath.Join(pfDir, f), []byte(v+"\n"), 0o644); err != nil {
			return err
		}
	}
	if err := netdevEntry(root, pf.pci, pf.name); err != nil {
		return err
	}
	var vfs []device
	for i := range numVFs {
		// VFs on their own bus, 32 devices of 8 functions each.
		vf := device{pci: fmt.Sprintf("0000:%02x:%02x.%d", bus+0x40, i/8, i%8), name: fmt.Sprintf("%sv%d", name, i)}
		vf.podName = vf.name
		vfDir, err := pciDir(root, vf.pci)
		if err != nil {
			return err
		}
		if err := os.Symlink("../"+pf.pci, filepath.Join(vfDir, "physfn")); err != nil {
			return err
		}
		if err := os.Symlink("../"+vf.pci, filepath.Join(pfDir, fmt.Sprintf("virtfn%d", i))); err != nil {
			return err
		}
		if err := netdevEntry(root, vf.pci, vf.name); err != nil {
			return err
		}
		vfs = append(vfs, vf)
	}
	if w != nil {
		w.pf, w.vfs = pf, vfs
	}
	return nil
}

func pciDir(root, pci string) (string, error) {
	dir := filepath.Join(root, "devices", "pci0000:00", pci)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return dir, os.Symlink("../../../devices/pci0000:00/"+pci, filepath.Join(root, "bus", "pci", "devices", pci))
}

func netdevEntry(root, pci, name string) error {
	netDir := filepath.Join(root, "devices", "pci0000:00", pci, "net", name)
	if err := os.MkdirAll(netDir, 0o755); err != nil {
		return err
	}
	if err := os.Symlink("../../", filepath.Join(netDir, "device")); err != nil {
		return err
	}
	return os.Symlink("../../devices/pci0000:00/"+pci+"/net/"+name, filepath.Join(root, "class", "net", name))
}

// linkNames lists the link names in a netns, loopback left out, sorted.
func linkNames(n ns.NetNS) ([]string, error) {
	var names []string
	err := n.Do(func(ns.NetNS) error {
		links, err := netlink.LinkList()
		for _, l := range links {
			if l.Attrs().Name != "lo" {
				names = append(names, l.Attrs().Name)
			}
		}
		return err
	})
	sort.Strings(names)
	return names, err
}

// checkNames fails unless netns n holds exactly the names want.
func checkNames(n ns.NetNS, where string, want []string) error {
	got, err := linkNames(n)
	if err != nil {
		return err
	}
	want = append([]string(nil), want...)
	sort.Strings(want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("%s holds %d links %v, want %d %v", where, len(got), trim(got), len(want), trim(want))
	}
	return nil
}

func trim(s []string) []string {
	if len(s) > 6 {
		return append(s[:6:6], "...")
	}
	return s
}
