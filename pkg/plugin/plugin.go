// Package plugin implements the CNI commands: ADD hands a free SR-IOV PF
// and all its VF netdevs to the pod, DEL gives them back whole. Giving
// back is the release engine's (pkg/release), shared with the node agent;
// this package turns its Go errors into CNI errors.
package plugin

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/claims"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/release"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// SupportedVersions are the CNI spec versions the plugin speaks.
var SupportedVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// Plugin holds the knobs that are not part of the network configuration.
type Plugin struct {
	// NodeConfigFile is the node configuration to read (config.Node): the
	// state dir, sysfs, log file, reservations and PF pool, which no
	// network configuration may set. New takes it from the environment
	// (config.NodeConfigPath); "" is none, all defaults.
	NodeConfigFile string
	// LockTimeout bounds the wait for the node-wide state lock.
	LockTimeout time.Duration
	// SettleTimeout bounds how long a release waits for devices that are
	// not in the pod or on the host yet. The kernel tears a dead netns
	// down asynchronously, and only then hands its physical devices back
	// to init_net.
	SettleTimeout time.Duration
	// ProcRoot is where procfs is mounted ("" is /proc): the release looks
	// there for processes holding a VF through vfio.
	ProcRoot string
	// DevRoot is where devtmpfs is mounted ("" is /dev): the restore holds
	// the VFs' vfio groups open there while it writes.
	DevRoot string
	// KernelRelease is the kernel's release as uname(2) gives it ("" asks
	// uname): ADD and STATUS refuse a kernel older than MinKernel.
	KernelRelease string
	// Stdout receives the CNI result; Stderr the logs when the node
	// configuration names no logFile.
	Stdout, Stderr io.Writer
}

// New returns a Plugin with production defaults, reading the node
// configuration this process's environment names.
func New() *Plugin {
	return &Plugin{NodeConfigFile: config.NodeConfigPath(), LockTimeout: 60 * time.Second, SettleTimeout: 3 * time.Second,
		Stdout: os.Stdout, Stderr: os.Stderr}
}

// Funcs wires the commands for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

// op is the context of one plugin invocation.
type op struct {
	*Plugin
	args *skel.CmdArgs
	conf *config.NetConf
	// owner is the Kubernetes pod from CNI_ARGS, for records and logs;
	// "pod" elsewhere in this package is the pod's network namespace.
	owner config.Pod
	log   *slog.Logger
	sys   sriov.Sysfs
	store state.Store
	host  *netdev.NS
	// eng gives devices back to the host: DEL, GC, repair, ADD's
	// rollback. It works on the same sysfs, records and host netns.
	eng   *release.Engine
	close func()
	// mark ends a step of the command's debug timing (stepClock).
	mark func(step string)
	// baselined holds, by PCI address, what adoptFree's bringing each
	// PF to the node's sriovBaseline returned (nil: it is there).
	baselined map[string]error
	// claim is the pod's prepared DRA claim that pinned the PF, nil for
	// none (claimedPCI).
	claim *claims.Entry
	// claimedByOthers maps the PFs prepared for other pods' DRA claims to
	// those claims (othersClaims).
	claimedByOthers map[string]string
}

// begin parses the configuration and CNI_ARGS, opens the log and the host
// netns. Everything it returns an error for happens before any change.
// A release (DEL, GC) ignores node-only fields in the configuration, which
// multus may replay from before they were refused (config.ParseRelease).
// Every command ignores node configuration fields it does not know, with
// a warning: after a rollback, node.json may set a field of a later
// release.
func (p *Plugin) begin(args *skel.CmdArgs, releasing bool) (*op, error) {
	var (
		conf    *config.NetConf
		ignored []string
		err     error
	)
	if releasing {
		conf, ignored, err = config.ParseRelease(args.StdinData, p.NodeConfigFile)
	} else {
		conf, err = config.Parse(args.StdinData, p.NodeConfigFile)
	}
	if err != nil {
		return nil, err
	}
	owner, err := config.ParseArgs(args.Args)
	if err != nil {
		return nil, err
	}
	logger, closeLog, err := openLog(conf, p.Stderr)
	if err != nil {
		return nil, types.NewError(types.ErrIOFailure, "open log file", err.Error())
	}
	logger = logger.With("container", args.ContainerID, "ifname", args.IfName, "pod", owner.String())
	if len(ignored) > 0 {
		logger.Warn("node-only fields in the network configuration ignored; the node configuration's values are used",
			"fields", ignored, "nodeConfig", conf.NodeConfigFile)
	}
	conf.WarnNodeUnknown(logger)
	host, err := netdev.Current(conf.SysfsRoot)
	if err != nil {
		closeLog()
		return nil, types.NewError(types.ErrInternal, "open host netns", err.Error())
	}
	o := &op{
		Plugin: p, args: args, conf: conf, owner: owner, log: logger, host: host,
		sys:   sriov.Sysfs{Root: conf.SysfsRoot},
		store: state.Store{Dir: conf.StateDir},
		close: func() { host.Close(); closeLog() },
		mark:  func(string) {},
	}
	o.eng = &release.Engine{
		Store: o.store, Sys: o.sys, Host: host, Log: logger,
		LockTimeout: p.LockTimeout, ProcRoot: p.ProcRoot, DevRoot: p.DevRoot,
		ReleaseIPAM: o.ipamDelRecord, Baseline: conf.Baseline,
		Mark: func(step string) { o.mark(step) },
	}
	return o, nil
}

// lock takes the node-wide lock; busy for too long is "try again later".
func (o *op) lock() (func(), error) {
	unlock, err := o.eng.Lock()
	if errors.Is(err, state.ErrLockTimeout) {
		return nil, types.NewError(types.ErrTryAgainLater, "state lock busy", err.Error())
	}
	if err != nil {
		return nil, types.NewError(types.ErrIOFailure, "take state lock", err.Error())
	}
	return unlock, nil
}

// openPodNS opens CNI_NETNS and refuses anything that is not a pod's own
// netns: a missing path, a file that is not a netns, the host netns.
func (o *op) openPodNS() (*netdev.NS, error) {
	path := o.args.Netns
	if path == "" {
		return nil, types.NewError(types.ErrInvalidNetNS, "CNI_NETNS is empty", "ADD needs the pod's network namespace path")
	}
	pod, err := netdev.Open(path)
	switch {
	case netdev.IsNotExist(err):
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("CNI_NETNS %q does not exist", path), err.Error())
	case netdev.IsNotNS(err):
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("CNI_NETNS %q is not a network namespace", path), err.Error())
	case err != nil:
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("open CNI_NETNS %q", path), err.Error())
	}
	same, err := netdev.Same(pod, o.host)
	if err != nil || same {
		pod.Close()
		if err == nil {
			err = errors.New("refusing to move the host's devices into the host netns")
		}
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("CNI_NETNS %q is the plugin's own (host) network namespace", path), err.Error())
	}
	return pod, nil
}

func openLog(conf *config.NetConf, stderr io.Writer) (*slog.Logger, func(), error) {
	level, err := config.ParseLogLevel(conf.LogLevel)
	if err != nil {
		return nil, nil, err
	}
	w, closeFn := stderr, func() {}
	if conf.LogFile != "" {
		f, err := os.OpenFile(conf.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, nil, err
		}
		w, closeFn = f, func() { f.Close() }
	}
	h := slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
	return slog.New(h).With("plugin", "sriov-passthrough-cni", "cmd", os.Getenv("CNI_COMMAND")), closeFn, nil
}

// print writes the result in the version the request asked for.
func (o *op) print(res types.Result) error {
	out, err := res.GetAsVersion(o.conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "convert result", err.Error())
	}
	// 1.0.0 shares its Go type with 1.1.0, but mtu, pciID and socketPath
	// only exist from 1.1.0 on: a 1.0.0 runtime must not see them.
	if r, ok := out.(*current.Result); ok && o.conf.CNIVersion == "1.0.0" {
		stripped := *r
		stripped.Interfaces = nil
		for _, i := range r.Interfaces {
			c := *i
			c.Mtu, c.PciID, c.SocketPath = 0, "", ""
			stripped.Interfaces = append(stripped.Interfaces, &c)
		}
		out = &stripped
	}
	return out.PrintTo(o.Stdout)
}
