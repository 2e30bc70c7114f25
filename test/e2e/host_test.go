//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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
// devices that are in the host netns), or, on a kernel that does not send
// it, from that netns's own sysfs; the others are returned by name.
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
	var fromSysfs map[int]string
	if !kernelSendsParents {
		if fromSysfs, err = sysfsPCIs(path); err != nil {
			return nil, nil, err
		}
	}
	pci = map[string]link{}
	for _, l := range list {
		a := l.Attrs()
		addr := a.ParentDev
		if a.ParentDevBus != "pci" {
			addr = fromSysfs[a.Index]
		}
		if addr == "" {
			other = append(other, a.Name)
			continue
		}
		pci[addr] = link{
			Name:     a.Name,
			PCI:      addr,
			MAC:      a.HardwareAddr.String(),
			MTU:      a.MTU,
			Up:       a.Flags&unix.IFF_UP != 0,
			AltNames: a.AltNames,
		}
	}
	sort.Strings(other)
	return pci, other, nil
}

// kernelSendsParents is whether the kernel names a link's parent device
// over netlink (IFLA_PARENT_DEV_NAME, from 5.14 on; not Debian 11's 5.10).
// setup finds out on the first PF.
var kernelSendsParents = true

// sendsParents asks netlink for the link of a PF found through sysfs.
func sendsParents(p pf) (bool, error) {
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return false, err
	}
	defer h.Close()
	l, err := h.LinkByName(p.Name)
	if err != nil {
		return false, err
	}
	return l.Attrs().ParentDevBus == "pci", nil
}

// sysfsPCIs maps the ifindex of each netdev of the netns at path ("" is
// the VM's own) that sits on a PCI function to the function's address, as
// a sysfs mounted for that netns lists them (ip netns exec does the same:
// sysfs shows the netdevs of the netns that mounted it).
func sysfsPCIs(path string) (map[int]string, error) {
	if path == "" {
		return classNetPCIs("/sys")
	}
	dir, err := os.MkdirTemp("", "e2e-sysfs")
	if err != nil {
		return nil, err
	}
	defer os.Remove(dir)
	if err := inNetns(path, func() error { return unix.Mount("sysfs", dir, "sysfs", 0, "") }); err != nil {
		return nil, fmt.Errorf("mount a sysfs of netns %q: %w", path, err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	return classNetPCIs(dir)
}

// classNetPCIs reads class/net of the sysfs at root.
func classNetPCIs(root string) (map[int]string, error) {
	entries, err := os.ReadDir(filepath.Join(root, "class", "net"))
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, e := range entries {
		dir := filepath.Join(root, "class", "net", e.Name())
		target, err := os.Readlink(filepath.Join(dir, "device"))
		if err != nil {
			continue // a virtual netdev
		}
		s, err := readSysfs(filepath.Join(dir, "ifindex"))
		if err != nil {
			continue // gone meanwhile
		}
		idx, err := strconv.Atoi(s)
		if err != nil {
			return nil, fmt.Errorf("%s/ifindex: %w", dir, err)
		}
		if sub, _ := os.Readlink(filepath.Join(dir, "device", "subsystem")); filepath.Base(sub) == "pci" {
			out[idx] = filepath.Base(target)
		}
	}
	return out, nil
}

// inNetns runs f on a thread of its own inside the netns at path. A thread
// that cannot be brought back to the VM's netns stays locked, and ends with
// its goroutine.
func inNetns(path string, f func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer target.Close()
	done := make(chan error)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			done <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			done <- err
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			done <- errors.Join(ferr, err)
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
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
