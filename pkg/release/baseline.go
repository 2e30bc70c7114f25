package release

// A node may declare the SR-IOV state its free PFs are kept at (node.json's
// sriovBaseline): nodes the bash plugin served are left with VFs on
// vfio-pci whose override was cleared, fewer VFs than the PF has, and PFs
// on the host under the name they had in the pod. The agent brings a free
// PF to the baseline before its first job, ADD before it records the PF's
// state (so that DEL, giving back what ADD recorded, ends at the
// baseline).

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
)

// BaselineError says why a PF could not be brought to its baseline; Why is
// what the agent's status and ADD's error show.
type BaselineError struct {
	PCI string
	Why string
}

func (e *BaselineError) Error() string {
	return fmt.Sprintf("PF %s is not at the node's sriovBaseline: %s", e.PCI, e.Why)
}

// AtBaseline reports whether the PF at b.PCI is at its baseline, and if
// not, what differs. It only reads.
func (e *Engine) AtBaseline(b config.PFBaseline) (ok bool, differs string, err error) {
	d, err := e.baselineDiff(b)
	if err != nil {
		return false, "", err
	}
	return d.none(), d.String(), nil
}

// baselineDiff is how a PF differs from its baseline.
type baselineDiff struct {
	want  int
	state sriov.State
	// driverless: no driver is bound to the PF, so it has no netdev
	// (BindBaselineDriver comes first).
	driverless bool
	autoprobe  bool     // sriov_drivers_autoprobe is off
	numVFs     bool     // sriov_numvfs differs
	offVFs     []string // VFs not on their default driver, or with an override
	why        []string // per VF, what is off
	// name is the PF's host name ("" for none) when it should carry
	// wantName instead.
	name, wantName string
}

func (d baselineDiff) none() bool {
	return !d.driverless && !d.autoprobe && !d.numVFs && len(d.offVFs) == 0 && d.wantName == ""
}

func (d baselineDiff) sriovDiffers() bool { return d.autoprobe || d.numVFs || len(d.offVFs) > 0 }

// touched are the VFs the SR-IOV writes change: all of them when the
// count differs (every VF is removed), else those off their default
// driver.
func (d baselineDiff) touched() []string {
	if !d.numVFs {
		return d.offVFs
	}
	var all []string
	for _, vf := range d.state.VFs {
		all = append(all, vf.PCIAddress)
	}
	return all
}

func (d baselineDiff) String() string {
	var out []string
	if d.driverless {
		out = append(out, "the PF has no driver (its own driver was unbound), so no netdev; its VFs are judged once its default driver is bound")
	}
	if d.numVFs {
		out = append(out, fmt.Sprintf("sriov_numvfs %d, want %d", d.state.NumVFs, d.want))
	}
	if d.autoprobe {
		out = append(out, "sriov_drivers_autoprobe 0")
	}
	out = append(out, d.why...)
	if d.wantName != "" {
		out = append(out, fmt.Sprintf("the PF is named %q on the host, want %q", d.name, d.wantName))
	}
	return strings.Join(out, "; ")
}

func (e *Engine) baselineDiff(b config.PFBaseline) (baselineDiff, error) {
	pf, err := e.Sys.PF(b.PCI)
	if err != nil {
		return baselineDiff{}, err
	}
	d := baselineDiff{}
	if d.state, err = e.Sys.State(b.PCI); err != nil {
		return baselineDiff{}, err
	}
	if d.driverless = d.state.Driver == ""; d.driverless {
		// The PF's driver sets how many VFs it allows: without one,
		// sriov_totalvfs is the SR-IOV capability's count (8 on an
		// 82576, of which igb allows 7). The rest is judged once the
		// driver is bound.
		return d, nil
	}
	if d.want, err = b.NumVFs.Resolve(pf.TotalVFs); err != nil {
		return baselineDiff{}, &BaselineError{PCI: b.PCI, Why: "sriovBaseline: " + err.Error()}
	}
	d.autoprobe = !d.state.Autoprobe
	d.numVFs = d.state.NumVFs != d.want
	for _, vf := range d.state.VFs {
		if why := e.offDefault(vf); why != "" {
			d.offVFs = append(d.offVFs, vf.PCIAddress)
			d.why = append(d.why, why)
		}
	}
	if name := e.Sys.Netdev(b.PCI); b.Name != "" && name != b.Name {
		d.name, d.wantName = name, b.Name
	}
	return d, nil
}

// BaselineWaits names the processes that hold, through vfio, a VF that
// bringing the PF to its baseline would touch: while one does, the PF
// stays as it is. "" when there is none (or nothing to touch). It only
// reads, for a status.
func (e *Engine) BaselineWaits(b config.PFBaseline) string {
	d, err := e.baselineDiff(b)
	if err != nil || !d.sriovDiffers() || len(d.touched()) == 0 {
		return ""
	}
	hs, err := e.Sys.VFIOHolders(e.procRoot(), d.touched())
	if err != nil {
		return "cannot look for processes holding its VFs through vfio: " + err.Error()
	}
	var out []string
	for _, h := range hs {
		out = append(out, h.String())
	}
	return strings.Join(out, "; ")
}

// offDefault says how a VF is off its default driver, "" when it is on
// it. The default driver of an SR-IOV NIC's VF is its network driver
// (igbvf, iavf, mlx5_core): bound, with no driver_override, the VF has a
// netdev. A VF on vfio-pci (with an override or without), on no driver,
// or whose netdev is not in the host netns is off it.
func (e *Engine) offDefault(vf sriov.VFState) string {
	switch {
	case vf.Override != "":
		return fmt.Sprintf("VF %s has driver_override %q", vf.PCIAddress, vf.Override)
	case vf.Driver == "":
		return fmt.Sprintf("VF %s has no driver", vf.PCIAddress)
	case !e.Sys.HasNetdev(vf.PCIAddress):
		return fmt.Sprintf("VF %s on %s has no netdev on the host", vf.PCIAddress, vf.Driver)
	}
	return ""
}

// ApplyBaseline brings the PF at b.PCI to its baseline: sriov_drivers_autoprobe
// on, sriov_numvfs as declared, every VF on its default driver with no
// driver_override, and the PF's host name when one is declared. The caller
// holds the node's lock and has made sure no record holds the PF. A VF
// held through vfio stops it before any SR-IOV write (the kernel would
// block in the unbind or in sriov_numvfs, with the lock held). A failure
// that a person must look at is a *BaselineError. changed reports whether
// anything was written.
func (e *Engine) ApplyBaseline(b config.PFBaseline, log *slog.Logger) (changed bool, err error) {
	d, err := e.baselineDiff(b)
	if err != nil || d.none() {
		return false, err
	}
	if d.driverless {
		return false, &BaselineError{PCI: b.PCI, Why: "the PF has no driver: its default driver is bound first, and the PF judged again with its netdev"}
	}
	log = log.With("pci", b.PCI)
	log.Info("bringing the PF to the node's sriovBaseline", "differs", d.String())
	// The name first: VFs created below take the lowest free kernel
	// names, which may be the one the PF is to get back.
	named, err := e.nameBaselinePF(b, log)
	if err != nil {
		return false, err
	}
	changed = named
	if d.sriovDiffers() {
		if err := e.applyBaselineSRIOV(b.PCI, d, log); err != nil {
			return true, err
		}
		changed = true
	}
	if !named && b.Name != "" {
		if named, err = e.nameBaselinePF(b, log); err != nil {
			return changed, err
		}
		if !named && e.Sys.Netdev(b.PCI) != b.Name {
			return changed, &BaselineError{PCI: b.PCI, Why: e.nameTaken(b.Name)}
		}
	}
	d, err = e.baselineDiff(b)
	if err != nil {
		return changed, err
	}
	if !d.none() {
		return changed, &BaselineError{PCI: b.PCI, Why: "still differs after it was applied: " + d.String()}
	}
	log.Info("PF at the node's sriovBaseline", "numVFs", d.want)
	return changed, nil
}

// BindBaselineDriver binds a PF that no driver is bound to (a job or a
// person unbound it) to its default driver, with no driver_override left
// (sriov.Sysfs.BindDefaultPF), and waits for its netdev. That is all it
// does: the PF then has a name, and the caller judges it again as any PF
// on the host (the pool, the reservations, the uplink rules) before
// ApplyBaseline writes its SR-IOV state. The caller holds the node's
// lock. changed reports whether a driver was left bound; a PF that has
// one is left as it is, and one whose driver registers no netdev is
// unbound again.
func (e *Engine) BindBaselineDriver(b config.PFBaseline, log *slog.Logger) (changed bool, err error) {
	if e.Sys.Driver(b.PCI) != "" {
		return false, nil
	}
	drv, err := e.Sys.BindDefaultPF(b.PCI)
	if err != nil {
		return e.Sys.Driver(b.PCI) != "", &BaselineError{PCI: b.PCI, Why: err.Error()}
	}
	log = log.With("pci", b.PCI, "driver", drv)
	log.Info("PF without a driver bound to its default driver")
	var name string
	_ = retryUntil(e.netdevWait(), func() (bool, error) {
		name = e.Sys.Netdev(b.PCI)
		return name != "", nil
	})
	if name == "" {
		// Left on a driver without a netdev, the PF would be listed
		// nowhere (neither under class/net nor as driverless): undone,
		// it stays as found, and the status says why.
		why := fmt.Sprintf("bound to its default driver %s, the PF registered no netdev within %s (the kernel log says why)", drv, e.netdevWait())
		if err := e.Sys.BindPF(b.PCI, "", ""); err != nil {
			return true, &BaselineError{PCI: b.PCI, Why: why + "; unbinding it again failed: " + err.Error()}
		}
		return false, &BaselineError{PCI: b.PCI, Why: why + "; unbound again, as it was"}
	}
	log.Info("PF has a netdev again", "name", name)
	return true, nil
}

// applyBaselineSRIOV writes the SR-IOV part of the baseline. Autoprobe
// goes on first: the kernel binds a new VF of a PF without it to nothing,
// and a probe without an override binds nothing either. A VF count that
// differs re-creates every VF (through 0), each on its default driver; an
// equal count rebinds only the VFs that are off it.
func (e *Engine) applyBaselineSRIOV(pci string, d baselineDiff, log *slog.Logger) error {
	letGo, held := e.holdFree(d.touched())
	if held != "" {
		return &BaselineError{PCI: pci, Why: "VF held through vfio: " + held}
	}
	err := e.writeBaseline(pci, d, log)
	letGo()
	if err != nil {
		return &BaselineError{PCI: pci, Why: err.Error()}
	}
	return e.waitVFNetdevs(pci)
}

func (e *Engine) writeBaseline(pci string, d baselineDiff, log *slog.Logger) error {
	if d.autoprobe {
		if err := e.Sys.SetAutoprobe(pci, true); err != nil {
			return err
		}
	}
	if d.numVFs {
		log.Info("re-creating the PF's VFs for the baseline", "numVFs", d.state.NumVFs, "want", d.want)
		return e.Sys.SetNumVFs(pci, d.want)
	}
	var errs []error
	for _, vf := range d.offVFs {
		drv, err := e.Sys.BindDefault(pci, vf)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("VF on its default driver", "vf", vf, "driver", drv)
	}
	return errors.Join(errs...)
}

// waitVFNetdevs waits for the default driver of every VF to register its
// netdev: it does so as it probes, which under an emulated NIC takes a
// while.
func (e *Engine) waitVFNetdevs(pci string) error {
	deadline := time.Now().Add(e.netdevWait())
	for {
		st, err := e.Sys.State(pci)
		if err != nil {
			return err
		}
		var off []string
		for _, vf := range st.VFs {
			if why := e.offDefault(vf); why != "" {
				off = append(off, why)
			}
		}
		if len(off) == 0 {
			return nil
		}
		if !time.Now().Before(deadline) {
			return &BaselineError{PCI: pci, Why: fmt.Sprintf("after %s: %s", e.netdevWait(), strings.Join(off, "; "))}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nameBaselinePF gives the PF its declared host name if that name is free
// on the host; renamed is false when it is taken (or nothing is
// declared). The PF is found by its PCI address. The kernel renames only
// a device that is down: the PF goes down for the rename and back up if
// it was up.
func (e *Engine) nameBaselinePF(b config.PFBaseline, log *slog.Logger) (renamed bool, err error) {
	if b.Name == "" {
		return false, nil
	}
	l, err := e.pfLink(b.PCI)
	if err != nil {
		return false, err
	}
	if l == nil {
		return false, &BaselineError{PCI: b.PCI, Why: "the PF has no netdev on the host"}
	}
	old := l.Attrs().Name
	if old == b.Name {
		return false, nil
	}
	if other, err := e.Host.LinkByName(b.Name); err == nil && other.Attrs().Index != l.Attrs().Index {
		return false, nil
	}
	up := l.Attrs().Flags&net.FlagUp != 0
	if up {
		if err := e.Host.SetDown(l); err != nil {
			return false, err
		}
	}
	err = e.Host.Rename(l, b.Name)
	if up {
		err = errors.Join(err, e.Host.SetUp(l))
	}
	if err != nil {
		return false, err
	}
	log.Info("PF given its baseline name", "name", b.Name, "was", old)
	return true, nil
}

// nameTaken names the link that holds a name, for a person.
func (e *Engine) nameTaken(name string) string {
	l, err := e.Host.LinkByName(name)
	if err != nil {
		return fmt.Sprintf("cannot give the PF its name %s: %v", name, err)
	}
	owner := "a " + l.Type() + " link"
	if pci := e.Host.PCIOf(l); pci != "" {
		owner = "PCI function " + pci
	}
	return fmt.Sprintf("its name %s is taken on the host by %s (ifindex %d)", name, owner, l.Attrs().Index)
}
