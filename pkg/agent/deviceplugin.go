package agent

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// DefaultResourceName is the extended resource prow jobs request.
const DefaultResourceName = "prow/sriov"

// DevicePlugin serves the kubelet's device plugin API for one resource:
// one device per eligible PF, its ID the PF's PCI address.
type DevicePlugin struct {
	pluginapi.UnimplementedDevicePluginServer
	Resource string
	Log      *slog.Logger

	mu  sync.Mutex
	pfs []PF
	// changed is closed (and replaced) whenever what the kubelet sees
	// changes, waking every ListAndWatch stream.
	changed chan struct{}
	// looked is closed by the first Update: until then the plugin knows
	// nothing of the node, and must not be registered.
	looked chan struct{}
	// sends counts the lists sent on ListAndWatch streams.
	sends atomic.Uint64
}

// NewDevicePlugin returns a plugin that advertises nothing yet.
func NewDevicePlugin(resource string, log *slog.Logger) *DevicePlugin {
	return &DevicePlugin{Resource: resource, Log: log, changed: make(chan struct{}), looked: make(chan struct{})}
}

// Looked is closed once the plugin has its first look at the node.
func (d *DevicePlugin) Looked() <-chan struct{} { return d.looked }

// Update publishes a new look at the node. Streams are woken only when a
// device was added, removed, or changed health. The plugin keeps a copy:
// streams read it after Update returns, while the caller may reuse pfs.
func (d *DevicePlugin) Update(pfs []PF) {
	pfs = slices.Clone(pfs)
	d.mu.Lock()
	defer d.mu.Unlock()
	select {
	case <-d.looked:
	default:
		close(d.looked)
	}
	before := devices(d.pfs)
	d.pfs = pfs
	if !slices.EqualFunc(before, devices(pfs), func(a, b *pluginapi.Device) bool {
		return a.ID == b.ID && a.Health == b.Health
	}) {
		close(d.changed)
		d.changed = make(chan struct{})
	}
}

// devices is what the kubelet is told: advertised PFs, in PCI order.
func devices(pfs []PF) []*pluginapi.Device {
	var out []*pluginapi.Device
	for _, p := range pfs {
		if !p.Advertised() {
			continue
		}
		health := pluginapi.Unhealthy
		if p.Healthy() {
			health = pluginapi.Healthy
		}
		out = append(out, &pluginapi.Device{ID: p.PCI, Health: health})
	}
	return out
}

func (d *DevicePlugin) snapshot() ([]PF, chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pfs, d.changed
}

// GetDevicePluginOptions tells the kubelet to ask for a preferred
// allocation.
func (d *DevicePlugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}, nil
}

// ListAndWatch sends the device list now and again on every change.
func (d *DevicePlugin) ListAndWatch(_ *pluginapi.Empty, s grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	return d.listAndWatch(s, func() {})
}

// listAndWatch is ListAndWatch; sent is called after each list sent.
func (d *DevicePlugin) listAndWatch(s grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse], sent func()) error {
	for {
		pfs, changed := d.snapshot()
		if err := s.Send(&pluginapi.ListAndWatchResponse{Devices: devices(pfs)}); err != nil {
			return err
		}
		d.sends.Add(1)
		sent()
		select {
		case <-changed:
		case <-s.Context().Done():
			return nil
		}
	}
}

// GetPreferredAllocation prefers what the plugin itself would choose: the
// devices that must be included, then PFs free on the host in PCI order,
// then the rest (held by an attachment the kubelet does not know of).
func (d *DevicePlugin) GetPreferredAllocation(_ context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	pfs, _ := d.snapshot()
	phase := map[string]Phase{}
	for _, p := range pfs {
		phase[p.PCI] = p.Phase
	}
	resp := &pluginapi.PreferredAllocationResponse{}
	for _, c := range req.ContainerRequests {
		ids := slices.Clone(c.MustIncludeDeviceIDs)
		rest := slices.DeleteFunc(slices.Clone(c.AvailableDeviceIDs), func(id string) bool { return slices.Contains(ids, id) })
		slices.SortStableFunc(rest, func(a, b string) int {
			if fa, fb := phase[a] == Free, phase[b] == Free; fa != fb {
				if fa {
					return -1
				}
				return 1
			}
			return strings.Compare(a, b)
		})
		ids = append(ids, rest...)
		if n := int(c.AllocationSize); n >= 0 && len(ids) > n {
			ids = ids[:n]
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: ids})
	}
	return resp, nil
}

// Allocate hands each container the PCI addresses of its PFs in an
// environment variable, as the SR-IOV network device plugin does
// (PCIDEVICE_<RESOURCE>); multus reads the allocation itself from the
// kubelet's pod-resources API.
//
// It refuses any device that is not free on the node now, which the
// kubelet's count cannot know: a PF held by an attachment the kubelet
// does not know of, a release pending, a PF reserved, turned uplink or
// gone since the last list. The kubelet then fails the pod at admission
// (UnexpectedAdmissionError) at once; accepted, the pod's CNI ADD would
// fail on the same PF and the pod sit in ContainerCreating until prow's
// timeout. Nothing retries the failed pod: prow's job pods are bare pods
// (no controller makes a new one), so prow sees the job fail and reports
// it, with this message in the pod's status.
func (d *DevicePlugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	pfs, _ := d.snapshot()
	byPCI := map[string]PF{}
	for _, p := range pfs {
		byPCI[p.PCI] = p
	}
	resp := &pluginapi.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		for _, id := range c.DevicesIds {
			if err := d.notFree(id, byPCI); err != nil {
				d.Log.Warn("allocation refused", "resource", d.Resource, "pfs", strings.Join(c.DevicesIds, ","), "error", err)
				return nil, err
			}
		}
		d.Log.Info("allocated", "resource", d.Resource, "pfs", strings.Join(c.DevicesIds, ","))
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{EnvName(d.Resource): strings.Join(c.DevicesIds, ",")},
		})
	}
	return resp, nil
}

// notFree says why a device may not be allocated now, nil when it is free.
func (d *DevicePlugin) notFree(id string, byPCI map[string]PF) error {
	p, ok := byPCI[id]
	if !ok {
		return status.Errorf(codes.InvalidArgument, "%s is not a %s device of this node", id, d.Resource)
	}
	var why string
	switch p.Phase {
	case Free:
		return nil
	case Attached, Adding:
		why = "held by an attachment"
		if h := p.Holder; h != nil {
			why = fmt.Sprintf("held by pod %s (container %s, %s)", h.Pod, short(h.ContainerID), h.IfName)
		}
	case Ineligible:
		why = "never handed out: " + p.Why
	default:
		why = p.Why
	}
	return status.Errorf(codes.FailedPrecondition, "%s PF %s (%s) is not free on this node: %s", d.Resource, id, orDash(p.Name), why)
}

// EnvName is the variable Allocate sets: PCIDEVICE_ and the resource name
// upper-cased with every other character turned into '_'
// (prow/sriov -> PCIDEVICE_PROW_SRIOV).
func EnvName(resource string) string {
	var b strings.Builder
	b.WriteString("PCIDEVICE_")
	for _, r := range strings.ToUpper(resource) {
		if (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteRune('_')
		}
	}
	return b.String()
}

// validResource applies the kubelet's rule for an extended resource name
// the device plugin may register: <domain>/<name>.
func validResource(name string) error {
	domain, n, ok := strings.Cut(name, "/")
	if !ok || domain == "" || n == "" || strings.Contains(n, "/") {
		return fmt.Errorf("resource name %q is not <domain>/<name>", name)
	}
	return nil
}
