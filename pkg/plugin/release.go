package plugin

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/failpoint"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// release gives every device of rec that is not yet back to the host,
// under its original name, MTU and admin state, then removes the record.
// It looks for each device, by PCI address, in places (the pod netns, nil
// when gone) and on the host; for devices found nowhere it waits up to
// settle for the kernel to hand them back from a dying netns. A device still
// missing then stays pending in the record, and a later run retries it. The
// error is non-nil only when a device was found and could not be restored.
func (o *op) release(rec *state.Record, places []*netdev.NS, settle time.Duration) error {
	log := o.log.With("releasing", rec.Key(), "owner", rec.Pod.String(), "pf", rec.PF().PCIAddress)
	if rec.Phase != state.Releasing {
		rec.Phase = state.Releasing
		if err := o.store.Save(rec); err != nil {
			return err
		}
		failpoint.Hit("release/record-releasing")
	}
	o.dropVanished(rec, log)
	if len(rec.Pending()) == 0 {
		return o.finish(rec, log)
	}
	g := &gathering{in: map[string]netlink.Link{}, from: map[string]*netdev.NS{}}
	defer func() { g.transit.Close() }()
	err := o.gather(rec, g, places, settle)
	err = errors.Join(err, o.restore(rec, g, log))
	for _, d := range rec.Pending() {
		if _, ok := g.from[d.PCIAddress]; !ok {
			log.Warn("device not found in the pod or on the host; will retry on the next ADD, DEL or GC",
				"pci", d.PCIAddress, "originalName", d.OriginalName, "podName", d.PodName)
		}
	}
	if len(rec.Pending()) > 0 {
		return errors.Join(err, o.store.Save(rec))
	}
	return errors.Join(err, o.finish(rec, log))
}

func (o *op) finish(rec *state.Record, log *slog.Logger) error {
	if err := o.store.Remove(rec.Key()); err != nil {
		return err
	}
	failpoint.Hit("release/record-removed")
	log.Info("released PF; record removed", "hostName", rec.PF().OriginalName)
	return nil
}

// dropVanished marks devices whose PCI function no longer exists as done:
// lowering sriov_numvfs removes VFs, and their netdevs with them.
func (o *op) dropVanished(rec *state.Record, log *slog.Logger) {
	for _, d := range rec.Pending() {
		if !o.sys.DeviceExists(d.PCIAddress) {
			log.Warn("PCI function is gone from the node; dropping it from the record", "pci", d.PCIAddress, "originalName", d.OriginalName)
			d.Released = true
		}
	}
}

// gathering tracks the devices collected in the transit netns.
type gathering struct {
	transit *netdev.NS              // nil until a device needs it
	in      map[string]netlink.Link // PCI address -> link, in transit
	from    map[string]*netdev.NS   // PCI address -> where it was found
	atHost  map[string]netlink.Link // found on the host already named right
	parked  int
}

// gather moves every pending device it can find into transit. Devices
// already on the host under their original name stay where they are;
// those elsewhere that have it go straight home (sendHome).
func (o *op) gather(rec *state.Record, g *gathering, places []*netdev.NS, settle time.Duration) error {
	g.atHost = map[string]netlink.Link{}
	search := append(append([]*netdev.NS{}, places...), o.host)
	deadline := time.Now().Add(settle)
	for {
		for _, ns := range search {
			if ns == nil || len(g.from) == len(rec.Pending()) {
				continue
			}
			links, err := ns.ByPCI()
			if err != nil {
				return err
			}
			for _, d := range rec.Pending() {
				if _, done := g.from[d.PCIAddress]; done {
					continue
				}
				l, ok := links[d.PCIAddress]
				if !ok && ns == o.host {
					l, ok = o.untaggedAtHost(d)
				}
				if !ok {
					continue
				}
				if ns == o.host && l.Attrs().Name == d.OriginalName {
					g.from[d.PCIAddress], g.atHost[d.PCIAddress] = ns, l
					continue
				}
				if l.Attrs().Name == d.OriginalName {
					home, err := sendHome(ns, o.host, l)
					if err != nil {
						return err
					}
					if home {
						g.from[d.PCIAddress] = ns
						continue
					}
				}
				if err := g.admit(ns, l, d.PCIAddress); err != nil {
					return err
				}
			}
		}
		if len(g.from) == len(rec.Pending()) || !time.Now().Before(deadline) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// untaggedAtHost finds a pending device that sits on the host under its
// original name with no PCI identity netlink can show: the kernel does not
// report its parent device (IFLA_PARENT_DEV_NAME is a late 5.x addition)
// and it carries no tag, because the ADD that recorded it died before
// tagging it, or a release died after removing the tag but before saving
// the record. Host sysfs lists host-netns netdevs under their PCI
// function, so it can vouch for the name.
func (o *op) untaggedAtHost(d *state.Device) (netlink.Link, bool) {
	if _, err := os.Stat(filepath.Join(o.sys.DevicePath(d.PCIAddress), "net", d.OriginalName)); err != nil {
		return nil, false
	}
	l, err := o.host.Handle().LinkByName(d.OriginalName)
	if err != nil || netdev.PCIOf(l) != "" {
		return nil, false // gone meanwhile, or another device's tag says otherwise
	}
	return l, true
}

// sendHome moves a device that already has its original name straight to
// the host: no rename, so no transit, and one netns move instead of two
// (each costs the kernel an rcu_barrier(), ~20 ms on a 2-core VM). If the
// host has a link by that name now, the kernel refuses with EEXIST before
// touching the device, and it goes through transit like the others.
func sendHome(ns, host *netdev.NS, l netlink.Link) (bool, error) {
	err := ns.Move(l, host)
	if errors.Is(err, unix.EEXIST) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	failpoint.Hit("release/to-host")
	return true, nil
}

// transitNS returns the transit netns, creating it on first use: a release
// whose devices all go straight home (a retried DEL, VFs that kept their
// names) creates and tears down no namespace under the lock.
func (g *gathering) transitNS() (*netdev.NS, error) {
	if g.transit == nil {
		t, err := netdev.Temp()
		if err != nil {
			return nil, err
		}
		g.transit = t
	}
	return g.transit, nil
}

// admit moves l from ns into transit. Devices come from several places, so
// two may share a name; the one already in transit is parked aside first.
func (g *gathering) admit(ns *netdev.NS, l netlink.Link, addr string) error {
	transit, err := g.transitNS()
	if err != nil {
		return err
	}
	name := l.Attrs().Name
	for a, t := range g.in {
		if t.Attrs().Name == name && a != addr {
			if err := transit.Rename(t, fmt.Sprintf("sptmp%d", g.parked)); err != nil {
				return err
			}
			g.parked++
		}
	}
	if err := ns.Move(l, transit); err != nil {
		return err
	}
	failpoint.Hit("release/to-transit")
	g.in[addr], g.from[addr] = l, ns
	return nil
}

// restore renames the gathered devices to their original names, moves them
// to the host, and brings back their MTU and admin state (on the host: a
// netns move takes a device down, and MTU is set where it is checked).
func (o *op) restore(rec *state.Record, g *gathering, log *slog.Logger) error {
	var errs []error
	if len(g.in) > 0 {
		inTransit, err := g.transit.ByPCI()
		if err != nil {
			return err
		}
		names := map[string]string{}
		for _, d := range rec.Pending() {
			if _, ok := inTransit[d.PCIAddress]; ok {
				names[d.PCIAddress] = d.OriginalName
			}
		}
		if err := g.transit.RenameAll(inTransit, names); err != nil {
			return err
		}
		failpoint.Hit("release/renamed")
		for _, d := range rec.Pending() {
			l, ok := inTransit[d.PCIAddress]
			if !ok {
				continue
			}
			if err := g.transit.Move(l, o.host); err != nil {
				errs = append(errs, err)
				// Do not leave it in transit: a virtual link would die with
				// it, and a physical one would return as devN.
				if src := g.from[d.PCIAddress]; src != nil && src != o.host {
					if berr := g.transit.Move(l, src); berr != nil {
						errs = append(errs, berr)
					}
				}
				delete(g.from, d.PCIAddress)
				continue
			}
			failpoint.Hit("release/to-host")
		}
	}
	hostLinks, err := o.host.ByPCI()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, d := range rec.Pending() {
		if _, found := g.from[d.PCIAddress]; !found {
			continue
		}
		l, ok := hostLinks[d.PCIAddress]
		if !ok {
			l, ok = g.atHost[d.PCIAddress]
		}
		if !ok || l.Attrs().Name != d.OriginalName {
			errs = append(errs, fmt.Errorf("device %s is not on the host as %q after the move", d.PCIAddress, d.OriginalName))
			continue
		}
		if err := o.restoreHostState(l, d); err != nil {
			errs = append(errs, err)
			continue
		}
		failpoint.Hit("release/restored")
		d.Released = true
		log.Info("device back on the host", "pci", d.PCIAddress, "name", d.OriginalName, "vf", d.VFIndex)
	}
	return errors.Join(errs...)
}

func (o *op) restoreHostState(l netlink.Link, d *state.Device) error {
	if err := o.host.SetMTU(l, d.MTU); err != nil {
		return err
	}
	if d.Up {
		if err := o.host.SetUp(l); err != nil {
			return err
		}
	}
	return o.host.DelTag(l, d.PCIAddress)
}

// vet refuses a record whose devices are not this node's SR-IOV PF and its
// VFs, so a tampered or foreign state file cannot make the plugin move
// arbitrary devices.
func (o *op) vet(rec *state.Record) error {
	pf, err := o.sys.PF(rec.PF().PCIAddress)
	if errors.Is(err, sriov.ErrNotPF) && !o.sys.DeviceExists(rec.PF().PCIAddress) {
		// The PF is gone (hot-unplugged), and its VFs went with it: a
		// device of the record that still exists is not one of them.
		for _, d := range rec.Devices[1:] {
			if o.sys.DeviceExists(d.PCIAddress) {
				return fmt.Errorf("PF %s is gone but device %s still exists, so it is not its VF", rec.PF().PCIAddress, d.PCIAddress)
			}
		}
		return nil // nothing to move
	}
	if err != nil {
		return err
	}
	vfs := map[string]bool{}
	for _, vf := range pf.VFs {
		vfs[vf.PCIAddress] = true
	}
	for _, d := range rec.Devices[1:] {
		if !vfs[d.PCIAddress] && o.sys.DeviceExists(d.PCIAddress) {
			return fmt.Errorf("device %s is not a VF of PF %s", d.PCIAddress, pf.PCIAddress)
		}
	}
	return nil
}
