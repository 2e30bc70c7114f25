package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
)

// watchLinks subscribes to link events in the host netns. A new link, or
// a link changing name or netns, may be a device coming home (the kernel
// hands a dying netns's physical devices back to init_net, a workload
// moves them back): those ask for repair when the link is one of the
// devices a release waits for. Every other link event (every veth any pod
// makes) asks only for a look, which takes no lock.
func (a *Agent) watchLinks(ctx context.Context) error {
	return keepSubscribed(ctx, a, "link", func(ch chan netlink.LinkUpdate, done chan struct{}, h *netns.NsHandle) error {
		return netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{Namespace: h, ErrorCallback: a.subscriptionError("link")})
	}, func(u netlink.LinkUpdate) { a.signal(u.Header.Type == unix.RTM_NEWLINK && a.awaited(u.Link)) }, true)
}

// awaited reports whether a host link is a device some release waits for,
// by PCI address: the link's parent device, the plugin's altname tag
// (sriovpt.<pci>, on every device it holds), or sysfs.
func (a *Agent) awaited(l netlink.Link) bool {
	a.mu.Lock()
	waiting := a.awaiting
	a.mu.Unlock()
	if len(waiting) == 0 {
		return false
	}
	pci := netdev.PCIOf(l)
	if pci == "" {
		pci = a.pciOfName(l.Attrs().Name)
	}
	return pci != "" && waiting[pci]
}

// pciOfName reads the PCI address behind a host netdev from sysfs
// (class/net/<name>/device), "" when it has none.
func (a *Agent) pciOfName(name string) string {
	if name == "" || strings.Contains(name, "/") {
		return ""
	}
	dev, err := filepath.EvalSymlinks(filepath.Join(a.Conf.SysfsRoot, "class", "net", name, "device"))
	if err != nil {
		return ""
	}
	return filepath.Base(dev)
}

// watchUplinkSigns subscribes to address and route events in the host
// netns: a PF that gains a global address or a default route becomes an
// uplink, which no link event announces.
func (a *Agent) watchUplinkSigns(ctx context.Context) error {
	err := keepSubscribed(ctx, a, "address", func(ch chan netlink.AddrUpdate, done chan struct{}, h *netns.NsHandle) error {
		return netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{Namespace: h, ErrorCallback: a.subscriptionError("address")})
	}, func(netlink.AddrUpdate) { a.signalUplinkSign() }, false)
	if err != nil {
		return err
	}
	return keepSubscribed(ctx, a, "route", func(ch chan netlink.RouteUpdate, done chan struct{}, h *netns.NsHandle) error {
		return netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{Namespace: h, ErrorCallback: a.subscriptionError("route")})
	}, func(netlink.RouteUpdate) { a.signalUplinkSign() }, false)
}

func (a *Agent) subscriptionError(what string) func(error) {
	return func(err error) { a.Log.Warn(what+" subscription", "error", err) }
}

// keepSubscribed subscribes to one kind of netlink event in the host netns
// and hands every event to onEvent until ctx ends. The library closes the
// channel when its socket fails (ENOBUFS when events outran us, or any
// receive error): events may have been missed, so the agent looks again
// (with repair if repairOnLoss) and subscribes anew, once a second until
// it works. Only the first subscription's failure is returned.
func keepSubscribed[T any](ctx context.Context, a *Agent, what string,
	subscribe func(chan T, chan struct{}, *netns.NsHandle) error, onEvent func(T), repairOnLoss bool) error {
	open := func() (chan T, chan struct{}, error) {
		h, err := a.hostHandle()
		if err != nil {
			return nil, nil, err
		}
		defer h.Close()
		ch, done := make(chan T, 64), make(chan struct{})
		if err := subscribe(ch, done, &h); err != nil {
			return nil, nil, fmt.Errorf("subscribe to %s events in the host netns: %w", what, err)
		}
		return ch, done, nil
	}
	ch, done, err := open()
	if err != nil {
		return err
	}
	a.watchers.Add(1)
	go func() {
		defer a.watchers.Done()
		for {
			select {
			case <-ctx.Done():
				close(done)
				return
			case ev, ok := <-ch:
				if ok {
					onEvent(ev)
					continue
				}
			}
			close(done)
			a.Log.Warn(what + " subscription closed; looking again and subscribing anew")
			a.signal(repairOnLoss)
			for ch, done, err = open(); err != nil; ch, done, err = open() {
				a.Log.Error(what+" subscription", "error", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
			}
		}
	}()
	return nil
}

func (a *Agent) hostHandle() (netns.NsHandle, error) {
	if a.HostNetns == "" {
		return netns.Get()
	}
	return netns.GetFromPath(a.HostNetns)
}

// watchDirs watches the state dir (records written and removed), the
// reserved file's and the node configuration's directories (admins
// replace files by rename), and the netns directory (a pod's netns
// unmounted: its attachment may be released).
func (a *Agent) watchDirs(ctx context.Context) error {
	dirs := []string{a.Conf.StateDir}
	if f := a.reservedFile(); f != "" {
		if d := filepath.Dir(f); exists(d) {
			dirs = append(dirs, d)
		} else {
			a.Log.Warn("the reserved-interfaces file's directory does not exist; changes to it will be seen at the next resync", "dir", d)
		}
	}
	netnsIdx := -1
	if a.NetnsDir != "" && exists(a.NetnsDir) {
		netnsIdx = len(dirs)
		dirs = append(dirs, a.NetnsDir)
	}
	w, err := newDirWatch(dirs...)
	if err != nil {
		return err
	}
	a.watchers.Add(2)
	go func() {
		defer a.watchers.Done()
		<-ctx.Done()
		w.Close()
	}()
	go func() {
		defer a.watchers.Done()
		for {
			paths, err := w.Next()
			if err != nil {
				if ctx.Err() == nil {
					a.Log.Error("directory watch ended", "error", err)
				}
				return
			}
			repair := false
			for _, p := range paths {
				repair = repair || (netnsIdx >= 0 && filepath.Dir(p) == filepath.Clean(a.NetnsDir))
			}
			a.signal(repair)
		}
	}()
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
