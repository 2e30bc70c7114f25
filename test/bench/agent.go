package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/agent"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
)

// agentEvents is the node agent's cost per event on the world: the time
// from a netlink change in the host netns to the device plugin's Update
// with a device list that shows it, which is what wakes the kubelet's
// ListAndWatch stream. The agent runs in this process on the world's host
// netns and fake sysfs, as pkg/agent's kernel tests run it, with no
// resync: only the events drive it. Each event gives the node's last PF a
// global address (it becomes an uplink and leaves the list) or takes the
// address away (it comes back). The time includes the agent's wait for a
// burst of events to settle (20 ms).
func agentEvents(w *world, pfName string, events int) ([]time.Duration, error) {
	conf, err := config.NodeConf(w.nodeFile)
	if err != nil {
		return nil, err
	}
	type update struct {
		at         time.Time
		advertised bool
	}
	updates := make(chan update, 64)
	dp := agent.NewDevicePlugin("prow/sriov", slog.New(slog.NewTextHandler(io.Discard, nil)))
	a := &agent.Agent{Conf: conf, HostNetns: w.host.Path(), Resync: time.Hour,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Publish: func(pfs []agent.PF) {
			dp.Update(pfs)
			u := update{at: time.Now()}
			for _, p := range pfs {
				u.advertised = u.advertised || p.Name == pfName && p.Advertised()
			}
			select {
			case updates <- u:
			default: // the bench waits for the last one only
			}
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()

	wait := func(want bool, timeout time.Duration) (time.Time, error) {
		deadline := time.After(timeout)
		for {
			select {
			case u := <-updates:
				if u.advertised == want {
					return u.at, nil
				}
			case err := <-done:
				done <- err
				return time.Time{}, fmt.Errorf("agent stopped: %v", err)
			case <-deadline:
				return time.Time{}, fmt.Errorf("no device list with %s advertised=%v within %v", pfName, want, timeout)
			}
		}
	}
	if _, err := wait(true, time.Minute); err != nil {
		return nil, fmt.Errorf("first look: %w", err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(192, 0, 2, 1), Mask: net.CIDRMask(24, 32)}}
	var took []time.Duration
	for i := range events {
		// An idle agent again: no update from the last event is pending.
		time.Sleep(100 * time.Millisecond)
		for len(updates) > 0 {
			<-updates
		}
		uplink := i%2 == 0
		var start time.Time
		err := w.host.Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName(pfName)
			if err != nil {
				return err
			}
			start = time.Now()
			if uplink {
				return netlink.AddrAdd(l, addr)
			}
			return netlink.AddrDel(l, addr)
		})
		if err != nil {
			return nil, fmt.Errorf("event %d on %s: %w", i, pfName, err)
		}
		at, err := wait(!uplink, 30*time.Second)
		if err != nil {
			return nil, fmt.Errorf("event %d: %w", i, err)
		}
		took = append(took, at.Sub(start))
	}
	return took, nil
}
