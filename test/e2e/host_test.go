//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const pciDevices = "/sys/bus/pci/devices"

// link is what the kernel says about one PCI netdev in one netns.
type link struct {
	Name     string
	PCI      string
	MAC      string
	MTU      int
	Up       bool
	AltNames []string
}

func (l link) String() string {
	state := "down"
	if l.Up {
		state = "up"
	}
	alt := ""
	if len(l.AltNames) > 0 {
		alt = " altnames " + strings.Join(l.AltNames, ",")
	}
	return fmt.Sprintf("%s(%s %s mtu %d %s%s)", l.Name, l.PCI, l.MAC, l.MTU, state, alt)
}

// netnsLinks lists every netdev in the netns at path ("" is the VM's own
// netns). PCI netdevs are keyed by PCI address, taken from netlink's
// parent-device attribute, which works in any netns (host sysfs only lists
// devices that are in the host netns); the others are returned by name.
func netnsLinks(path string) (pci map[string]link, other []string, err error) {
	var h netlinksafe.Handle
	if path == "" {
		h, err = netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	} else {
		var ns netns.NsHandle
		ns, err = netns.GetFromPath(path)
		if err != nil {
			return nil, nil, fmt.Errorf("open netns %q: %w", path, err)
		}
		defer ns.Close()
		h, err = netlinksafe.NewHandleAt(ns, unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("netlink handle for %q: %w", path, err)
	}
	defer h.Close()
	list, err := h.LinkList()
	if err != nil {
		return nil, nil, fmt.Errorf("list links in %q: %w", path, err)
	}
	pci = map[string]link{}
	for _, l := range list {
		a := l.Attrs()
		if a.ParentDevBus != "pci" {
			other = append(other, a.Name)
			continue
		}
		pci[a.ParentDev] = link{
			Name:     a.Name,
			PCI:      a.ParentDev,
			MAC:      a.HardwareAddr.String(),
			MTU:      a.MTU,
			Up:       a.Flags&unix.IFF_UP != 0,
			AltNames: a.AltNames,
		}
	}
	sort.Strings(other)
	return pci, other, nil
}

func mustLinks(t testing.TB, path string) map[string]link {
	t.Helper()
	m, _, err := netnsLinks(path)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// pf is an SR-IOV physical function as found when the suite started.
type pf struct {
	PCI      string
	Name     string
	TotalVFs int
}

func (p pf) String() string { return p.Name + "(" + p.PCI + ")" }

// vfPCIs maps VF index to PCI address from the PF's virtfnN links.
func vfPCIs(pfPCI string) (map[int]string, error) {
	links, err := filepath.Glob(filepath.Join(pciDevices, pfPCI, "virtfn*"))
	if err != nil {
		return nil, err
	}
	m := map[int]string{}
	for _, l := range links {
		n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(l), "virtfn"))
		if err != nil {
			continue
		}
		target, err := os.Readlink(l)
		if err != nil {
			return nil, err
		}
		m[n] = filepath.Base(target)
	}
	return m, nil
}

func mustVFs(t testing.TB, p pf) []string {
	t.Helper()
	m, err := vfPCIs(p.PCI)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(m))
	for i := range out {
		v, ok := m[i]
		if !ok {
			t.Fatalf("%s: virtfn%d missing (have %v)", p, i, m)
		}
		out[i] = v
	}
	return out
}

func readSysfs(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}

func writeSysfs(path, value string) error {
	return os.WriteFile(path, []byte(value), 0o200)
}

// findPFs lists the SR-IOV PFs in the VM's netns, lowest PCI address first.
func findPFs() ([]pf, error) {
	files, err := filepath.Glob("/sys/class/net/*/device/sriov_totalvfs")
	if err != nil {
		return nil, err
	}
	var pfs []pf
	for _, f := range files {
		name := filepath.Base(filepath.Dir(filepath.Dir(f)))
		dev, err := filepath.EvalSymlinks(filepath.Dir(f))
		if err != nil {
			return nil, err
		}
		s, err := readSysfs(f)
		if err != nil {
			return nil, err
		}
		total, err := strconv.Atoi(s)
		if err != nil || total == 0 {
			continue
		}
		pfs = append(pfs, pf{PCI: filepath.Base(dev), Name: name, TotalVFs: total})
	}
	sort.Slice(pfs, func(i, j int) bool { return pfs[i].PCI < pfs[j].PCI })
	return pfs, nil
}

// setNumVFs sets sriov_numvfs (through 0, as the kernel requires) and waits
// until every VF bound to a netdev driver shows up in the VM's netns.
func setNumVFs(p pf, n int) error {
	f := filepath.Join(pciDevices, p.PCI, "sriov_numvfs")
	cur, err := readSysfs(f)
	if err != nil {
		return err
	}
	if cur != strconv.Itoa(n) {
		if cur != "0" {
			if err := writeSysfs(f, "0"); err != nil {
				return fmt.Errorf("%s: sriov_numvfs=0: %w", p, err)
			}
		}
		if n > 0 {
			if err := writeSysfs(f, strconv.Itoa(n)); err != nil {
				return fmt.Errorf("%s: sriov_numvfs=%d: %w", p, n, err)
			}
		}
	}
	return poll(30*time.Second, func() error {
		vfs, err := vfPCIs(p.PCI)
		if err != nil {
			return err
		}
		if len(vfs) != n {
			return fmt.Errorf("%s has %d VFs, want %d", p, len(vfs), n)
		}
		host, _, err := netnsLinks("")
		if err != nil {
			return err
		}
		for i, v := range vfs {
			if _, ok := host[v]; !ok {
				return fmt.Errorf("%s: VF %d (%s) has no netdev yet", p, i, v)
			}
		}
		return nil
	})
}

// poll retries f until it returns nil or the timeout passes; it returns
// f's last error. The kernel does some of what we wait for asynchronously
// (devices of a dying netns return to init_net from a workqueue).
func poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// run runs a command (ip, mostly) and fails the test if it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func netnsExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
