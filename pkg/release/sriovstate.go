package release

// A PF's SR-IOV configuration is part of what an attachment takes: a
// kind-sriov job re-creates the VFs (sriov_numvfs 0, then N) and binds
// some to vfio-pci. ADD records it; release gives it back once the PF is
// home, and brings back the VF netdevs that went away with it.

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/failpoint"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// netdevWait bounds the wait for netdevs after a rebind or after
// re-creating the VFs, unless Engine.NetdevWait says otherwise: a driver
// registers them as it probes, which under an emulated NIC takes a while.
const netdevWait = 10 * time.Second

// netdevWait is how long this engine waits for a driver's netdevs.
func (e *Engine) netdevWait() time.Duration {
	if e.NetdevWait > 0 {
		return e.NetdevWait
	}
	return netdevWait
}

// RecordSRIOV reads the PF's SR-IOV configuration and the PF's view of
// its VFs, for the record ADD writes.
func (e *Engine) RecordSRIOV(pf sriov.PF) (*state.SRIOV, error) {
	st, err := e.Sys.State(pf.PCIAddress)
	if err != nil {
		return nil, err
	}
	pfl, err := e.pfLink(pf.PCIAddress)
	if err != nil {
		return nil, err
	}
	cfg, err := e.Host.VFConfigs(pfl)
	if err != nil {
		return nil, err
	}
	s := &state.SRIOV{PFDriver: st.Driver, PFDriverOverride: st.Override, NumVFs: st.NumVFs, DriversAutoprobe: st.Autoprobe}
	for _, vf := range st.VFs {
		v := state.VF{Index: vf.Index, PCIAddress: vf.PCIAddress, Driver: vf.Driver, DriverOverride: vf.Override}
		if c, ok := cfg[vf.Index]; ok {
			v.PFSide = &c
		}
		s.VFs = append(s.VFs, v)
	}
	return s, nil
}

// detachNetdevless marks the devices whose netdev cannot be anywhere:
// their PCI function is gone (sriov_numvfs lowered) or bound to another
// driver than at ADD (vfio-pci, or none; for the PF, a job that unbound
// it). They are not missing: restoring the SR-IOV state brings them back.
// A record of an earlier release has no SR-IOV state to restore them from;
// their VFs are left as they are.
func (e *Engine) detachNetdevless(rec *state.Record, log *slog.Logger) {
	recorded := map[string]string{}
	if rec.SRIOV != nil {
		for _, v := range rec.SRIOV.VFs {
			recorded[v.PCIAddress] = v.Driver
		}
	}
	for _, d := range rec.Pending() {
		exists := e.Sys.DeviceExists(d.PCIAddress)
		if d.IsPF() {
			if !exists {
				log.Warn("PF is gone from the node; dropping it and its SR-IOV state from the record", "pci", d.PCIAddress, "originalName", d.OriginalName)
				d.Released = true
				if rec.SRIOV != nil {
					rec.SRIOV.Restored = true
				}
			} else if rec.SRIOV != nil && rec.SRIOV.PFDriver != "" && e.Sys.Driver(d.PCIAddress) != rec.SRIOV.PFDriver {
				log.Info("PF has no netdev now: it is off its driver; restoring the PF's driver brings it back",
					"pci", d.PCIAddress, "originalName", d.OriginalName, "driver", orNone(e.Sys.Driver(d.PCIAddress)), "want", rec.SRIOV.PFDriver)
				d.Released, d.Detached = true, true
			}
			continue
		}
		drv := e.Sys.Driver(d.PCIAddress)
		switch {
		case rec.SRIOV != nil && (!exists || drv != recorded[d.PCIAddress]):
			log.Info("VF has no netdev now; restoring the PF's SR-IOV state brings it back",
				"pci", d.PCIAddress, "originalName", d.OriginalName, "exists", exists, "driver", drv)
			d.Released, d.Detached = true, true
		case !exists:
			log.Warn("PCI function is gone from the node; dropping it from the record", "pci", d.PCIAddress, "originalName", d.OriginalName)
			d.Released = true
		case rec.SRIOV == nil && (drv == "vfio-pci" || drv == "" && !e.Sys.HasNetdev(d.PCIAddress)):
			log.Warn("VF has no netdev (driver "+orNone(drv)+") and the record, from an earlier release, has no SR-IOV state to restore it; left as it is",
				"pci", d.PCIAddress, "originalName", d.OriginalName)
			d.Released = true
		}
	}
}

// restoreSRIOV gives the PF back its own driver if a job unbound it, then
// its SR-IOV configuration as soon as the PF is on the host, under its
// name or parked under a temporary one, then brings the VF netdevs (and a
// PF netdev its driver brought back) home. It does not wait for the VF
// netdevs still pending: the job's own VFs (sriov_numvfs raised) can hold
// their kernel names, and only this restore removes them. A VF held
// through vfio stops it before any write (the kernel would block in the
// unbind or in sriov_numvfs, with the node's lock held): the reason stays
// in the record, the PF out of the pool, and a later run retries.
func (e *Engine) restoreSRIOV(rec *state.Record, log *slog.Logger) error {
	s := rec.SRIOV
	if s == nil || s.Restored {
		return nil
	}
	if ready, err := e.restoreSRIOVConfig(rec, log); err != nil || !ready {
		return err
	}
	if err := e.bringBackVFs(rec, log); err != nil {
		return err
	}
	if err := e.restorePFSide(rec, log); err != nil {
		return err
	}
	if len(rec.Pending()) > 0 || anyDetached(rec) {
		return nil
	}
	s.Restored = true
	failpoint.Hit(failpoint.ReleaseSRIOVRestored)
	log.Info("SR-IOV state of the PF restored", "numVFs", s.NumVFs)
	return nil
}

// restoreSRIOVConfig gives the PF back its own driver, then its VF count,
// the VFs' drivers and autoprobe, as soon as the PF is on the host. ready
// is false while it cannot: the PF not home yet, or held through vfio
// (the reason is then in Blocked).
func (e *Engine) restoreSRIOVConfig(rec *state.Record, log *slog.Logger) (ready bool, err error) {
	s, pf := rec.SRIOV, rec.PF().PCIAddress
	if bound, err := e.restorePFDriver(rec, log); err != nil || !bound {
		return false, err
	}
	l, err := e.pfLink(pf)
	if err == nil && l == nil && rec.PF().Detached {
		l, err = e.waitPFNetdev(rec)
	}
	if err != nil || l == nil {
		return false, err // not home yet: a later run restores
	}
	cur, err := e.Sys.State(pf)
	if err != nil || !sriovDiffers(s, cur) {
		return err == nil, err
	}
	letGo, held := e.holdVFs(s, cur)
	if held != "" {
		if s.Blocked != held {
			log.Warn("VF held through vfio: the PF's SR-IOV state is restored once it is free; the PF stays out of the pool", "blocked", held)
		}
		s.Blocked = held
		return false, nil
	}
	s.Blocked = ""
	err = e.applySRIOV(rec, cur, log)
	letGo()
	return err == nil, err
}

// restorePFDriver binds the PF back to the driver (and driver_override) it
// had at ADD. A job may unbind the PF: its netdev goes, and with it, for
// most PF drivers, every VF; nothing else can come back until the driver
// does. A PF on another driver that must be unbound first is held like a
// VF (holdFree): a vfio driver's unbind blocks while a process holds it.
// bound is false while it waits, with the reason in Blocked.
func (e *Engine) restorePFDriver(rec *state.Record, log *slog.Logger) (bound bool, err error) {
	s, pf := rec.SRIOV, rec.PF().PCIAddress
	cur := e.Sys.Driver(pf)
	if s.PFDriver == "" || cur == s.PFDriver && e.Sys.DriverOverride(pf) == s.PFDriverOverride {
		return true, nil // recorded by an earlier release, or as recorded
	}
	letGo := func() {}
	if cur != "" && cur != s.PFDriver {
		var held string
		if letGo, held = e.holdFree([]string{pf}); held != "" {
			if s.Blocked != held {
				log.Warn("PF held through vfio: its driver is restored once it is free; the PF stays out of the pool", "blocked", held)
			}
			s.Blocked = held
			return false, nil
		}
		s.Blocked = ""
	}
	err = e.Sys.BindPF(pf, s.PFDriver, s.PFDriverOverride)
	letGo()
	if err != nil {
		return false, fmt.Errorf("give PF %s back its driver %s: %w; left to restore: %s", pf, s.PFDriver, err, e.leftToRestore(rec))
	}
	log.Info("PF back on its driver", "pci", pf, "driver", s.PFDriver, "was", orNone(cur))
	return true, nil
}

// waitPFNetdev waits for the netdev of a PF whose own driver went with
// the job and is bound again: the driver registers it in the host netns
// as it probes, and nowhere else can it be. None within the wait is an
// error that says what of the record is left.
func (e *Engine) waitPFNetdev(rec *state.Record) (netlink.Link, error) {
	pf := rec.PF().PCIAddress
	var l netlink.Link
	err := retryUntil(e.netdevWait(), func() (bool, error) {
		var err error
		l, err = e.pfLink(pf)
		return l != nil, err
	})
	if err != nil || l != nil {
		return l, err
	}
	return nil, fmt.Errorf("PF %s is back on its driver %s but registered no netdev within %s; left to restore: %s",
		pf, orNone(e.Sys.Driver(pf)), e.netdevWait(), e.leftToRestore(rec))
}

// leftToRestore says, for an error a person reads, what of the record is
// not given back yet: the PF's own driver, its VF count, the VFs' drivers
// and autoprobe where sysfs differs from the record, and every netdev not
// home, by recorded name and PCI address.
func (e *Engine) leftToRestore(rec *state.Record) string {
	var out []string
	if s := rec.SRIOV; s != nil && !s.Restored {
		out = append(out, e.sriovLeft(rec.PF().PCIAddress, s)...)
	}
	var devs []string
	for _, d := range rec.Devices {
		if !d.Released || d.Detached {
			devs = append(devs, fmt.Sprintf("%s (%s)", d.OriginalName, d.PCIAddress))
		}
	}
	if len(devs) > 0 {
		out = append(out, "the netdevs "+strings.Join(devs, ", "))
	}
	return strings.Join(out, "; ") + "; the record stays, and DEL, GC or the node agent tries again"
}

// sriovLeft lists how the PF's SR-IOV state differs from s.
func (e *Engine) sriovLeft(pf string, s *state.SRIOV) []string {
	cur, err := e.Sys.State(pf)
	if err != nil {
		return []string{"the PF's SR-IOV state (unreadable: " + err.Error() + ")"}
	}
	var out []string
	if s.PFDriver != "" && cur.Driver != s.PFDriver {
		out = append(out, fmt.Sprintf("the PF's driver (%s, want %s)", orNone(cur.Driver), s.PFDriver))
	}
	if cur.NumVFs != s.NumVFs {
		out = append(out, fmt.Sprintf("its VFs (sriov_numvfs %d, want %d)", cur.NumVFs, s.NumVFs))
	}
	have := map[string]sriov.VFState{}
	for _, v := range cur.VFs {
		have[v.PCIAddress] = v
	}
	var off []string
	for _, v := range s.VFs {
		if h, ok := have[v.PCIAddress]; ok && (h.Driver != v.Driver || h.Override != v.DriverOverride) {
			off = append(off, fmt.Sprintf("%s on %s, want %s", v.PCIAddress, orNone(h.Driver), orNone(v.Driver)))
		}
	}
	if len(off) > 0 {
		out = append(out, "VF drivers ("+strings.Join(off, ", ")+")")
	}
	if cur.Autoprobe != s.DriversAutoprobe {
		out = append(out, fmt.Sprintf("sriov_drivers_autoprobe (%t, want %t)", cur.Autoprobe, s.DriversAutoprobe))
	}
	return out
}

func sriovDiffers(s *state.SRIOV, cur sriov.State) bool {
	if cur.NumVFs != s.NumVFs || cur.Autoprobe != s.DriversAutoprobe {
		return true
	}
	have := map[string]sriov.VFState{}
	for _, v := range cur.VFs {
		have[v.PCIAddress] = v
	}
	for _, v := range s.VFs {
		if h := have[v.PCIAddress]; h.Driver != v.Driver || h.Override != v.DriverOverride {
			return true
		}
	}
	return false
}

// holdVFs makes sure no process holds, or can take, a VF the restore
// touches (all of them when the VF count changes, else those whose driver
// changes), whatever driver it is on: it looks through every process's
// open files (pkg/sriov VFIOHolders), then opens the VFs' vfio groups and
// keeps them open until letGo (a group opens once at a time, so one taken
// since the look shows as busy, and nobody can open it or the VF's cdev
// until letGo). It names the holders, or what it could not
// make sure of, in held; "" means the writes cannot block. A VF that was
// on vfio-pci at ADD and stays there may be held: the restore does not
// touch it.
func (e *Engine) holdVFs(s *state.SRIOV, cur sriov.State) (letGo func(), held string) {
	recorded := map[string]state.VF{}
	for _, v := range s.VFs {
		recorded[v.PCIAddress] = v
	}
	var vfs []string
	for _, v := range cur.VFs {
		r, ok := recorded[v.PCIAddress]
		if cur.NumVFs != s.NumVFs || !ok || r.Driver != v.Driver || r.DriverOverride != v.Override {
			vfs = append(vfs, v.PCIAddress)
		}
	}
	return e.holdFree(vfs)
}

// holdFree looks for processes holding the PCI functions vfs (VFs, or the
// PF) through vfio and, when there is none, holds their vfio groups until
// letGo, as holdVFs says.
func (e *Engine) holdFree(vfs []string) (letGo func(), held string) {
	nothing := func() {}
	if len(vfs) == 0 {
		return nothing, ""
	}
	// Look first, then hold: the groups held here would show up as ours.
	// A process that opens a group in between makes the hold fail (a
	// group opens once; its device descriptors keep it open).
	hs, err := e.Sys.VFIOHolders(e.procRoot(), vfs)
	if err != nil {
		return nothing, "cannot look for processes holding its VFs through vfio: " + err.Error()
	}
	if len(hs) > 0 {
		out := make([]string, len(hs))
		for i, h := range hs {
			out[i] = h.String()
		}
		return nothing, strings.Join(out, "; ")
	}
	letGo, err = e.Sys.HoldGroups(e.devRoot(), vfs)
	if err != nil {
		return nothing, "cannot hold its VFs' vfio groups: " + err.Error()
	}
	return letGo, ""
}

// applySRIOV writes the recorded configuration: sriov_numvfs through 0
// when the count differs (every VF netdev goes away with it), then each
// VF's driver, then sriov_drivers_autoprobe last. New VFs are created with
// the autoprobe the job left; each is then bound through its recorded
// driver's override (sriov.Sysfs.Rebind), which the kernel honours with
// autoprobe off too. Written first, an autoprobe of 0 recorded at ADD
// would leave the new VFs without a driver and refuse the probes that
// give them back their own.
func (e *Engine) applySRIOV(rec *state.Record, cur sriov.State, log *slog.Logger) error {
	s, pf := rec.SRIOV, rec.PF().PCIAddress
	if cur.NumVFs != s.NumVFs {
		log.Info("re-creating the PF's VFs", "numVFs", cur.NumVFs, "want", s.NumVFs)
		if err := e.Sys.SetNumVFs(pf, s.NumVFs); err != nil {
			return err
		}
		failpoint.Hit(failpoint.ReleaseSRIOVNumVFs)
		// Every VF netdev went with the old VFs; new ones come.
		for i := range rec.Devices[1:] {
			d := &rec.Devices[1+i]
			d.Released, d.Detached, d.ParkedAs = true, true, ""
		}
		var err error
		if cur, err = e.Sys.State(pf); err != nil {
			return err
		}
	}
	have := map[string]sriov.VFState{}
	for _, v := range cur.VFs {
		have[v.PCIAddress] = v
	}
	var errs []error
	for _, v := range s.VFs {
		if h := have[v.PCIAddress]; h.Driver == v.Driver && h.Override == v.DriverOverride {
			continue
		}
		if err := e.Sys.Rebind(pf, v.PCIAddress, v.Driver, v.DriverOverride); err != nil {
			errs = append(errs, err)
			continue
		}
		failpoint.Hit(failpoint.ReleaseSRIOVRebind)
		for i := range rec.Devices[1:] {
			if d := &rec.Devices[1+i]; d.PCIAddress == v.PCIAddress {
				d.Released, d.Detached, d.ParkedAs = true, true, ""
			}
		}
		log.Info("VF back on its driver", "pci", v.PCIAddress, "driver", orNone(v.Driver))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if cur.Autoprobe != s.DriversAutoprobe {
		return e.Sys.SetAutoprobe(pf, s.DriversAutoprobe)
	}
	return nil
}

// bringBackVFs waits for the netdevs of the record's VFs (and of the PF,
// when its driver was restored), then gives each one that is not as
// recorded (a new netdev after re-creation or rebind, under a kernel name
// and a fresh MAC) back its name, MAC, MTU and admin state, through the
// same homecoming as DEL's. With nothing re-created or rebound, every
// device that came home was just checked against the record, and it
// reads the host's links only if a VF MAC the job set through the PF must
// be lifted: a dump of every link on a node of many VFs is not free.
func (e *Engine) bringBackVFs(rec *state.Record, log *slog.Logger) error {
	var host map[string]netlink.Link
	if anyDetached(rec) {
		err := retryUntil(e.netdevWait(), func() (bool, error) {
			var err error
			host, err = e.Host.ByPCI()
			return err == nil && e.allVFNetdevs(rec, host), err
		})
		if err != nil {
			return err
		}
	}
	hostLinks := func() (map[string]netlink.Link, error) {
		var err error
		if host == nil {
			host, err = e.Host.ByPCI()
		}
		return host, err
	}
	if err := e.unlockVFMACs(rec, hostLinks, log); err != nil {
		return err
	}
	if host != nil {
		e.releaseAsRecorded(rec, host, log)
	}
	if len(rec.Pending()) == 0 {
		return nil
	}
	trip := e.newHomecoming(rec, nil)
	defer trip.close()
	err := trip.locate()
	if err == nil {
		err = trip.bringHome()
	}
	err = errors.Join(err, trip.leaveTransit())
	return errors.Join(err, e.restoreHostState(rec, trip, log))
}

// releaseAsRecorded puts back among the pending devices each whose netdev
// on the host is not as recorded (new after re-creation or rebind, or
// detached until now), and drops a VF gone for good.
func (e *Engine) releaseAsRecorded(rec *state.Record, host map[string]netlink.Link, log *slog.Logger) {
	for i := range rec.Devices {
		d := &rec.Devices[i]
		l, ok := host[d.PCIAddress]
		if !ok && d.Detached && !d.IsPF() && !e.Sys.DeviceExists(d.PCIAddress) {
			// The SR-IOV state is as recorded and the VF is still gone
			// (hot-unplugged): nothing can bring it back.
			log.Warn("VF is gone from the node although the PF's VF count is restored; dropping it from the record", "pci", d.PCIAddress, "originalName", d.OriginalName)
			d.Detached = false
			continue
		}
		if !ok {
			continue
		}
		if d.Detached || l.Attrs().Name != d.OriginalName || l.Attrs().HardwareAddr.String() != d.MAC {
			d.Released, d.Detached = false, false
		}
	}
}

// zeroMAC, set through the PF, lifts the lock an administratively set VF
// MAC puts on the VF (igb, ixgbe and i40e treat it so; some drivers refuse
// it).
const zeroMAC = "00:00:00:00:00:00"

// pfLink finds the PF's netdev in the host netns by its PCI address, nil
// when it is not there. Every netlink write of the restore goes to this
// link: after a blocked restore another device can carry the PF's
// recorded name. Host sysfs lists the host netdev under the PCI function;
// netlink's parent device (or the plugin's tag) must not contradict it,
// and answers alone where sysfs names nothing.
func (e *Engine) pfLink(pci string) (netlink.Link, error) {
	if name := e.Sys.Netdev(pci); name != "" {
		if l, err := e.Host.LinkByName(name); err == nil {
			if p := e.Host.PCIOf(l); p == pci || p == "" {
				return l, nil
			}
		}
	}
	host, err := e.Host.ByPCI()
	if err != nil {
		return nil, err
	}
	return host[pci], nil
}

// unlockVFMACs undoes a VF MAC the job set through the PF (ip link set PF
// vf N mac ...) on a VF that had a netdev: the PF then refuses the VF
// driver's own MAC, so the netdev's MAC could not be given back. It sets
// the zero MAC through the PF to lift that, and gives the netdev a
// passing MAC so that the homecoming sets its recorded one again, which
// the VF driver hands to the PF and the PF reports as before. A PF driver
// that refuses the zero MAC gets the VF's recorded MAC through the PF
// instead: the right MAC, administratively set, is the best it allows.
func (e *Engine) unlockVFMACs(rec *state.Record, hostLinks func() (map[string]netlink.Link, error), log *slog.Logger) error {
	pfl, err := e.pfLink(rec.PF().PCIAddress)
	if err != nil || pfl == nil {
		return err
	}
	have, err := e.Host.VFConfigs(pfl)
	if err != nil {
		return err
	}
	devs := map[string]*state.Device{}
	for i := range rec.Devices[1:] {
		devs[rec.Devices[1+i].PCIAddress] = &rec.Devices[1+i]
	}
	for _, v := range rec.SRIOV.VFs {
		d, h := devs[v.PCIAddress], have[v.Index]
		if d == nil || v.PFSide == nil || h.MAC == v.PFSide.MAC || h.MAC == zeroMAC || h.MAC == "" {
			continue
		}
		if err := e.Host.SetVFMAC(pfl, v.Index, zeroMAC); err != nil {
			log.Warn("the PF's driver refuses the zero MAC that lifts a VF MAC the job set through the PF; setting the VF's own MAC through the PF instead (it stays administratively set)",
				"pci", v.PCIAddress, "was", h.MAC, "mac", d.MAC, "error", err)
			if err := e.Host.SetVFMAC(pfl, v.Index, d.MAC); err != nil {
				log.Warn("the PF's driver refuses the VF's own MAC too; the VF keeps the MAC the job set", "pci", v.PCIAddress, "mac", h.MAC, "error", err)
			}
			e.macLocked()[d.PCIAddress] = true
			d.Released = false
			continue
		}
		log.Info("VF MAC set through the PF by the job lifted", "pci", v.PCIAddress, "was", h.MAC)
		host, err := hostLinks()
		if err != nil {
			return err
		}
		if l, ok := host[d.PCIAddress]; ok && l.Attrs().HardwareAddr.String() == d.MAC {
			if err := e.Host.SetMAC(l, passingMAC(d.MAC)); err != nil {
				return err
			}
		}
		d.Released = false
	}
	return nil
}

// passingMAC is mac with the locally administered bit flipped: another
// valid unicast MAC, set for a moment only.
func passingMAC(mac string) string {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) == 0 {
		return mac
	}
	hw[0] ^= 0x02
	return hw.String()
}

// allVFNetdevs reports whether every detached device that its driver
// gives a netdev (it is bound to the driver it had at ADD) has one on the
// host: the VFs, and the PF when its driver was restored.
func (e *Engine) allVFNetdevs(rec *state.Record, host map[string]netlink.Link) bool {
	drivers := map[string]string{rec.PF().PCIAddress: rec.SRIOV.PFDriver}
	for _, v := range rec.SRIOV.VFs {
		drivers[v.PCIAddress] = v.Driver
	}
	for _, d := range rec.Devices {
		if !d.Detached || !e.Sys.DeviceExists(d.PCIAddress) || e.Sys.Driver(d.PCIAddress) != drivers[d.PCIAddress] {
			continue
		}
		if _, ok := host[d.PCIAddress]; !ok {
			return false
		}
	}
	return true
}

func anyDetached(rec *state.Record) bool {
	for _, d := range rec.Devices {
		if d.Detached {
			return true
		}
	}
	return false
}

// restorePFSide gives each VF back the settings its PF reported at ADD.
// A VF's MAC came back on its netdev; through the PF it is set only for a
// VF that had no netdev: a zero MAC recorded is given back as the zero MAC
// (lifting one the job set; a driver that refuses it leaves the job's, and
// says so), any other as recorded.
func (e *Engine) restorePFSide(rec *state.Record, log *slog.Logger) error {
	pfl, err := e.pfLink(rec.PF().PCIAddress)
	if err != nil || pfl == nil {
		return err
	}
	have, err := e.Host.VFConfigs(pfl)
	if err != nil {
		return err
	}
	hasNetdev := map[string]bool{}
	for _, d := range rec.Devices[1:] {
		hasNetdev[d.PCIAddress] = true
	}
	var errs []error
	for _, v := range rec.SRIOV.VFs {
		h, ok := have[v.Index]
		if v.PFSide == nil || !ok {
			continue // the PF driver reports nothing for it
		}
		want, setMAC := *v.PFSide, false
		if !hasNetdev[v.PCIAddress] && want.MAC != "" && h.MAC != "" && h.MAC != want.MAC {
			if want.MAC != zeroMAC {
				setMAC = true
			} else if err := e.Host.SetVFMAC(pfl, v.Index, zeroMAC); err != nil {
				log.Warn("the PF's driver refuses the zero MAC: the VF keeps the MAC the job set through the PF", "pci", v.PCIAddress, "mac", h.MAC, "error", err)
			}
		}
		if err := e.Host.SetVFConfig(pfl, v.Index, h, want, setMAC); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (e *Engine) devRoot() string {
	if e.DevRoot == "" {
		return "/dev"
	}
	return e.DevRoot
}

func (e *Engine) procRoot() string {
	if e.ProcRoot == "" {
		return "/proc"
	}
	return e.ProcRoot
}

// BlockedReason is what a releasing record still waits for, for the CNI
// commands' code-11 details: devices out of reach, or a VF held through
// vfio.
func BlockedReason(r *state.Record) string {
	var out string
	if r.Phase == state.Releasing {
		for _, d := range r.Pending() {
			if d.ParkedAs != "" {
				out += fmt.Sprintf("; %s (%s) is on the host as %s until another device lets go of its name", d.OriginalName, d.PCIAddress, d.ParkedAs)
				continue
			}
			out += fmt.Sprintf("; waiting for %s (%s), last seen as %s in pod netns %s or one nested in it", d.OriginalName, d.PCIAddress, d.PodName, r.Netns)
		}
	}
	if r.SRIOV != nil && r.SRIOV.Blocked != "" {
		out += "; SR-IOV restore waits: " + r.SRIOV.Blocked
	}
	return out
}

func orNone(driver string) string {
	if driver == "" {
		return "none"
	}
	return driver
}
