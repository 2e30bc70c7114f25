// Package floor is the least kernel work that hands a PF and its VF
// netdevs to a pod and takes them back: each netdev moved in, the PF
// renamed to the pod's name and set up there; then the PF set down and
// renamed back, and each netdev moved home. The benchmarks time the plugin
// against it, in process (test/e2e) and exec'd like a plugin
// (test/e2e/floorcni).
package floor

import (
	"fmt"
	"net"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Add moves the netdevs names (the PF first, by its host name) from this
// netns into the netns at path, gives the PF the name ifname there and
// sets it up, and sets up each VF that was up here (a move takes a device
// down): the plugin keeps admin states, so its floor must too. It returns
// the names of the devices that were up here, for Del.
func Add(path, ifname string, names []string) (up []string, err error) {
	host, pod, podNS, err := handles(path)
	if err != nil {
		return nil, err
	}
	defer host.Close()
	defer pod.Close()
	defer podNS.Close()
	for _, n := range names {
		l, err := host.LinkByName(n)
		if err == nil && l.Attrs().Flags&net.FlagUp != 0 {
			up = append(up, n)
		}
		if err == nil {
			err = host.LinkSetNsFd(l, int(podNS))
		}
		if err != nil {
			return nil, fmt.Errorf("move %q to the pod: %w", n, err)
		}
	}
	l, err := pod.LinkByName(names[0])
	if err == nil {
		err = pod.LinkSetName(l, ifname)
	}
	if err == nil {
		err = pod.LinkSetUp(l)
	}
	for _, n := range up {
		if err != nil || n == names[0] {
			continue
		}
		var vf netlink.Link
		if vf, err = pod.LinkByName(n); err == nil {
			err = pod.LinkSetUp(vf)
		}
	}
	return up, err
}

// Del undoes Add: the PF, ifname in the pod, set down and given its host
// name back, every netdev moved to this netns, and those that were up
// here (up, from Add) set up again.
func Del(path, ifname string, names, up []string) error {
	host, pod, podNS, err := handles(path)
	if err != nil {
		return err
	}
	defer host.Close()
	defer pod.Close()
	defer podNS.Close()
	hostNS, err := netns.Get()
	if err != nil {
		return err
	}
	defer hostNS.Close()
	l, err := pod.LinkByName(ifname)
	if err == nil {
		err = pod.LinkSetDown(l)
	}
	if err == nil {
		err = pod.LinkSetName(l, names[0])
	}
	if err != nil {
		return fmt.Errorf("PF in the pod: %w", err)
	}
	for _, n := range names {
		l, err := pod.LinkByName(n)
		if err == nil {
			err = pod.LinkSetNsFd(l, int(hostNS))
		}
		if err != nil {
			return fmt.Errorf("move %q home: %w", n, err)
		}
	}
	for _, n := range up {
		l, err := host.LinkByName(n)
		if err == nil {
			err = host.LinkSetUp(l)
		}
		if err != nil {
			return fmt.Errorf("set %q up again: %w", n, err)
		}
	}
	return nil
}

// handles opens netlink in this (the host) netns and in the pod's.
func handles(path string) (host, pod *netlinksafe.Handle, podNS netns.NsHandle, err error) {
	podNS, err = netns.GetFromPath(path)
	if err != nil {
		return nil, nil, 0, err
	}
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		podNS.Close()
		return nil, nil, 0, err
	}
	p, err := netlinksafe.NewHandleAt(podNS, unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		podNS.Close()
		return nil, nil, 0, err
	}
	return &h, &p, podNS, nil
}
