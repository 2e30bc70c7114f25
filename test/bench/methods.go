package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/plugin"
)

// method is one way of handing the world's devices to a pod and back.
// add and del return the wall time as the runtime sees it and what the
// work used.
type method interface {
	name() string
	add(w *world, pod ns.NetNS, cid string) (time.Duration, usage, error)
	del(w *world, pod ns.NetNS, cid string) (time.Duration, usage, error)
}

// usage is the peak RSS in KiB of the largest process involved (0 for
// in-process work) and the CPU time (user and system) spent: the child's,
// or the calling thread's for the floor. CPU time hardly depends on how
// long the kernel's netns moves sleep in their RCU barrier, which is most
// of the wall time and most of its noise on a shared machine, so it shows
// the plugin's own work more steadily than wall time does.
type usage struct {
	rssKiB int64
	cpu    time.Duration
}

func cpuOf(ru *syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// threadCPU is the CPU time of the calling thread so far; the caller
// holds its goroutine on the thread.
func threadCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0
	}
	return cpuOf(&ru)
}

// exe runs a CNI plugin binary as a runtime does: CNI env, config on
// stdin, with the calling thread in the world's host netns (the child
// inherits the netns of the thread that forks it).
func exe(w *world, path string, env []string, stdin []byte) (time.Duration, usage, error) {
	var out, errOut bytes.Buffer
	var took time.Duration
	var u usage
	err := w.host.Do(func(ns.NetNS) error {
		cmd := exec.Command(path)
		if len(wrap) > 0 {
			cmd = exec.Command(wrap[0], append(wrap[1:], path)...)
		}
		cmd.Env = env
		cmd.Stdin = bytes.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = &out, &errOut
		start := time.Now()
		err := cmd.Run()
		took = time.Since(start)
		if cmd.ProcessState != nil {
			if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
				u = usage{rssKiB: ru.Maxrss, cpu: cpuOf(ru)}
			}
		}
		return err
	})
	if err != nil {
		return 0, usage{}, fmt.Errorf("%s %v: %w\nstdout: %s\nstderr: %s", filepath.Base(path), env[:3], err, out.Bytes(), errOut.Bytes())
	}
	return took, u, nil
}

// wrap, when set, is a command the plugin binaries are run under (strace,
// perf) while profiling; times and RSS are then the wrapper's.
var wrap []string

func cniEnv(cmd, cid string, pod ns.NetNS, ifname, cniPath string) []string {
	return []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + cid, "CNI_IFNAME=" + ifname,
		"CNI_NETNS=" + pod.Path(), "CNI_PATH=" + cniPath, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
}

// pluginMethod is sriov-passthrough-cni: one exec for the whole PF.
type pluginMethod struct {
	label string
	bin   string
	conf  []byte
}

func newPluginMethod(label, bin string, w *world) (*pluginMethod, error) {
	conf, err := json.Marshal(map[string]any{
		"cniVersion": "1.1.0", "name": "sriov-passthrough-cni", "type": "sriov-passthrough-cni", "logLevel": "info",
	})
	return &pluginMethod{label: label, bin: bin, conf: conf}, err
}

// nodeEnv points the plugin at the world's node configuration, as the
// runtime's environment would on a node that keeps it elsewhere.
func nodeEnv(w *world) string { return config.NodeConfigEnv + "=" + w.nodeFile }

func (m *pluginMethod) name() string { return m.label }

func (m *pluginMethod) add(w *world, pod ns.NetNS, cid string) (time.Duration, usage, error) {
	return exe(w, m.bin, append(cniEnv("ADD", cid, pod, podIfName, filepath.Dir(m.bin)), nodeEnv(w)), m.conf)
}

func (m *pluginMethod) del(w *world, pod ns.NetNS, cid string) (time.Duration, usage, error) {
	return exe(w, m.bin, append(cniEnv("DEL", cid, pod, podIfName, filepath.Dir(m.bin)), nodeEnv(w)), m.conf)
}

// hostDeviceMethod is containernetworking's host-device, one exec per
// device: what a user without this plugin would script.
type hostDeviceMethod struct{ bin string }

func (m *hostDeviceMethod) name() string { return "host-device" }

func (m *hostDeviceMethod) conf(d device) []byte {
	b, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": "hd", "type": "host-device", "device": d.name})
	return b
}

func (m *hostDeviceMethod) each(w *world, cmd string, pod ns.NetNS, cid string) (time.Duration, usage, error) {
	var total time.Duration
	var sum usage
	for _, d := range w.devices() {
		took, u, err := exe(w, m.bin, cniEnv(cmd, cid, pod, d.podName, filepath.Dir(m.bin)), m.conf(d))
		if err != nil {
			return 0, usage{}, err
		}
		total += took
		sum = usage{rssKiB: max(sum.rssKiB, u.rssKiB), cpu: sum.cpu + u.cpu}
	}
	return total, sum, nil
}

func (m *hostDeviceMethod) add(w *world, pod ns.NetNS, cid string) (time.Duration, usage, error) {
	return m.each(w, "ADD", pod, cid)
}

func (m *hostDeviceMethod) del(w *world, pod ns.NetNS, cid string) (time.Duration, usage, error) {
	return m.each(w, "DEL", pod, cid)
}

// floorMethod does only the kernel work the plugin does, in process: one
// link dump where the devices are and one move per device straight to the
// other side; the PF is renamed in the pod (after its move on ADD, set
// down and renamed before its move on DEL) and set up there on ADD. No
// config, no sysfs, no state, no tags, no process start. With viaTransit
// every device goes through a transit netns both ways, as the plugin did
// before it sent devices straight to the pod.
type floorMethod struct{ viaTransit bool }

func (f floorMethod) name() string {
	if f.viaTransit {
		return "floor-transit"
	}
	return "floor"
}

func (f floorMethod) add(w *world, pod ns.NetNS, _ string) (time.Duration, usage, error) {
	want := map[string]string{}
	for _, d := range w.devices() {
		want[d.name] = d.podName
	}
	if f.viaTransit {
		return onThread(func() error { return transfer(w.host, pod, want, podIfName, true) })
	}
	return onThread(func() error { return moveEach(w.host, pod, want, podIfName, false) })
}

// onThread times f with its goroutine held on one thread, for the
// thread's CPU time.
func onThread(f func() error) (time.Duration, usage, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu, start := threadCPU(), time.Now()
	err := f()
	return time.Since(start), usage{cpu: threadCPU() - cpu}, err
}

func (f floorMethod) del(w *world, pod ns.NetNS, _ string) (time.Duration, usage, error) {
	want := map[string]string{}
	for _, d := range w.devices() {
		want[d.podName] = d.name
	}
	if f.viaTransit {
		return onThread(func() error { return transfer(pod, w.host, want, "", true) })
	}
	return onThread(func() error { return moveEach(pod, w.host, want, "", true) })
}

// handles opens a netlink handle in each netns; closeAll closes them.
func handles(nss ...ns.NetNS) (hs []*netlink.Handle, closeAll func(), err error) {
	closeAll = func() {
		for _, h := range hs {
			h.Close()
		}
	}
	for _, n := range nss {
		h, err := netlink.NewHandleAt(netns.NsHandle(n.Fd()), unix.NETLINK_ROUTE)
		if err != nil {
			closeAll()
			return nil, func() {}, err
		}
		hs = append(hs, h)
	}
	return hs, closeAll, nil
}

// named opens handles in src and dst and lists the links of src named as
// the keys of names; it fails unless it finds them all.
func named(src, dst ns.NetNS, names map[string]string) (hSrc, hDst *netlink.Handle, links []netlink.Link, closeAll func(), err error) {
	hs, closeAll, err := handles(src, dst)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	all, err := hs[0].LinkList()
	for _, l := range all {
		if _, ok := names[l.Attrs().Name]; ok {
			links = append(links, l)
		}
	}
	if err == nil && len(links) != len(names) {
		err = fmt.Errorf("found %d of %d links", len(links), len(names))
	}
	if err != nil {
		closeAll()
		return nil, nil, nil, nil, err
	}
	return hs[0], hs[1], links, closeAll, nil
}

// moveEach moves the links of src named as the keys of names into dst,
// one move each, and renames those whose name changes to the values:
// before the move, set down, in src when renameInSrc (DEL: the pod), else
// after it in dst (ADD: the pod). up is set up in dst.
func moveEach(src, dst ns.NetNS, names map[string]string, up string, renameInSrc bool) error {
	hSrc, hDst, links, closeAll, err := named(src, dst, names)
	if err != nil {
		return err
	}
	defer closeAll()
	for _, l := range links {
		to := names[l.Attrs().Name]
		if to != l.Attrs().Name && renameInSrc {
			if err := hSrc.LinkSetDown(l); err != nil {
				return err
			}
			if err := hSrc.LinkSetName(l, to); err != nil {
				return fmt.Errorf("rename %q to %q: %w", l.Attrs().Name, to, err)
			}
			l.Attrs().Name = to
		}
		if err := hSrc.LinkSetNsFd(l, int(dst.Fd())); err != nil {
			return fmt.Errorf("move %q: %w", l.Attrs().Name, err)
		}
		// The kernel keeps a device's ifindex across netns moves unless
		// the target uses it.
		if to != l.Attrs().Name {
			if err := hDst.LinkSetName(l, to); err != nil {
				return fmt.Errorf("rename %q to %q: %w", l.Attrs().Name, to, err)
			}
			l.Attrs().Name = to
		}
		if to == up {
			if err := hDst.LinkSetUp(l); err != nil {
				return err
			}
		}
	}
	return nil
}

// transfer moves the links of src named as the keys of names into dst
// through a fresh transit netns, renamed there to the values, each device
// when allViaTransit, else only those renamed; up is set up in dst.
func transfer(src, dst ns.NetNS, names map[string]string, up string, allViaTransit bool) error {
	hSrc, hDst, links, closeAll, err := named(src, dst, names)
	if err != nil {
		return err
	}
	defer closeAll()
	transit, err := ns.TempNetNS()
	if err != nil {
		return err
	}
	defer transit.Close()
	ht, closeT, err := handles(transit)
	if err != nil {
		return err
	}
	defer closeT()
	hT := ht[0]

	var parked []netlink.Link
	for _, l := range links {
		to := names[l.Attrs().Name]
		target := dst
		if to != l.Attrs().Name || allViaTransit {
			target = transit
			parked = append(parked, l)
		}
		if err := hSrc.LinkSetNsFd(l, int(target.Fd())); err != nil {
			return fmt.Errorf("move %q: %w", l.Attrs().Name, err)
		}
		if l.Attrs().Name == up {
			if err := hDst.LinkSetUp(l); err != nil {
				return err
			}
		}
	}
	// The kernel keeps a device's ifindex across netns moves unless the
	// target uses it; a fresh transit netns only has lo.
	for _, l := range parked {
		if to := names[l.Attrs().Name]; to != l.Attrs().Name {
			if err := hT.LinkSetName(l, to); err != nil {
				return fmt.Errorf("rename %q to %q: %w", l.Attrs().Name, to, err)
			}
			l.Attrs().Name = to
		}
		if err := hT.LinkSetNsFd(l, int(dst.Fd())); err != nil {
			return fmt.Errorf("move %q on: %w", l.Attrs().Name, err)
		}
		if l.Attrs().Name == up {
			if err := hDst.LinkSetUp(l); err != nil {
				return err
			}
		}
	}
	return nil
}

// inProcMethod runs the plugin's ADD and DEL in this process, with the
// thread in the host netns: the plugin's own work without the exec and Go
// start-up of a fresh process. It tells the two apart when profiling.
type inProcMethod struct{ conf []byte }

func (inProcMethod) name() string { return "plugin-inproc" }

func (m inProcMethod) call(w *world, cmd string, pod ns.NetNS, cid string) (time.Duration, usage, error) {
	var out, logs bytes.Buffer
	p := plugin.New()
	p.NodeConfigFile, p.Stdout, p.Stderr = w.nodeFile, &out, &logs
	f := map[string]func(*skel.CmdArgs) error{"ADD": p.Add, "DEL": p.Del}[cmd]
	args := &skel.CmdArgs{ContainerID: cid, Netns: pod.Path(), IfName: podIfName, StdinData: m.conf}
	var took time.Duration
	var u usage
	err := w.host.Do(func(ns.NetNS) error {
		var err error
		took, u, err = onThread(func() error { return f(args) })
		return err
	})
	if err != nil {
		return 0, usage{}, fmt.Errorf("%w\n%s", err, logs.Bytes())
	}
	return took, u, nil
}

func (m inProcMethod) add(w *world, pod ns.NetNS, cid string) (time.Duration, usage, error) {
	return m.call(w, "ADD", pod, cid)
}

func (m inProcMethod) del(w *world, pod ns.NetNS, cid string) (time.Duration, usage, error) {
	return m.call(w, "DEL", pod, cid)
}
