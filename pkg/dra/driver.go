// Package dra is the agent as a DRA kubelet plugin: it publishes the PFs
// the device-plugin inventory would advertise as devices of a ResourceSlice,
// and prepares the claims the scheduler allocates from it by recording them
// in the node's claim checkpoint (pkg/claims), where the CNI plugin finds
// the pod's PF, and by handing the container PCIDEVICE_PROW_SRIOV through
// CDI, as the device plugin's Allocate does through its response.
package dra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/agent"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/claims"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
)

// DriverName is the DRA driver's name: the DeviceClass selects on it, and
// its unqualified device attributes are in this domain.
const DriverName = "sriov-passthrough.kubevirt.io"

// Publisher publishes the node's pool (kubeletplugin.Helper does).
type Publisher interface {
	PublishResources(ctx context.Context, resources resourceslice.DriverResources) error
}

// Driver is the DRA plugin's logic: what goes into the ResourceSlice, and
// Prepare and Unprepare. Plugin wires it to the kubelet and the API server.
type Driver struct {
	// NodeName names the pool: one pool per node, one slice in it.
	NodeName string
	// Resource is the extended resource the DeviceClass maps to the driver
	// (prow/sriov): its name goes into every device's attributes and,
	// upper-cased, into the environment variable (agent.EnvName).
	Resource string
	Sys      sriov.Sysfs
	Claims   claims.Store
	CDI      CDI
	Log      *slog.Logger
	// Fatal is told of an error the helper cannot recover from (its gRPC
	// servers failed); nil only logs it.
	Fatal func(error)

	mu sync.Mutex
	// pfs is the last look at the node, by PCI address; nil before the
	// first (then Prepare refuses, and nothing is published).
	pfs map[string]agent.PF
	// published is what was last handed to the publisher.
	published []resourceapi.Device
	publisher Publisher
}

// Update takes a new look at the node (the agent's Publish) and publishes
// the slice when its devices changed: a PF that stops being free or held
// by a pod the scheduler allocated it to leaves the slice, as it turns
// Unhealthy on the device plugin's ListAndWatch.
func (d *Driver) Update(pfs []agent.PF) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pfs = map[string]agent.PF{}
	for _, p := range pfs {
		d.pfs[p.PCI] = p
	}
	d.publishLocked()
}

// SetPublisher starts publishing through p: what the agent saw so far is
// published at once.
func (d *Driver) SetPublisher(p Publisher) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.publisher, d.published = p, nil
	d.publishLocked()
}

func (d *Driver) publishLocked() {
	if d.publisher == nil || d.pfs == nil {
		return
	}
	devs := d.devices(slices.Collect(maps.Values(d.pfs)))
	if d.published != nil && slices.EqualFunc(devs, d.published, sameDevice) {
		return
	}
	res := resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{
		d.NodeName: {Slices: []resourceslice.Slice{{Devices: devs}}},
	}}
	if err := d.publisher.PublishResources(context.Background(), res); err != nil {
		d.Log.Error("publish the ResourceSlice", "error", err)
		return
	}
	d.published = devs
	var names []string
	for _, dev := range devs {
		names = append(names, dev.Name)
	}
	d.Log.Info("published the ResourceSlice", "pool", d.NodeName, "devices", strings.Join(names, ","))
}

// Offered reports whether a PF is in the slice: the device plugin's rule,
// advertised and healthy (free, or held by an attachment its pod was
// allocated), so that both modes offer the same PFs.
func Offered(p agent.PF) bool { return p.Advertised() && p.Healthy() }

// devices is the slice's devices, in PCI order.
func (d *Driver) devices(pfs []agent.PF) []resourceapi.Device {
	slices.SortFunc(pfs, func(a, b agent.PF) int { return strings.Compare(a.PCI, b.PCI) })
	out := []resourceapi.Device{}
	for _, p := range pfs {
		if Offered(p) {
			out = append(out, d.device(p))
		}
	}
	return out
}

// device is one PF as the slice describes it: what a person selects on,
// the standard PCI and NUMA attributes, and the two multus's DRA support
// reads to find the PF and the resource it stands for.
func (d *Driver) device(p agent.PF) resourceapi.Device {
	str := func(s string) resourceapi.DeviceAttribute { return resourceapi.DeviceAttribute{StringValue: &s} }
	num := func(n int) resourceapi.DeviceAttribute {
		v := int64(n)
		return resourceapi.DeviceAttribute{IntValue: &v}
	}
	attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		"pciAddress":                      str(p.PCI),
		"pfName":                          str(p.Name),
		"numVFs":                          num(p.VFs),
		"totalVFs":                        num(p.TotalVFs),
		"resource.kubernetes.io/pciBusID": str(p.PCI),
		"k8s.cni.cncf.io/deviceID":        str(p.PCI),
		"k8s.cni.cncf.io/resourceName":    str(d.Resource),
	}
	if drv := d.Sys.Driver(p.PCI); drv != "" {
		attrs["driver"] = str(drv)
	}
	if n, ok := d.Sys.NUMANode(p.PCI); ok {
		attrs["resource.kubernetes.io/numaNode"] = num(n)
	}
	return resourceapi.Device{Name: DeviceName(p.PCI), Attributes: attrs}
}

func sameDevice(a, b resourceapi.Device) bool {
	if a.Name != b.Name || len(a.Attributes) != len(b.Attributes) {
		return false
	}
	for k, va := range a.Attributes {
		vb, ok := b.Attributes[k]
		if !ok || fmt.Sprint(deref(va)) != fmt.Sprint(deref(vb)) {
			return false
		}
	}
	return true
}

func deref(v resourceapi.DeviceAttribute) [2]any {
	var out [2]any
	if v.StringValue != nil {
		out[0] = *v.StringValue
	}
	if v.IntValue != nil {
		out[1] = *v.IntValue
	}
	return out
}

// DeviceName is a PF's device name in the slice: a DNS label, so the PCI
// address with '-' for ':' and '.' ("pf-0000-3b-00-0").
func DeviceName(pci string) string {
	return "pf-" + strings.NewReplacer(":", "-", ".", "-").Replace(pci)
}

// pciOf is DeviceName's inverse; "" for a name that is not one.
func pciOf(name string) string {
	rest, ok := strings.CutPrefix(name, "pf-")
	parts := strings.Split(rest, "-")
	if !ok || len(parts) != 4 {
		return ""
	}
	if pci := parts[0] + ":" + parts[1] + ":" + parts[2] + "." + parts[3]; config.IsPCIAddress(pci) {
		return pci
	}
	return ""
}

// PrepareResourceClaims records each claim in the checkpoint and returns
// its CDI devices. A claim prepared before (the kubelet asks again after a
// restart) gets the same answer, whatever the PFs' phase now: its pod may
// hold them. A new claim is refused for a PF another claim holds in the
// checkpoint, or that is not free on the node now (a release pending, a job
// that did not ask for it): the kubelet retries, and the pod waits for the
// PF rather than failing or getting a PF in use.
func (d *Driver) PrepareResourceClaims(_ context.Context, cs []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	entries, err := d.Claims.List()
	if err != nil {
		return nil, err
	}
	out := map[types.UID]kubeletplugin.PrepareResult{}
	for _, c := range cs {
		res, err := d.prepare(c, entries)
		if err != nil {
			d.Log.Warn("claim not prepared", "claim", c.Namespace+"/"+c.Name, "uid", c.UID, "error", err)
			res = kubeletplugin.PrepareResult{Err: err}
		}
		out[c.UID] = res
	}
	return out, nil
}

func (d *Driver) prepare(c *resourceapi.ResourceClaim, entries []claims.Entry) (kubeletplugin.PrepareResult, error) {
	// The UID names the CDI spec file and the checkpoint entry.
	if err := claims.ValidUID(string(c.UID)); err != nil {
		return kubeletplugin.PrepareResult{}, err
	}
	byRequest, pfs, err := d.allocated(c)
	if err != nil {
		return kubeletplugin.PrepareResult{}, err
	}
	e := claims.Entry{Claim: claims.Ref{Namespace: c.Namespace, Name: c.Name, UID: string(c.UID)}, PFs: pfs}
	for _, r := range c.Status.ReservedFor {
		if r.Resource == "pods" && r.APIGroup == "" {
			e.Pods = append(e.Pods, claims.Ref{Namespace: c.Namespace, Name: r.Name, UID: string(r.UID)})
		}
	}
	prepared := slices.ContainsFunc(entries, func(x claims.Entry) bool { return x.Claim.UID == e.Claim.UID })
	if !prepared {
		if err := d.free(e, entries); err != nil {
			return kubeletplugin.PrepareResult{}, err
		}
	}
	result, spec := d.CDI.devicesFor(e.Claim.UID, byRequest, d.Resource, d.NodeName)
	if err := d.CDI.write(e.Claim.UID, spec); err != nil {
		return kubeletplugin.PrepareResult{}, err
	}
	if _, err := d.Claims.Prepare(e); err != nil {
		return kubeletplugin.PrepareResult{}, err
	}
	if !prepared {
		d.Log.Info("claim prepared", "claim", c.Namespace+"/"+c.Name, "uid", c.UID, "pfs", strings.Join(pfs, ","), "pods", fmt.Sprint(e.Pods))
	}
	return result, nil
}

// allocated lists the claim's PFs on this node, by request and in all.
func (d *Driver) allocated(c *resourceapi.ResourceClaim) (map[string][]string, []string, error) {
	if c.Status.Allocation == nil {
		return nil, nil, fmt.Errorf("claim %s/%s is not allocated", c.Namespace, c.Name)
	}
	byRequest := map[string][]string{}
	var all []string
	for _, r := range c.Status.Allocation.Devices.Results {
		if r.Driver != DriverName {
			continue
		}
		pci := pciOf(r.Device)
		if r.Pool != d.NodeName || pci == "" {
			return nil, nil, fmt.Errorf("claim %s/%s: device %s of pool %s is not a PF of node %s", c.Namespace, c.Name, r.Device, r.Pool, d.NodeName)
		}
		req, _, _ := strings.Cut(r.Request, "/")
		byRequest[req] = append(byRequest[req], pci)
		all = append(all, pci)
	}
	if len(all) == 0 {
		return nil, nil, fmt.Errorf("claim %s/%s has no device of driver %s", c.Namespace, c.Name, DriverName)
	}
	return byRequest, all, nil
}

// free says why a new claim may not have its PFs, nil when it may.
func (d *Driver) free(e claims.Entry, entries []claims.Entry) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pfs == nil {
		return errors.New("the agent has not looked at the node yet")
	}
	var errs []error
	for _, pci := range e.PFs {
		for _, x := range entries {
			if slices.Contains(x.PFs, pci) {
				errs = append(errs, fmt.Errorf("PF %s is prepared for claim %s", pci, x.Claim))
			}
		}
		p, ok := d.pfs[pci]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("PF %s is not on this node", pci))
		case p.Phase != agent.Free:
			why := p.Why
			if h := p.Holder; h != nil {
				why = "held by pod " + h.Pod
			}
			errs = append(errs, fmt.Errorf("PF %s (%s) is not free: %s: %s", pci, p.Name, p.Phase, why))
		}
	}
	return errors.Join(errs...)
}

// UnprepareResourceClaims removes each claim's CDI spec and entry; a
// claim not prepared is no error (the kubelet asks again after restarts).
func (d *Driver) UnprepareResourceClaims(_ context.Context, cs []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	out := map[types.UID]error{}
	for _, c := range cs {
		err := claims.ValidUID(string(c.UID))
		if err == nil {
			err = errors.Join(d.CDI.remove(string(c.UID)), d.Claims.Unprepare(string(c.UID)))
		}
		if err == nil {
			d.Log.Info("claim unprepared", "claim", c.String())
		}
		out[c.UID] = err
	}
	return out, nil
}

// HandleError logs what the helper hits in the background. Publishing
// errors are recoverable (the helper retries), and the agent keeps running:
// the CNI plugin and the release path do not depend on the API server. A
// failed gRPC server is not, and goes to Fatal.
func (d *Driver) HandleError(_ context.Context, err error, msg string) {
	recoverable := errors.Is(err, kubeletplugin.ErrRecoverable)
	d.Log.Error(msg, "error", err, "recoverable", recoverable)
	if !recoverable && d.Fatal != nil {
		d.Fatal(fmt.Errorf("%s: %w", msg, err))
	}
}

// WatchHealthStatus: health goes through the slice (a PF that is not free
// leaves it), not the kubelet's health API.
func (d *Driver) WatchHealthStatus(context.Context, chan<- kubeletplugin.DeviceHealthReport) error {
	return kubeletplugin.ErrHealthNotSupported
}
