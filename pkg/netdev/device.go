package netdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const tagPrefix = "sriovpt."

// Tag is the alternative name the plugin gives a device while it holds it.
// ':' is not allowed in interface names, so it becomes '.'.
func Tag(pciAddr string) string {
	return tagPrefix + strings.ReplaceAll(pciAddr, ":", ".")
}

// PCIOf returns the PCI address behind a link, "" for a link that is
// neither a PCI netdev nor tagged by the plugin, as far as netlink says:
// the parent device (IFLA_PARENT_DEV_NAME, sent from kernel 5.14 on) or
// the plugin's tag. NS.PCIOf also asks sysfs.
func PCIOf(l netlink.Link) string {
	a := l.Attrs()
	if a.ParentDevBus == "pci" && a.ParentDev != "" {
		return a.ParentDev
	}
	for _, alt := range a.AltNames {
		if rest, ok := strings.CutPrefix(alt, tagPrefix); ok {
			return tagToPCI(rest)
		}
	}
	return ""
}

// PCIOf returns the PCI address behind a link of this netns: netlink's
// answer (PCIOf), or else, in a netns whose sysfs is known (the host),
// the PCI function sysfs lists the link under. Kernels before 5.14 (Debian
// 11's 5.10) name no parent device, and a link the plugin has not tagged,
// such as a VF netdev a job or a restore created, is found only there.
func (n *NS) PCIOf(l netlink.Link) string {
	if addr := PCIOf(l); addr != "" || n.sysfs == "" {
		return addr
	}
	return pciInSysfs(n.sysfs, l.Attrs())
}

// pciInSysfs reads the PCI function behind class/net/<name> of the sysfs
// at root. The entry must still be the link's own (its ifindex, unique in
// the netns, matches): a link renamed since the dump leaves its old name
// to another device or to none.
func pciInSysfs(root string, a *netlink.LinkAttrs) string {
	if a.Name == "" || a.Name == "." || a.Name == ".." || strings.ContainsRune(a.Name, '/') {
		return ""
	}
	dir := filepath.Join(root, "class", "net", a.Name)
	// One lstat settles a virtual link (a node's many pod veths): it has
	// no device.
	if _, err := os.Lstat(filepath.Join(dir, "device")); err != nil {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(dir, "ifindex"))
	if err != nil {
		return ""
	}
	if idx, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || idx != a.Index {
		return ""
	}
	dev, err := filepath.EvalSymlinks(filepath.Join(dir, "device"))
	if err != nil {
		return ""
	}
	bus, err := os.Readlink(filepath.Join(dev, "subsystem"))
	if err != nil || filepath.Base(bus) != "pci" {
		return "" // on another bus
	}
	return filepath.Base(dev)
}

// tagToPCI turns "0000.3b.00.0" back into "0000:3b:00.0".
func tagToPCI(s string) string {
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return ""
	}
	return parts[0] + ":" + parts[1] + ":" + parts[2] + "." + parts[3]
}

// ByPCI dumps the netns once and indexes its links by PCI address.
func (n *NS) ByPCI() (map[string]netlink.Link, error) {
	links, err := n.Links()
	if err != nil {
		return nil, err
	}
	m := make(map[string]netlink.Link, len(links))
	for _, l := range links {
		if addr := n.PCIOf(l); addr != "" {
			m[addr] = l
		}
	}
	return m, nil
}

// ByName dumps the netns once and indexes its links by name.
func (n *NS) ByName() (map[string]netlink.Link, error) {
	links, err := n.Links()
	if err != nil {
		return nil, err
	}
	m := make(map[string]netlink.Link, len(links))
	for _, l := range links {
		m[l.Attrs().Name] = l
	}
	return m, nil
}

// AddTag gives a link the plugin's alternative name for pciAddr, unless
// netlink already names the link's PCI function (PCIOf): kernels from 5.14
// send the parent device in every netns, and only older ones (Debian 11's
// 5.10) need the tag where no sysfs of ours can be asked, as in a pod.
// Each tag added costs its removal later (about 15 ms on 6.1 under TCG,
// docs/bench.md). A tag left by an earlier, interrupted run is fine.
func (n *NS) AddTag(l netlink.Link, pciAddr string) error {
	if PCIOf(l) == pciAddr {
		return nil
	}
	err := n.nl.LinkAddAltName(l, Tag(pciAddr))
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("tag %q with altname %s: %w", l.Attrs().Name, Tag(pciAddr), err)
	}
	return nil
}

// DelTag removes the plugin's alternative name, if the link has it.
func (n *NS) DelTag(l netlink.Link, pciAddr string) error {
	tag := Tag(pciAddr)
	for _, alt := range l.Attrs().AltNames {
		if alt == tag {
			if err := n.nl.LinkDelAltName(l, tag); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("remove altname %s from %q: %w", tag, l.Attrs().Name, err)
			}
		}
	}
	return nil
}

// Move sends a link from n into dst. The kernel takes the device down on
// the way, keeps its name (failing with EEXIST if dst has that name) and
// keeps its ifindex unless dst already uses it.
func (n *NS) Move(l netlink.Link, dst *NS) error {
	if err := n.nl.LinkSetNsFd(l, int(dst.ns.Fd())); err != nil {
		return fmt.Errorf("move %q from %s netns to %s netns: %w", l.Attrs().Name, n, dst, err)
	}
	return nil
}

// Rename renames a link inside n. The kernel refuses to rename a device
// that is up, so callers rename before setting links up.
func (n *NS) Rename(l netlink.Link, name string) error {
	if err := n.nl.LinkSetName(l, name); err != nil {
		return fmt.Errorf("rename %q to %q in %s netns: %w", l.Attrs().Name, name, n, err)
	}
	l.Attrs().Name = name
	return nil
}

// SetUp sets a link administratively up.
func (n *NS) SetUp(l netlink.Link) error {
	if err := n.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %q up in %s netns: %w", l.Attrs().Name, n, err)
	}
	return nil
}

// SetDown sets a link administratively down.
func (n *NS) SetDown(l netlink.Link) error {
	if err := n.nl.LinkSetDown(l); err != nil {
		return fmt.Errorf("set %q down in %s netns: %w", l.Attrs().Name, n, err)
	}
	return nil
}

// SetMTU changes a link's MTU if it differs.
func (n *NS) SetMTU(l netlink.Link, mtu int) error {
	if mtu == 0 || l.Attrs().MTU == mtu {
		return nil
	}
	if err := n.nl.LinkSetMTU(l, mtu); err != nil {
		return fmt.Errorf("set MTU %d on %q in %s netns: %w", mtu, l.Attrs().Name, n, err)
	}
	return nil
}

// IsParked reports whether name is one Park hands out.
func IsParked(name string) bool { return strings.HasPrefix(name, tempPrefix) }

// tempPrefix starts the names of links parked aside while others take
// their names. It is no kernel name pattern (ethN, devN, enp...), so udev
// and the kernel never hand it out.
const tempPrefix = "sptmp"

// Park renames l to a temporary name that is free in n and in every netns
// of also (where l is to go next), and returns it. The netns are looked at
// for every call: a name an earlier, killed run left on a device is
// skipped, not reused.
func (n *NS) Park(l netlink.Link, also ...*NS) (string, error) {
	taken := map[string]bool{}
	for _, x := range append([]*NS{n}, also...) {
		byName, err := x.ByName()
		if err != nil {
			return "", err
		}
		for name := range byName {
			taken[name] = true
		}
	}
	for i := 0; ; i++ {
		name := fmt.Sprintf("%s%d", tempPrefix, i)
		if taken[name] {
			continue
		}
		if err := n.Rename(l, name); err != nil {
			return "", err
		}
		return name, nil
	}
}

// RenameAll gives every link in links (keyed by PCI address) the name in
// names, inside n. A target may be the current name of another link in the
// set (a VF called net1 while the PF is to become net1), so links whose
// target is free go first; a cycle is broken through a temporary name.
func (n *NS) RenameAll(links map[string]netlink.Link, names map[string]string) error {
	current := make(map[string]string, len(links)) // name -> PCI address
	for addr, l := range links {
		current[l.Attrs().Name] = addr
	}
	pending := make([]string, 0, len(names))
	for addr, name := range names {
		if l, ok := links[addr]; ok && l.Attrs().Name != name {
			pending = append(pending, addr)
		}
	}
	for len(pending) > 0 {
		var blocked []string
		for _, addr := range pending {
			l, target := links[addr], names[addr]
			if owner, taken := current[target]; taken && owner != addr {
				blocked = append(blocked, addr)
				continue
			}
			old := l.Attrs().Name
			if err := n.Rename(l, target); err != nil {
				return err
			}
			delete(current, old)
			current[target] = addr
		}
		if len(blocked) == len(pending) {
			// Every remaining rename waits on another: park one aside.
			l := links[blocked[0]]
			old := l.Attrs().Name
			parked, err := n.Park(l)
			if err != nil {
				return err
			}
			delete(current, old)
			current[parked] = blocked[0]
		}
		pending = blocked
	}
	return nil
}
