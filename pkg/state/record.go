// Package state persists one record per attachment under the state
// directory and serialises plugin processes with a file lock.
//
// A record is written before the first device moves and removed only after
// every device is back on the host, so whatever kills a plugin process
// part-way, the next one finds out what to put back.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/containernetworking/cni/pkg/utils"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
)

// Version of the record format. Fields are only ever added, never
// repurposed, so it stays 1: the previous release reads a record this one
// wrote (ignoring what it does not know) and releases its netdevs, and this
// one reads the previous release's records, which lack the SR-IOV fields.
const Version = 1

// Phase says how far an operation on an attachment got.
type Phase string

const (
	// Adding: the record is written and devices may be on their way to the
	// pod. Found by another process, it means its ADD died: roll it back.
	Adding Phase = "adding"
	// Attached: ADD finished; the pod holds the devices.
	Attached Phase = "attached"
	// Releasing: DEL (or GC, or a rollback) began giving devices back. Some
	// devices may not have been found yet; any later run retries them.
	Releasing Phase = "releasing"
)

// Device is one netdev the attachment took: the PF or one of its VFs.
type Device struct {
	PCIAddress   string `json:"pciAddress"`
	OriginalName string `json:"originalName"`
	// PodName is the name the device was given in the pod.
	PodName string `json:"podName"`
	MAC     string `json:"mac"`
	MTU     int    `json:"mtu"`
	Up      bool   `json:"up"`
	// VFIndex is the VF's index under its PF, -1 for the PF itself.
	VFIndex int `json:"vfIndex"`
	// Released is set once the device is back on the host under its
	// original name.
	Released bool `json:"released,omitempty"`
	// Detached is set, with Released, when the device's netdev went away
	// with its driver (a VF bound to vfio-pci) or its PCI function
	// (sriov_numvfs lowered): restoring the PF's SR-IOV state brings it
	// back, and then it is restored like the others and Detached cleared.
	// Released is set too so that a release without SR-IOV state (the
	// previous binary, after a rollback) does not wait for it forever.
	Detached bool `json:"detached,omitempty"`
	// ParkedAs is the temporary name a pending device has on the host
	// while another device (a VF a job created, another PF) holds its
	// original name; a later run gives it its name. Only said to people:
	// the plugin finds the device by its PCI address.
	ParkedAs string `json:"parkedAs,omitempty"`
}

// IsPF reports whether the device is the physical function.
func (d Device) IsPF() bool { return d.VFIndex < 0 }

// Record is everything one attachment took, and from whom.
type Record struct {
	Version     int        `json:"version"`
	ContainerID string     `json:"containerID"`
	IfName      string     `json:"ifName"`
	Netns       string     `json:"netns"`
	NetnsID     netdev.ID  `json:"netnsID"`
	Pod         config.Pod `json:"pod"`
	Phase       Phase      `json:"phase"`
	Created     time.Time  `json:"created"`
	// Devices holds the PF first, then its VFs.
	Devices []Device `json:"devices"`
	// SRIOV is the PF's SR-IOV configuration at ADD; nil in records written
	// before the plugin recorded it (then only netdevs are given back).
	SRIOV *SRIOV `json:"sriov,omitempty"`
	// Result is the CNI result ADD printed, as JSON in the request's
	// version; CHECK reads it back when the runtime sends no prevResult.
	Result json.RawMessage `json:"result,omitempty"`
	// Network is the name of the network (the configuration's "name")
	// that made the attachment: GC releases only its own network's
	// records. Records of earlier releases have none.
	Network string `json:"network,omitempty"`
	// IPAMConf is the network configuration ADD gave its IPAM plugin (its
	// stdin without prevResult), so that repair and GC, which run for
	// other containers or networks, can call the IPAM plugin's DEL for
	// what they release. Empty without IPAM.
	IPAMConf json.RawMessage `json:"ipamConf,omitempty"`
	// Unpinned: the ADD carried no device ID from the kubelet's allocation
	// and the pod had no prepared DRA claim (a job that did not request
	// prow/sriov, as the CI's jobs did before they were moved to it). The kubelet does not count the PF as
	// allocated, so the agent must not count it as available. Records of
	// earlier releases have false: they were taken as pinned.
	Unpinned bool `json:"unpinned,omitempty"`
}

// SRIOV is what a job can change about a PF's SR-IOV configuration and
// the node gets back at release.
type SRIOV struct {
	// PFDriver and PFDriverOverride are the PF's own driver and
	// driver_override; both "" in records of earlier releases, which did
	// not record them: such a record leaves the PF's driver as it is.
	PFDriver         string `json:"pfDriver,omitempty"`
	PFDriverOverride string `json:"pfDriverOverride,omitempty"`
	NumVFs           int    `json:"numVFs"`
	DriversAutoprobe bool   `json:"driversAutoprobe"`
	// VFs lists every VF the PF had, with or without a netdev.
	VFs []VF `json:"vfs"`
	// Restored is set once the configuration is back as recorded.
	Restored bool `json:"restored,omitempty"`
	// Blocked says why the restore could not run yet (a VF held through
	// vfio); the PF stays out of the pool until a later run finds it free.
	Blocked string `json:"blocked,omitempty"`
}

// VF is one VF's PCI-level state and the settings its PF reports for it
// over netlink (ip link show PF: the "vf N" lines).
type VF struct {
	Index          int    `json:"index"`
	PCIAddress     string `json:"pciAddress"`
	Driver         string `json:"driver,omitempty"`
	DriverOverride string `json:"driverOverride,omitempty"`
	// PFSide is nil when the PF driver reports nothing for this VF.
	PFSide *netdev.VFConfig `json:"pfSide,omitempty"`
}

// Holds reports whether the record still holds anything of the node: a
// device not yet home, or SR-IOV state not yet restored.
func (r *Record) Holds() bool {
	return len(r.Pending()) > 0 || (r.SRIOV != nil && !r.SRIOV.Restored)
}

// Key names the record of an attachment. Neither a container ID nor an
// interface name may contain a colon, so the key is unambiguous.
func Key(containerID, ifName string) string {
	return containerID + ":" + ifName
}

// Key is the record's own key.
func (r *Record) Key() string { return Key(r.ContainerID, r.IfName) }

// PF is the record's physical function.
func (r *Record) PF() *Device { return &r.Devices[0] }

// Pending lists the devices not yet given back.
func (r *Record) Pending() []*Device {
	var out []*Device
	for i := range r.Devices {
		if !r.Devices[i].Released {
			out = append(out, &r.Devices[i])
		}
	}
	return out
}

// Validate rejects a record that could make the plugin touch devices it
// never took: every address must be a PCI address, names valid, the PF
// first and alone.
func (r *Record) Validate() error {
	var errs []error
	if r.Version != Version {
		errs = append(errs, fmt.Errorf("version %d, want %d", r.Version, Version))
	}
	// The runtime's own rule for container IDs (the skel enforces it on
	// every call), so a record's key is always a plain file name.
	if err := utils.ValidateContainerID(r.ContainerID); err != nil {
		errs = append(errs, fmt.Errorf("bad containerID %q", r.ContainerID))
	}
	if err := config.ValidateIfName(r.IfName); err != nil {
		errs = append(errs, err)
	}
	switch r.Phase {
	case Adding, Attached, Releasing:
	default:
		errs = append(errs, fmt.Errorf("unknown phase %q", r.Phase))
	}
	if len(r.Devices) == 0 {
		errs = append(errs, errors.New("no devices"))
	}
	seen := map[string]bool{}
	for i, d := range r.Devices {
		if !config.IsPCIAddress(d.PCIAddress) {
			errs = append(errs, fmt.Errorf("device %d: bad PCI address %q", i, d.PCIAddress))
		}
		if seen[d.PCIAddress] {
			errs = append(errs, fmt.Errorf("device %d: PCI address %s listed twice", i, d.PCIAddress))
		}
		seen[d.PCIAddress] = true
		if err := config.ValidateIfName(d.OriginalName); err != nil {
			errs = append(errs, fmt.Errorf("device %d original name: %w", i, err))
		}
		if err := config.ValidateIfName(d.PodName); err != nil {
			errs = append(errs, fmt.Errorf("device %d pod name: %w", i, err))
		}
		if (i == 0) != d.IsPF() {
			errs = append(errs, fmt.Errorf("device %d: the PF must come first and only once", i))
		}
	}
	if r.SRIOV != nil {
		errs = append(errs, r.SRIOV.validate()...)
	}
	return errors.Join(errs...)
}

// validate checks what a restore would write: PCI addresses (each write is
// also vetted against the PF's own virtfn links) and driver names, which go
// into driver_override.
func (s *SRIOV) validate() []error {
	var errs []error
	for _, d := range []string{s.PFDriver, s.PFDriverOverride} {
		if d != "" && !driverName.MatchString(d) {
			errs = append(errs, fmt.Errorf("sriov PF: bad driver name %q", d))
		}
	}
	if s.NumVFs < 0 || len(s.VFs) > s.NumVFs {
		errs = append(errs, fmt.Errorf("sriov: %d VFs listed for numVFs %d", len(s.VFs), s.NumVFs))
	}
	seen := map[string]bool{}
	for i, vf := range s.VFs {
		if !config.IsPCIAddress(vf.PCIAddress) || seen[vf.PCIAddress] {
			errs = append(errs, fmt.Errorf("sriov VF %d: bad or repeated PCI address %q", i, vf.PCIAddress))
		}
		seen[vf.PCIAddress] = true
		for _, d := range []string{vf.Driver, vf.DriverOverride} {
			if d != "" && !driverName.MatchString(d) {
				errs = append(errs, fmt.Errorf("sriov VF %d: bad driver name %q", i, d))
			}
		}
	}
	return errs
}

// driverName is what a kernel module's driver name can be.
var driverName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// Decode parses and validates a record.
func Decode(data []byte) (*Record, error) {
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decode record: %w", err)
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("invalid record: %w", err)
	}
	return &r, nil
}
