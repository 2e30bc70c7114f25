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
// holds the device.
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

// NS is an open network namespace with a netlink socket inside it.
type NS struct {
	ns ns.NetNS
	nl netlinksafe.Handle
}

// Open opens the netns bind-mounted at path. Errors wrap
// ns.NSPathNotExistErr or ns.NSPathNotNSErr where the path is wrong.
func Open(path string) (*NS, error) {
	n, err := ns.GetNS(path)
	if err != nil {
		return nil, err
	}
	return withHandle(n)
}

// Current opens the netns of the calling thread: the host netns for the
// plugin.
func Current() (*NS, error) {
	n, err := ns.GetCurrentNS()
	if err != nil {
		return nil, fmt.Errorf("open current netns: %w", err)
	}
	return withHandle(n)
}

// Temp creates an unnamed netns that lives as long as it is open. If the
// process dies, the kernel destroys it and moves its physical devices back
// to init_net, so nothing parked in it can be lost.
func Temp() (*NS, error) {
	n, err := ns.TempNetNS()
	if err != nil {
		return nil, fmt.Errorf("create transit netns: %w", err)
	}
	return withHandle(n)
}

func withHandle(n ns.NetNS) (*NS, error) {
	// Only NETLINK_ROUTE: minimal kernels without XFRM refuse the default
	// family list with "protocol not supported".
	h, err := netlinksafe.NewHandleAt(netns.NsHandle(n.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("open netlink socket in netns %q: %w", n.Path(), err)
	}
	return &NS{ns: n, nl: h}, nil
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

// Path is the netns path as opened.
func (n *NS) Path() string { return n.ns.Path() }

// Handle is the netlink socket inside the netns.
func (n *NS) Handle() netlinksafe.Handle { return n.nl }

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
		return nil, fmt.Errorf("list links in netns %q: %w", n.Path(), err)
	}
	return links, nil
}

// Do runs f with the calling thread inside the netns.
func (n *NS) Do(f func() error) error {
	return n.ns.Do(func(ns.NetNS) error { return f() })
}
