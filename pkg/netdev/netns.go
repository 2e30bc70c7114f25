// Package netdev moves, renames and finds network devices across network
// namespaces with netlink.
//
// A device is identified by its PCI address, never by its name: the
// workload may rename it, move it on into a nested netns, or the kernel may
// hand it back to init_net as devN when the netns it was in dies. netlink
// reports the PCI parent of a physical netdev in any netns
// (IFLA_PARENT_DEV_NAME); in addition the plugin tags each device it holds
// with an alternative name derived from its PCI address, which follows the
// device through moves and renames and shows in `ip link` while the plugin
// holds the device. Kernels before 5.14 do not send the parent device; for
// the host netns the sysfs mounted for it has the same fact
// (class/net/<name>/device), so a device the plugin has not tagged (a VF a
// job created, a VF netdev a restore brought back) is still found there.
package netdev

import (
	"errors"
	"fmt"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is an open network namespace with a netlink socket inside it. The
// socket stays inside this package: every dump goes through netlinksafe,
// which retries when the kernel interrupts a dump that changed under it.
type NS struct {
	ns ns.NetNS
	nl netlinksafe.Handle
	// label names the netns in errors as a person on the node sees it:
	// "host", "transit", or "pod /var/run/netns/...".
	label string
	// sysfs is where a sysfs of this very netns is mounted, "" when none
	// is: sysfs lists only the netdevs of the netns that mounted it, so
	// only the host netns has one.
	sysfs string
}

// Open opens a pod's netns bind-mounted at path. Errors wrap
// ns.NSPathNotExistErr or ns.NSPathNotNSErr where the path is wrong.
func Open(path string) (*NS, error) {
	n, err := ns.GetNS(path)
	if err != nil {
		return nil, err
	}
	return withHandle(n, "pod "+path)
}

// Current opens the netns of the calling thread: the host netns for the
// plugin. sysfsRoot is where the sysfs of this netns is mounted ("/sys"
// on a node; "" when there is none, as for a test's throwaway netns):
// links that netlink does not name a parent device for are matched to
// their PCI functions there (PCIOf).
func Current(sysfsRoot string) (*NS, error) {
	n, err := ns.GetCurrentNS()
	if err != nil {
		return nil, fmt.Errorf("open current netns: %w", err)
	}
	h, err := withHandle(n, "host")
	if err != nil {
		return nil, err
	}
	h.sysfs = sysfsRoot
	return h, nil
}

// Temp creates an unnamed netns that lives as long as it is open. If the
// process dies, the kernel destroys it and moves its physical devices back
// to init_net, so nothing parked in it can be lost.
func Temp() (*NS, error) {
	n, err := ns.TempNetNS()
	if err != nil {
		return nil, fmt.Errorf("create transit netns: %w", err)
	}
	return withHandle(n, "transit")
}

func withHandle(n ns.NetNS, label string) (*NS, error) {
	// Only NETLINK_ROUTE: minimal kernels without XFRM refuse the default
	// family list with "protocol not supported".
	h, err := netlinksafe.NewHandleAt(netns.NsHandle(n.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("open netlink socket in %s netns: %w", label, err)
	}
	return &NS{ns: n, nl: h, label: label}, nil
}

// Close releases the netlink socket and the netns handle. Leaked handles
// keep a dying netns, and the devices in it, alive.
func (n *NS) Close() error {
	if n == nil {
		return nil
	}
	n.nl.Close()
	return n.ns.Close()
}

// String names the netns as a person sees it: "host", "transit" or
// "pod <path>".
func (n *NS) String() string { return n.label }

// Same reports whether a and b are the same network namespace.
func Same(a, b *NS) (bool, error) {
	ia, err := Inode(a.ns.Fd())
	if err != nil {
		return false, err
	}
	ib, err := Inode(b.ns.Fd())
	if err != nil {
		return false, err
	}
	return ia == ib, nil
}

// ID identifies a netns: the device and inode of its nsfs file.
type ID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// ID returns the namespace's identity, stable while the netns lives.
func (n *NS) ID() (ID, error) { return Inode(n.ns.Fd()) }

// Inode stats a netns file descriptor.
func Inode(fd uintptr) (ID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(fd), &st); err != nil {
		return ID{}, fmt.Errorf("stat netns: %w", err)
	}
	return ID{Dev: st.Dev, Ino: st.Ino}, nil
}

// PathID stats a netns path without opening it as a namespace.
func PathID(path string) (ID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ID{}, err
	}
	return ID{Dev: st.Dev, Ino: st.Ino}, nil
}

// Alive reports whether the netns recorded as id is still the one at path.
// A runtime removes the bind mount when the pod goes, and the kernel may
// reuse the inode only once the namespace is gone, so a path that now
// names another namespace means the recorded one is dead.
func Alive(path string, id ID) bool {
	got, err := PathID(path)
	return err == nil && got == id
}

// OpenIfAlive opens the netns at path if it is still the one recorded as
// id; nil when it is gone or the path now holds another.
func OpenIfAlive(path string, id ID) *NS {
	if !Alive(path, id) {
		return nil
	}
	n, err := Open(path)
	if err != nil {
		return nil
	}
	if got, err := n.ID(); err != nil || got != id {
		n.Close()
		return nil
	}
	return n
}

// IsNotExist reports whether err says a netns path does not exist.
func IsNotExist(err error) bool {
	var e ns.NSPathNotExistErr
	return errors.As(err, &e)
}

// IsNotNS reports whether err says a path is not a netns.
func IsNotNS(err error) bool {
	var e ns.NSPathNotNSErr
	return errors.As(err, &e)
}

// Links dumps every link in the netns.
func (n *NS) Links() ([]netlink.Link, error) {
	links, err := n.nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in %s netns: %w", n, err)
	}
	return links, nil
}

// LinkByName finds one link by name.
func (n *NS) LinkByName(name string) (netlink.Link, error) {
	l, err := n.nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find %q in %s netns: %w", name, n, err)
	}
	return l, nil
}

// Addrs dumps every address, IPv4 and IPv6.
func (n *NS) Addrs() ([]netlink.Addr, error) {
	// netlinksafe has no address dump of its own: retry here when the
	// kernel interrupts a dump because addresses changed under it.
	addrs, err := n.nl.AddrList(nil, netlink.FAMILY_ALL)
	for try := 0; errors.Is(err, netlink.ErrDumpInterrupted) && try < 5; try++ {
		addrs, err = n.nl.AddrList(nil, netlink.FAMILY_ALL)
	}
	if err != nil {
		return nil, fmt.Errorf("list addresses in %s netns: %w", n, err)
	}
	return addrs, nil
}

// Do runs f with the calling thread inside the netns.
func (n *NS) Do(f func() error) error {
	return n.ns.Do(func(ns.NetNS) error { return f() })
}
