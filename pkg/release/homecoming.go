package release

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
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// route is how a located device gets back to the host.
type route int

const (
	// unmoved: just located, not moved yet.
	unmoved route = iota
	// home: on the host under its original name already.
	home
	// direct: had its original name elsewhere and went straight home.
	direct
	// viaTransit: parked in the transit netns, to be renamed there.
	viaTransit
	// parked: on the host under a temporary name, because another device
	// holds its original name there; it stays pending.
	parked
)

// location is where a device of the record was found, and how it is
// going home.
type location struct {
	from  *netdev.NS
	link  netlink.Link
	route route
}

// homecoming brings one record's devices back to the host. Devices come
// from the pod, from a netns the workload nested in it, or come back by
// themselves from a netns that died; each is found by PCI address.
// Devices that must be renamed meet in a private transit netns, so no name
// clash on the host or in the pod can stop them, and a crash leaves them
// in a netns the kernel empties back into init_net.
type homecoming struct {
	e       *Engine
	rec     *state.Record
	search  []*netdev.NS // the places to look, the host last
	found   map[string]*location
	transit *netdev.NS // nil until a device needs it
	// only, when set, limits the trip to the device of that PCI address
	// (the PF that must be home before its VFs are re-created).
	only string
}

func (e *Engine) newHomecoming(rec *state.Record, places []*netdev.NS) *homecoming {
	var search []*netdev.NS
	for _, ns := range places {
		if ns != nil {
			search = append(search, ns)
		}
	}
	return &homecoming{e: e, rec: rec, search: append(search, e.Host), found: map[string]*location{}}
}

func (h *homecoming) close() { h.transit.Close(); h.transit = nil }

func (h *homecoming) allFound() bool { return len(h.found) == len(h.pending()) }

// pending lists the record's pending devices this trip brings home.
func (h *homecoming) pending() []*state.Device {
	all := h.rec.Pending()
	if h.only == "" {
		return all
	}
	for _, d := range all {
		if d.PCIAddress == h.only {
			return []*state.Device{d}
		}
	}
	return nil
}

// gather locates the trip's devices and starts each on its way home,
// again until all are found or deadline has passed (a device in a dying
// netns comes back by itself), then brings home those in transit.
func (h *homecoming) gather(deadline time.Time) error {
	err := retryUntil(time.Until(deadline), func() (bool, error) {
		if err := h.locate(); err != nil {
			return false, err
		}
		return h.allFound(), h.bringHome()
	})
	return errors.Join(err, h.leaveTransit())
}

// locate looks for every pending device not found yet, one dump per place.
func (h *homecoming) locate() error {
	for _, ns := range h.search {
		if h.allFound() {
			return nil
		}
		links, err := ns.ByPCI()
		if err != nil {
			return err
		}
		for _, d := range h.pending() {
			if _, done := h.found[d.PCIAddress]; done {
				continue
			}
			l, ok := links[d.PCIAddress]
			if !ok && ns == h.e.Host {
				l, ok = h.untaggedAtHost(d)
			}
			if ok {
				h.found[d.PCIAddress] = &location{from: ns, link: l}
			}
		}
	}
	return nil
}

// untaggedAtHost finds a pending device that sits on the host under its
// original name with no PCI identity netlink can show: the kernel does not
// report its parent device (IFLA_PARENT_DEV_NAME is a late 5.x addition)
// and it carries no tag, because the ADD that recorded it died before
// tagging it, or a release died after removing the tag but before saving
// the record. Host sysfs lists host-netns netdevs under their PCI
// function, so it can vouch for the name.
func (h *homecoming) untaggedAtHost(d *state.Device) (netlink.Link, bool) {
	if _, err := os.Stat(filepath.Join(h.e.Sys.DevicePath(d.PCIAddress), "net", d.OriginalName)); err != nil {
		return nil, false
	}
	l, err := h.e.Host.LinkByName(d.OriginalName)
	if err != nil || netdev.PCIOf(l) != "" {
		return nil, false // gone meanwhile, or another device's tag says otherwise
	}
	return l, true
}

// bringHome starts every newly located device on its way: a device on
// the host under its original name stays; one elsewhere gets its original
// name where it is and goes straight home; the others (its name taken
// there, or on the host) go to transit.
func (h *homecoming) bringHome() error {
	for _, d := range h.pending() {
		loc := h.found[d.PCIAddress]
		if loc == nil || loc.route != unmoved {
			continue
		}
		if h.stillParked(loc, d) {
			loc.route = parked
			continue
		}
		if err := h.renameInPlace(loc, d); err != nil {
			return err
		}
		if loc.link.Attrs().Name == d.OriginalName {
			if loc.from == h.e.Host {
				loc.route = home
				continue
			}
			sent, err := h.sendHome(loc)
			if err != nil {
				return err
			}
			if sent {
				continue
			}
		}
		if err := h.admit(loc, d.PCIAddress); err != nil {
			return err
		}
	}
	return nil
}

// stillParked reports whether a device parked on the host by an earlier
// run must stay parked: a device that is not one of this record's pending
// ones (those go through transit with it) still holds its name. Leaving it
// be spares a move in and out of transit on every run, and the link events
// that would wake the node agent into another run.
func (h *homecoming) stillParked(loc *location, d *state.Device) bool {
	if loc.from != h.e.Host || !netdev.IsParked(loc.link.Attrs().Name) {
		return false
	}
	holder, err := h.e.Host.LinkByName(d.OriginalName)
	if err != nil {
		return false // free (or unknown: transit finds out)
	}
	pci := h.e.Host.PCIOf(holder)
	for _, p := range h.rec.Pending() {
		if pci != "" && p.PCIAddress == pci {
			return false
		}
	}
	return true
}

// renameInPlace gives a device found in the pod (or a netns the workload
// made) its original name there, so it can go home in one netns move
// instead of two through transit: each move costs the kernel an
// rcu_barrier(), and the PF, renamed to CNI_IFNAME in the pod, is the one
// device that always needs a rename. The netns is the dying pod's; nothing
// else renames in it now. The kernel renames only a device that is down
// (the move home takes it down anyway). A name taken there (EEXIST) leaves
// the device as it is, for transit. A device on the host is never renamed
// here: udev and NetworkManager watch the host's names.
func (h *homecoming) renameInPlace(loc *location, d *state.Device) error {
	if loc.from == h.e.Host || loc.link.Attrs().Name == d.OriginalName {
		return nil
	}
	if err := loc.from.SetDown(loc.link); err != nil {
		return err
	}
	err := loc.from.Rename(loc.link, d.OriginalName)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return err
	}
	failpoint.Hit(failpoint.ReleaseRenamedInPlace)
	return nil
}

// sendHome moves a device that already has its original name straight to
// the host: no rename, so no transit, and one netns move instead of two
// (each costs the kernel an rcu_barrier()). If the host has a link by that
// name now, the kernel refuses with EEXIST before touching the device, and
// it goes through transit like the others.
func (h *homecoming) sendHome(loc *location) (bool, error) {
	err := loc.from.Move(loc.link, h.e.Host)
	if errors.Is(err, unix.EEXIST) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	failpoint.Hit(failpoint.ReleaseToHost)
	loc.route = direct
	return true, nil
}

// admit moves a device into transit, creating the netns on first use: a
// release whose devices all go straight home creates none under the lock.
// Devices come from several places, so two may share a name; the one
// already in transit is parked aside first. A device that only the host's
// sysfs could name (no tag, and a kernel that sends no parent device: a
// VF netdev a job or a restore made, on 5.10) is tagged first: transit has
// no sysfs, and there the tag is all that says which device it is.
func (h *homecoming) admit(loc *location, addr string) error {
	if netdev.PCIOf(loc.link) == "" {
		if err := loc.from.AddTag(loc.link, addr); err != nil {
			return err
		}
		// The link's attributes are what later lookups read.
		loc.link.Attrs().AltNames = append(loc.link.Attrs().AltNames, netdev.Tag(addr))
	}
	if h.transit == nil {
		t, err := netdev.Temp()
		if err != nil {
			return err
		}
		h.transit = t
	}
	name := loc.link.Attrs().Name
	for a, other := range h.found {
		if a != addr && other.route == viaTransit && other.link.Attrs().Name == name {
			if _, err := h.transit.Park(other.link); err != nil {
				return err
			}
		}
	}
	if err := loc.from.Move(loc.link, h.transit); err != nil {
		return err
	}
	failpoint.Hit(failpoint.ReleaseToTransit)
	loc.route = viaTransit
	return nil
}

// leaveTransit renames the devices in transit to their original names and
// moves them to the host. A device whose name the host has given to
// another device comes home parked under a temporary name (park). A device
// that cannot go home otherwise goes back where it came from rather than
// stay in transit, where a virtual link would die with the netns and a
// physical one would return as devN; it then counts as not found, and a
// later run retries it.
func (h *homecoming) leaveTransit() error {
	if h.transit == nil {
		return nil
	}
	inTransit, err := h.transit.ByPCI()
	if err != nil {
		return err
	}
	names := map[string]string{}
	for _, d := range h.pending() {
		if _, ok := inTransit[d.PCIAddress]; ok {
			names[d.PCIAddress] = d.OriginalName
		}
	}
	if err := h.transit.RenameAll(inTransit, names); err != nil {
		return err
	}
	failpoint.Hit(failpoint.ReleaseRenamed)
	var errs []error
	for _, d := range h.pending() {
		l, ok := inTransit[d.PCIAddress]
		if !ok {
			continue
		}
		err := h.transit.Move(l, h.e.Host)
		if errors.Is(err, unix.EEXIST) {
			if err = h.park(l, d); err == nil {
				continue
			}
		}
		if err != nil {
			errs = append(errs, err)
			if src := h.found[d.PCIAddress].from; src != h.e.Host {
				if berr := h.transit.Move(l, src); berr != nil {
					errs = append(errs, berr)
				}
			}
			delete(h.found, d.PCIAddress)
			continue
		}
		d.ParkedAs = ""
		failpoint.Hit(failpoint.ReleaseToHost)
	}
	return errors.Join(errs...)
}

// park brings a device home under a temporary name, free on the host, when
// the host has given its original name to another device: a VF that a job
// created while this device was away, or another PF. That is no failure
// and no reason to keep the device away: on the host it is out of every
// netns that can die, the record keeps it pending, and the next run that
// finds its name free (after the SR-IOV restore has removed the job's VFs,
// or when the other job ends) renames it.
func (h *homecoming) park(l netlink.Link, d *state.Device) error {
	holder := "?"
	if hl, err := h.e.Host.LinkByName(d.OriginalName); err == nil {
		holder = h.e.Host.PCIOf(hl)
	}
	tmp, err := h.transit.Park(l, h.e.Host)
	if err != nil {
		return err
	}
	if err := h.transit.Move(l, h.e.Host); err != nil {
		return err
	}
	failpoint.Hit(failpoint.ReleaseToHost)
	h.found[d.PCIAddress].route = parked
	d.ParkedAs = tmp
	h.e.Log.Warn("device home under a temporary name: another device holds its name on the host; it gets its name once that is free",
		"pci", d.PCIAddress, "originalName", d.OriginalName, "parkedAs", tmp, "nameHeldBy", holder)
	return nil
}

// reportMissing logs each device found nowhere: it stays pending, and the
// node agent (on the device's return) or the next ADD, DEL or GC looks
// again.
func (h *homecoming) reportMissing(log *slog.Logger) {
	for _, d := range h.pending() {
		if _, ok := h.found[d.PCIAddress]; !ok {
			log.Warn("device not found in the pod or on the host: it is in a network namespace the workload made (a kind node?) that is still alive; "+
				"delete that netns or move the device back: the node agent finishes the release when it is back (without the agent, the next ADD, DEL or GC does)",
				"pci", d.PCIAddress, "originalName", d.OriginalName, "lastSeenAs", d.PodName, "podNetns", h.rec.Netns)
		}
	}
}

// restoreHostState checks that each device that came home is on the host
// under its original name, and gives it back its MTU and admin state
// there (a netns move takes a device down, and MTU is set where it is
// checked). Only then is the device released in the record.
func (e *Engine) restoreHostState(rec *state.Record, h *homecoming, log *slog.Logger) error {
	if len(h.found) == 0 {
		return nil
	}
	hostLinks, err := e.Host.ByPCI()
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range rec.Pending() {
		loc, found := h.found[d.PCIAddress]
		if !found || loc.route == parked {
			continue
		}
		l, ok := hostLinks[d.PCIAddress]
		if !ok && loc.route == home {
			l, ok = loc.link, true // untagged, found through sysfs
		}
		if !ok || l.Attrs().Name != d.OriginalName {
			errs = append(errs, fmt.Errorf("device %s is not on the host as %q after the move", d.PCIAddress, d.OriginalName))
			continue
		}
		if err := e.restoreDevice(l, d); err != nil {
			errs = append(errs, err)
			continue
		}
		failpoint.Hit(failpoint.ReleaseRestored)
		d.Released, d.ParkedAs = true, ""
		log.Info("device back on the host", "pci", d.PCIAddress, "name", d.OriginalName, "vf", d.VFIndex)
	}
	return errors.Join(errs...)
}

func (e *Engine) restoreDevice(l netlink.Link, d *state.Device) error {
	// A VF netdev that the job's re-creation or rebind brought back has a
	// fresh MAC (igb hands re-created VFs random ones); set its own on the
	// netdev, which the VF driver asks the PF for.
	if d.MAC != "" && l.Attrs().HardwareAddr.String() != d.MAC {
		if err := e.Host.SetMAC(l, d.MAC); err != nil && !e.macLocked()[d.PCIAddress] {
			return err
		} else if err != nil {
			e.Log.Warn("VF keeps the MAC its PF holds for it: the PF's driver refuses to lift it", "pci", d.PCIAddress, "name", d.OriginalName, "error", err)
		}
	}
	if err := e.Host.SetMTU(l, d.MTU); err != nil {
		return err
	}
	if d.Up {
		if err := e.Host.SetUp(l); err != nil {
			return err
		}
	}
	return e.Host.DelTag(l, d.PCIAddress)
}
