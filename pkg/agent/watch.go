package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// watchLinks subscribes to link events in the host netns. A new link, or
// a link changing name or netns, may be a device coming home (the kernel
// hands a dying netns's physical devices back to init_net, a workload
// moves them back): those ask for repair. A subscription that breaks is
// opened again.
func (a *Agent) watchLinks(ctx context.Context) error {
	sub := func() (chan netlink.LinkUpdate, chan struct{}, error) {
		h, err := a.hostHandle()
		if err != nil {
			return nil, nil, err
		}
		defer h.Close()
		ch, done := make(chan netlink.LinkUpdate, 64), make(chan struct{})
		err = netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
			Namespace:     &h,
			ErrorCallback: func(err error) { a.Log.Warn("link subscription", "error", err) },
		})
		if err != nil {
			return nil, nil, fmt.Errorf("subscribe to link events in the host netns: %w", err)
		}
		return ch, done, nil
	}
	ch, done, err := sub()
	if err != nil {
		return err
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				close(done)
				return
			case u, ok := <-ch:
				if ok {
					a.signal(u.Header.Type == unix.RTM_NEWLINK)
					continue
				}
			}
			// The kernel closed the subscription (e.g. ENOBUFS when
			// events outran us): look again, and subscribe again.
			close(done)
			a.signal(true)
			for ctx.Err() == nil {
				if ch, done, err = sub(); err == nil {
					break
				}
				a.Log.Error("link subscription", "error", err)
				time.Sleep(time.Second)
			}
		}
	}()
	return nil
}

// watchUplinkSigns subscribes to address and route events in the host
// netns: a PF that gains a global address or a default route becomes an
// uplink, which no link event announces.
func (a *Agent) watchUplinkSigns(ctx context.Context) error {
	h, err := a.hostHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	addrs, routes, done := make(chan netlink.AddrUpdate, 64), make(chan netlink.RouteUpdate, 64), make(chan struct{})
	onErr := func(err error) { a.Log.Warn("address/route subscription", "error", err) }
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{Namespace: &h, ErrorCallback: onErr}); err != nil {
		close(done)
		return fmt.Errorf("subscribe to address events in the host netns: %w", err)
	}
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{Namespace: &h, ErrorCallback: onErr}); err != nil {
		close(done)
		return fmt.Errorf("subscribe to route events in the host netns: %w", err)
	}
	go func() {
		defer close(done)
		for addrs != nil || routes != nil {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-addrs:
				if !ok {
					addrs = nil
				}
			case _, ok := <-routes:
				if !ok {
					routes = nil
				}
			}
			a.signal(false)
		}
		// Closed by the kernel: the resync is the backstop from here.
		a.Log.Error("address and route subscriptions ended; uplink changes are seen at the next resync")
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
	go func() {
		<-ctx.Done()
		w.Close()
	}()
	go func() {
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
