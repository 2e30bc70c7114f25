// Package kerneltest builds throwaway worlds for tests that need the real
// kernel: a "host" netns holding ifb links that stand in for PF and VF
// netdevs, and a fake sysfs tree in a temp dir that describes them the way
// /sys does (class/net/<name>/device -> the PCI function, sriov_totalvfs,
// virtfnN -> the VF's PCI function, <function>/net/<name>).
package kerneltest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
)

// RequireRoot skips a test that needs root, with a clear message, except
// under CI (CI=true), where a skipped kernel test would hide a regression.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this kernel test needs root (network namespaces, real links) and CI=true: run CI as root")
	}
	t.Skip("skipped: needs root to create network namespaces and links (run as root, as CI does)")
}

// Env is one test's world.
type Env struct {
	t         testing.TB
	Host      ns.NetNS
	SysfsRoot string
	StateDir  string
	// NodeFile is the node configuration (config.Node) that points the
	// plugin at SysfsRoot and StateDir: in-process, a Plugin's
	// NodeConfigFile; an exec'd plugin gets it through NodeEnv.
	NodeFile string
	// ProcRoot is the proc tree the plugin looks in for processes holding
	// VFs through vfio; "" is the real /proc.
	ProcRoot string
	PFs      []PF
	nextBus  int
}

// PF is a fake PF: its PCI address, host name and VFs.
type PF struct {
	PCI  string
	Name string
	VFs  []VF
}

// VF is a fake VF; Name is "" when it has no netdev.
type VF struct {
	Index int
	PCI   string
	Name  string
}

// New makes an empty host netns, sysfs tree and state dir, all removed when
// the test ends.
func New(t testing.TB) *Env {
	t.Helper()
	RequireRoot(t)
	host := NewNS(t, "host")
	dir := t.TempDir()
	e := &Env{t: t, Host: host, SysfsRoot: filepath.Join(dir, "sys"), StateDir: filepath.Join(dir, "state"),
		NodeFile: filepath.Join(dir, "node.json"), nextBus: 0x3b}
	for _, d := range []string{"class/net", "bus/pci/devices", "devices/pci0000:00"} {
		must(t, os.MkdirAll(filepath.Join(e.SysfsRoot, d), 0o755))
	}
	e.SetNode(nil)
	return e
}

// SetNode writes the env's node configuration: its sysfs and state dir, a
// reservedInterfacesFile of "" so the node's real file is never read, and
// fields, which override or add (logFile, requireDeviceID, ...).
func (e *Env) SetNode(fields map[string]any) {
	e.t.Helper()
	n := map[string]any{"sysfsRoot": e.SysfsRoot, "stateDir": e.StateDir, "reservedInterfacesFile": ""}
	for k, v := range fields {
		n[k] = v
	}
	b, err := json.Marshal(n)
	must(e.t, err)
	must(e.t, os.WriteFile(e.NodeFile, b, 0o644))
}

// Exec runs plugins for libcni (NewCNIConfig's exec) as a runtime on this
// world's node would: with the runtime's own environment plus the CNI_
// variables, the runtime's environment here including NodeEnv.
func (e *Env) Exec() invoke.Exec { return ExecWith(e.NodeEnv()) }

// ExecWith is libcni's default exec with env ("KEY=value") added to the
// environment of every plugin it runs.
func ExecWith(env ...string) invoke.Exec {
	return &envExec{DefaultExec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}},
		env: env}
}

type envExec struct {
	*invoke.DefaultExec
	env []string
}

func (x *envExec) ExecPlugin(ctx context.Context, pluginPath string, stdinData []byte, environ []string) ([]byte, error) {
	return x.DefaultExec.ExecPlugin(ctx, pluginPath, stdinData, slices.Concat(environ, x.env))
}

// NodeEnv is the environment variable that points an exec'd plugin at the
// env's node configuration, to append to its environment.
func (e *Env) NodeEnv() string {
	return config.NodeConfigEnv + "=" + e.NodeFile
}

// NewPod makes a pod netns, removed when the test ends unless the test
// deleted it first.
func (e *Env) NewPod() ns.NetNS {
	e.t.Helper()
	return NewNS(e.t, "pod")
}

// NewNS makes a netns bind-mounted under /var/run/netns (what names a pod's
// netns on a node) and removes it when the test ends, passed or failed.
func NewNS(t testing.TB, what string) ns.NetNS {
	t.Helper()
	n, err := CreateNS()
	if err != nil {
		t.Fatalf("create %s netns: %v", what, err)
	}
	t.Cleanup(func() {
		if err := RemoveNS(n); err != nil {
			t.Errorf("remove %s netns: %v", what, err)
		}
	})
	return n
}

// nsCreate serialises CreateNS within this process.
var nsCreate sync.Mutex

// CreateNS is testutils.NewNS, one caller at a time; the caller removes the
// netns (RemoveNS). On a host where /var/run/netns is not yet a mount
// point, NewNS bind-mounts the directory on itself first, and two callers
// doing that at once stack two mounts there, one of which nothing removes.
// A flock on /var/run holds off the tests of other packages, which go test
// runs in parallel processes.
func CreateNS() (ns.NetNS, error) {
	nsCreate.Lock()
	defer nsCreate.Unlock()
	if dir, err := os.Open("/var/run"); err == nil {
		defer dir.Close()
		if unix.Flock(int(dir.Fd()), unix.LOCK_EX) == nil {
			defer func() { _ = unix.Flock(int(dir.Fd()), unix.LOCK_UN) }()
		}
	}
	return testutils.NewNS()
}

// RemoveNS makes a netns from CreateNS go away as a force-deleted pod's
// does: the handle closed, the bind mount detached and its file removed.
// Removing a netns twice is not an error.
//
// The detach is lazy. A plain unmount (testutils.UnmountNS) fails with
// EBUSY while any open file still refers to the mount, and then the netns
// stays mounted on the host for good. That happens without any leak: a
// plugin process forked by a parallel test holds a copy of every file of
// this process, close-on-exec or not, until it execs. Lazily, the path is
// gone at once and the namespace when the last such file is closed.
func RemoveNS(n ns.NetNS) error {
	_ = n.Close() // fails only if already closed
	path := n.Path()
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// DeleteNS makes a netns go away as a force-deleted pod's does (RemoveNS).
// The kernel destroys it once nothing refers to it; virtual links in it die
// with it.
func DeleteNS(t testing.TB, n ns.NetNS) {
	t.Helper()
	if err := RemoveNS(n); err != nil {
		t.Errorf("delete netns: %v", err)
	}
}

// AddPF creates a PF called name with numVFs VF netdevs named <name>v<i>.
func (e *Env) AddPF(name string, numVFs int) PF {
	return e.AddPFWithVFs(name, numVFs, nil)
}

// AddPFWithVFs is AddPF where the VFs whose index is in noNetdev get a PCI
// function but no netdev (as when bound to vfio-pci).
func (e *Env) AddPFWithVFs(name string, numVFs int, noNetdev map[int]bool) PF {
	e.t.Helper()
	bus := e.nextBus
	e.nextBus++
	pf := PF{PCI: fmt.Sprintf("0000:%02x:00.0", bus), Name: name}
	pfDir := e.pciDir(pf.PCI)
	e.writeFile(filepath.Join(pfDir, "sriov_totalvfs"), fmt.Sprint(max(numVFs, 1)))
	e.writeFile(filepath.Join(pfDir, "sriov_numvfs"), fmt.Sprint(numVFs))
	e.addNetdev(pf.PCI, name)
	for i := range numVFs {
		// VFs live on their own bus, 8 functions per device, as on metal.
		vf := VF{Index: i, PCI: fmt.Sprintf("0000:%02x:%02x.%d", bus+0x40, i/8, i%8)}
		vfDir := e.pciDir(vf.PCI)
		must(e.t, os.Symlink("../"+pf.PCI, filepath.Join(vfDir, "physfn")))
		must(e.t, os.Symlink("../"+vf.PCI, filepath.Join(pfDir, fmt.Sprintf("virtfn%d", i))))
		if !noNetdev[i] {
			vf.Name = fmt.Sprintf("%sv%d", name, i)
			e.addNetdev(vf.PCI, vf.Name)
		}
		pf.VFs = append(pf.VFs, vf)
	}
	e.PFs = append(e.PFs, pf)
	return pf
}

// AddPlainNetdev creates a non-SR-IOV netdev (no sriov_totalvfs), like a
// node's ordinary NIC.
func (e *Env) AddPlainNetdev(pci, name string) {
	e.t.Helper()
	e.pciDir(pci)
	e.addNetdev(pci, name)
}

func (e *Env) pciDir(pci string) string {
	dir := filepath.Join(e.SysfsRoot, "devices", "pci0000:00", pci)
	must(e.t, os.MkdirAll(dir, 0o755))
	must(e.t, os.Symlink("../../../devices/pci0000:00/"+pci, filepath.Join(e.SysfsRoot, "bus", "pci", "devices", pci)))
	return dir
}

// addNetdev makes a real ifb link in the host netns and the sysfs entries
// that tie its name to a PCI function.
func (e *Env) addNetdev(pci, name string) {
	e.t.Helper()
	err := e.Host.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}})
	})
	if err != nil {
		e.t.Fatalf("create link %q: %v", name, err)
	}
	netDir := filepath.Join(e.SysfsRoot, "devices", "pci0000:00", pci, "net", name)
	must(e.t, os.MkdirAll(netDir, 0o755))
	must(e.t, os.Symlink("../../", filepath.Join(netDir, "device")))
	must(e.t, os.Symlink("../../devices/pci0000:00/"+pci+"/net/"+name, filepath.Join(e.SysfsRoot, "class", "net", name)))
}

// NetdevAnew gives a VF a new netdev on the host, as its driver does when a
// job re-creates the VFs or rebinds one: an ifb link under a kernel name,
// without the plugin's tag, that sysfs lists under the VF's PCI function
// with its ifindex and bus, as /sys does. Real sysfs is all that names its
// PCI function where the kernel sends no parent device over netlink
// (before 5.14); an ifb never has one. An ifb's MAC cannot be changed,
// so it is made with mac (the one the plugin would give it back). The
// VF's old netdev, wherever it is, is the caller's to delete.
func (e *Env) NetdevAnew(vf VF, name string, mac net.HardwareAddr) {
	e.t.Helper()
	dev := filepath.Join(e.SysfsRoot, "devices", "pci0000:00", vf.PCI)
	if vf.Name != "" {
		must(e.t, os.RemoveAll(filepath.Join(dev, "net", vf.Name)))
		_ = os.Remove(filepath.Join(e.SysfsRoot, "class", "net", vf.Name))
	}
	var index int
	err := e.Host.Do(func(ns.NetNS) error {
		if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: mac}}); err != nil {
			return err
		}
		l, err := netlink.LinkByName(name)
		if err == nil {
			index = l.Attrs().Index
		}
		return err
	})
	if err != nil {
		e.t.Fatalf("create link %q: %v", name, err)
	}
	netDir := filepath.Join(dev, "net", name)
	must(e.t, os.MkdirAll(netDir, 0o755))
	must(e.t, os.Symlink("../../../"+vf.PCI, filepath.Join(netDir, "device")))
	e.writeFile(filepath.Join(netDir, "ifindex"), fmt.Sprint(index))
	if _, err := os.Lstat(filepath.Join(dev, "subsystem")); err != nil {
		must(e.t, os.Symlink("../../../bus/pci", filepath.Join(dev, "subsystem")))
	}
	must(e.t, os.Symlink("../../devices/pci0000:00/"+vf.PCI+"/net/"+name, filepath.Join(e.SysfsRoot, "class", "net", name)))
}

// RemoveVF makes a VF's PCI function disappear, as lowering sriov_numvfs
// does.
func (e *Env) RemoveVF(pf PF, index int) {
	e.t.Helper()
	vf := pf.VFs[index]
	must(e.t, os.RemoveAll(filepath.Join(e.SysfsRoot, "devices", "pci0000:00", vf.PCI)))
	must(e.t, os.Remove(filepath.Join(e.SysfsRoot, "bus", "pci", "devices", vf.PCI)))
	must(e.t, os.Remove(filepath.Join(e.SysfsRoot, "devices", "pci0000:00", pf.PCI, fmt.Sprintf("virtfn%d", index))))
	if vf.Name != "" {
		_ = os.Remove(filepath.Join(e.SysfsRoot, "class", "net", vf.Name))
	}
}

// BindVFIO makes a VF look bound to vfio-pci by a job (driver_override,
// unbind, drivers_probe): sysfs lists no netdev for it (the caller deletes
// the ifb link wherever it is), its driver link points at vfio-pci and its
// IOMMU group is group. The tree gets the files a release writes to give
// the VF back (driver_override, the driver's unbind, drivers_probe); the
// fake kernel behind them does nothing, so a test reads what was written.
func (e *Env) BindVFIO(vf VF, group int) {
	e.t.Helper()
	dev := filepath.Join(e.SysfsRoot, "devices", "pci0000:00", vf.PCI)
	if vf.Name != "" {
		must(e.t, os.RemoveAll(filepath.Join(dev, "net")))
		_ = os.Remove(filepath.Join(e.SysfsRoot, "class", "net", vf.Name))
	}
	drv := filepath.Join(e.SysfsRoot, "bus", "pci", "drivers", "vfio-pci")
	must(e.t, os.MkdirAll(drv, 0o755))
	for _, f := range []string{filepath.Join(drv, "unbind"), filepath.Join(e.SysfsRoot, "bus", "pci", "drivers_probe")} {
		if _, err := os.Stat(f); err != nil {
			e.writeFile(f, "")
		}
	}
	must(e.t, os.Symlink("../../../bus/pci/drivers/vfio-pci", filepath.Join(dev, "driver")))
	e.writeFile(filepath.Join(dev, "driver_override"), "vfio-pci")
	g := filepath.Join(e.SysfsRoot, "kernel", "iommu_groups", fmt.Sprint(group))
	must(e.t, os.MkdirAll(g, 0o755))
	must(e.t, os.Symlink("../../../kernel/iommu_groups/"+fmt.Sprint(group), filepath.Join(dev, "iommu_group")))
}

func (e *Env) writeFile(path, content string) {
	must(e.t, os.WriteFile(path, []byte(content+"\n"), 0o644))
}

// Conf is a network configuration for this world; fields override or add
// to the defaults. What points the plugin at this world is the node
// configuration (NodeFile), as on a node.
func (e *Env) Conf(fields map[string]any) []byte {
	e.t.Helper()
	c := map[string]any{"cniVersion": "1.1.0", "name": "sriov-passthrough-cni", "type": "sriov-passthrough-cni"}
	for k, v := range fields {
		c[k] = v
	}
	b, err := json.Marshal(c)
	must(e.t, err)
	return b
}

// Links lists the links in a netns by name (loopback left out).
func Links(t testing.TB, n ns.NetNS) map[string]netlink.Link {
	t.Helper()
	out := map[string]netlink.Link{}
	err := n.Do(func(ns.NetNS) error {
		links, err := netlink.LinkList()
		for _, l := range links {
			if l.Attrs().Name != "lo" {
				out[l.Attrs().Name] = l
			}
		}
		return err
	})
	must(t, err)
	return out
}

// AllNames is every netdev name the env created for its PFs and VFs.
func (e *Env) AllNames() []string {
	var names []string
	for _, pf := range e.PFs {
		names = append(names, pf.Name)
		for _, vf := range pf.VFs {
			if vf.Name != "" {
				names = append(names, vf.Name)
			}
		}
	}
	return names
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// MoveLink moves a link by name from one netns to another: what a
// workload does, or the kernel when a netns holding a physical device dies.
func MoveLink(t testing.TB, from, to ns.NetNS, name string) {
	t.Helper()
	err := from.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		return netlink.LinkSetNsFd(l, int(to.Fd()))
	})
	if err != nil {
		t.Fatalf("move %s: %v", name, err)
	}
}
