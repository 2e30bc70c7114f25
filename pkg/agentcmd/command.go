// Package agentcmd is the node agent's command line, shared by its two
// binaries: sriov-passthrough-agent, the kubelet device plugin of
// prow/sriov, and sriov-passthrough-dra, the same agent that can also run
// as a DRA kubelet plugin. The DRA mode needs the Kubernetes API client
// (tens of MB), which the device-plugin agent does not carry: its binary
// is built without it, and on a node whose node.json says allocation dra
// it hands its process to sriov-passthrough-dra (exec, same arguments), so
// the DaemonSet's command is the same in both modes and node.json alone
// chooses. `status` shows who holds which PF in either.
package agentcmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/agent"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
)

// DRADriverName is the DRA driver the agent is in its DRA mode (the
// DeviceClass's selector and the ResourceSlices' driver); pkg/dra's
// DriverName, which this package does not import.
const DRADriverName = "sriov-passthrough.kubevirt.io"

// DRABinary is the agent built with its DRA mode, installed next to
// sriov-passthrough-agent.
const DRABinary = "sriov-passthrough-dra"

// Command is one of the agent's binaries.
type Command struct {
	// Name is the binary's name, in usage, logs and errors.
	Name    string
	Version string
	// DRA runs the agent as a DRA kubelet plugin; nil in a binary built
	// without it, which execs DRABinary when node.json says allocation dra.
	DRA DRAMode
}

// DRAMode makes the DRA kubelet plugin that serves what the agent a
// publishes (it sets a.Publish). The Runner also judges readiness.
type DRAMode func(o Options, a *agent.Agent, log *slog.Logger) (DRARunner, error)

// DRARunner is the DRA kubelet plugin: it runs until its context ends, and
// is ready once the kubelet registered it.
type DRARunner interface {
	agent.Runner
	Ready() error
}

// Options are the command's flags.
type Options struct {
	nodeConfig, installFrom, hostRoot string
	Resource, pluginDir, socket       string
	netnsDir, metricsAddr, output     string
	healthSocket                      string
	// NodeName, PodUID, CDIDir, PluginsRegistry and DRAPluginDir are the
	// DRA mode's: this node's name (its ResourceSlice), the agent pod's UID
	// (its sockets during a rolling update), where the runtime reads CDI
	// specs, the kubelet's plugin registration directory and the DRA
	// plugin's socket directory.
	NodeName, PodUID, CDIDir      string
	PluginsRegistry, DRAPluginDir string
	resync, livenessStall         time.Duration
	checkNamespaces               bool
}

// Main runs the command with args (os.Args[1:]) and returns its exit code.
func (c Command) Main(args []string) int {
	all := args
	status := len(args) > 0 && args[0] == "status"
	if status {
		args = args[1:]
	}
	probe := len(args) > 1 && args[0] == "probe"
	var probeWhat string
	if probe {
		probeWhat, args = args[1], args[2:]
	}
	var o Options
	fs, showVersion := newFlags(c.Name, &o)
	_ = fs.Parse(args)
	if *showVersion {
		fmt.Printf("%s %s\n", c.Name, c.Version)
		return 0
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("agent", c.Name)
	var err error
	switch {
	case probe:
		err = runProbe(o.healthSocket, probeWhat)
	case status:
		err = runStatus(o)
	default:
		err = c.run(o, all, log)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", c.Name, err)
		return 1
	}
	return 0
}

func newAgent(o Options, log *slog.Logger) (*agent.Agent, error) {
	conf, err := config.NodeConf(filepath.Join(o.hostRoot, o.nodeConfig))
	if err != nil {
		return nil, err
	}
	// The plugin reads the same file and ignores the same fields.
	conf.WarnNodeUnknown(log)
	return &agent.Agent{Conf: conf, HostRoot: o.hostRoot, NetnsDir: o.netnsDir, JudgeNetns: agent.CanSeeNetns,
		Resync: o.resync, Log: log}, nil
}

func runStatus(o Options) error {
	if o.output != "" && o.output != "json" {
		return fmt.Errorf("-o %q: want json or nothing", o.output)
	}
	a, err := newAgent(o, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	pfs, err := a.Look()
	if err != nil {
		return err
	}
	return agent.WriteStatus(os.Stdout, pfs, o.output == "json")
}

func (c Command) run(o Options, args []string, log *slog.Logger) error {
	if o.installFrom != "" {
		if err := installFile(o.installFrom, filepath.Join(o.hostRoot, o.nodeConfig)); err != nil {
			return err
		}
	}
	a, err := newAgent(o, log)
	if err != nil {
		return err
	}
	allocation := a.Conf.AllocationOf(o.NodeName)
	dra := allocation == config.AllocationDRA
	if dra && c.DRA == nil {
		return execDRA(args, log)
	}
	log.Info("starting", "version", c.Version, "resource", o.Resource, "node", o.NodeName, "allocation", allocation, "stateDir", a.Conf.StateDir,
		"sysfsRoot", a.Conf.SysfsRoot, "pfNames", a.Conf.PFNames, "reservedFile", a.Conf.ReservedFile(), "requireDeviceID", a.Conf.RequireDeviceID)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if o.checkNamespaces {
		// A kubelet restarting may take a while to listen again.
		if err := agent.CheckNodeNamespaces(ctx, o.pluginDir, 2*time.Minute); err != nil {
			return fmt.Errorf("refusing to start: %w", err)
		}
		log.Info("in the kubelet's pid and network namespaces")
	}
	health := &agent.Health{Agent: a, Stall: o.livenessStall, Started: time.Now()}
	var srv agent.Runner
	if dra {
		p, err := c.DRA(o, a, log)
		if err != nil {
			return err
		}
		srv, health.Registration = p, p
	} else {
		dp := agent.NewDevicePlugin(o.Resource, log)
		a.Publish = dp.Update
		s := &agent.Server{Dir: o.pluginDir, Socket: o.socket, Plugin: dp, Log: log}
		srv, health.Server = s, s
	}
	if o.healthSocket != "" {
		if err := serveHealth(ctx, o.healthSocket, health); err != nil {
			return err
		}
	}
	if o.metricsAddr != "" {
		a.Metrics = &agent.Metrics{}
		if err := serveMetrics(ctx, o.metricsAddr, a.Metrics, health); err != nil {
			return err
		}
	}
	// Returns once both have stopped and the socket is gone.
	return agent.Run(ctx, a, srv)
}

// execDRA replaces this process, the device-plugin agent, with DRABinary
// from the same directory and the same arguments: node.json says
// allocation dra. The process keeps its pid, so the container and its
// probes see one agent.
func execDRA(args []string, log *slog.Logger) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("node.json's allocation for this node is dra: find %s next to this binary: %w", DRABinary, err)
	}
	bin := filepath.Join(filepath.Dir(self), DRABinary)
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("node.json's allocation for this node is dra, and this agent serves only the device plugin: "+
			"its DRA mode is %s, not found next to it (%w); use an image that has it, or switch the node back in node.json", DRABinary, err)
	}
	log.Info("allocation for this node is dra: handing over to "+DRABinary, "path", bin)
	err = syscall.Exec(bin, append([]string{bin}, args...), os.Environ())
	return fmt.Errorf("exec %s: %w", bin, err)
}

func serveMetrics(ctx context.Context, addr string, m *agent.Metrics, health *agent.Health) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m)
	mux.Handle("/readyz", health)
	mux.Handle("/livez", health)
	serveHTTP(ctx, l, mux)
	return nil
}

// serveHealth answers the probes on a unix socket, replacing one an
// earlier run left.
func serveHealth(ctx context.Context, path string, health *agent.Health) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("health socket: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("health socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("health socket: %w", err)
	}
	serveHTTP(ctx, l, health)
	return nil
}

// runProbe asks the running agent whether it is ready or live, and fails
// with its reason when it is not.
func runProbe(socket, what string) error {
	if what != "ready" && what != "live" {
		return fmt.Errorf("probe %q: want ready or live", what)
	}
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
	resp, err := c.Get("http://agent/" + what + "z")
	if err != nil {
		return fmt.Errorf("probe %s: %w", what, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("not %s: %s", what, strings.TrimSpace(string(body)))
	}
	return nil
}

func serveHTTP(ctx context.Context, l net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); srv.Close() }()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("http server", "addr", l.Addr().String(), "error", err)
		}
	}()
}

// installFile copies src over dst atomically (temp file, fsync, rename),
// so the plugin never reads half a node configuration. It refuses what
// the plugin would refuse (a known field of the wrong type); fields this
// release does not know are installed as they are, as the ConfigMap may
// be written for a later release, and newAgent names them in the log.
func installFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("install node configuration: %w", err)
	}
	if _, err := config.LoadNodeBytes(data); err != nil {
		return fmt.Errorf("install node configuration from %s: %w", src, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".node-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := errors.Join(tmp.Chmod(0o644), tmp.Sync(), tmp.Close()); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// usage is -h and --help: the subcommands, then every flag.
func usage(name string, fs *flag.FlagSet) {
	w := fs.Output()
	fmt.Fprintf(w, `usage:
  %[1]s [flags]
      run the node agent (the DaemonSet's agent container)
  %[1]s status [-o json] [flags]
      who holds which PF on this node, and why a PF is not free
  %[1]s probe ready|live [flags]
      ask a running agent over -health-socket (the kubelet's exec probes)

flags:
`, name)
	fs.PrintDefaults()
}

// newFlags defines every flag into o; the bool is -version.
func newFlags(name string, o *Options) (*flag.FlagSet, *bool) {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	fs.StringVar(&o.nodeConfig, "node-config", config.DefaultNodeConfigFile, "the node configuration file the plugin also reads")
	fs.StringVar(&o.installFrom, "install-node-config", "", "copy this file (the DaemonSet's ConfigMap) to -node-config under -host-root first")
	fs.StringVar(&o.hostRoot, "host-root", "", "where the host's files are mounted: prefixes -node-config and the reserved-interfaces file")
	fs.StringVar(&o.Resource, "resource-name", agent.DefaultResourceName, "the extended resource to advertise")
	fs.StringVar(&o.pluginDir, "device-plugin-dir", "/var/lib/kubelet/device-plugins", "the kubelet's device-plugin directory")
	fs.StringVar(&o.socket, "socket", "sriov-passthrough.sock", "the stem of the plugin's socket names in -device-plugin-dir (each socket adds a run token and a number: <stem>.<token>-<n>.sock)")
	// The DRA mode's flags are the lean agent's too: it hands the same
	// arguments to sriov-passthrough-dra.
	fs.StringVar(&o.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name, whose ResourceSlice the agent publishes (allocation dra)")
	fs.StringVar(&o.PodUID, "pod-uid", os.Getenv("POD_UID"), "the agent pod's UID: its DRA sockets are named after it, so the old and the new pod of a rolling update both serve (allocation dra)")
	fs.StringVar(&o.CDIDir, "cdi-dir", "/var/run/cdi", "where the container runtime reads CDI specs (allocation dra)")
	fs.StringVar(&o.PluginsRegistry, "kubelet-plugins-registry", "/var/lib/kubelet/plugins_registry", "the kubelet's plugin registration directory (allocation dra)")
	fs.StringVar(&o.DRAPluginDir, "dra-plugin-dir", "/var/lib/kubelet/plugins/"+DRADriverName, "the directory of the DRA plugin's socket (allocation dra)")
	fs.StringVar(&o.netnsDir, "netns-dir", "/var/run/netns", "the host's netns directory, watched for pods going away")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9809); off when empty")
	// The kubelet's probes are exec probes (`probe ready`, `probe live`)
	// that ask the agent over a unix socket in the container's own
	// directory: with hostNetwork an httpGet probe goes to the node's IP,
	// so the agent would have to listen on the node's network, on a port
	// that may clash with anything else on the node.
	fs.StringVar(&o.healthSocket, "health-socket", "/run/sriov-passthrough-agent/health.sock", "serve /readyz and /livez on this unix socket (for `probe`); off when empty")
	fs.DurationVar(&o.livenessStall, "liveness-stall", 2*time.Minute, "live only while the agent's loop turned within this")
	fs.DurationVar(&o.resync, "resync", 30*time.Second, "full look at the node at least this often (events drive the rest)")
	fs.StringVar(&o.output, "o", "", "status output: \"\" for a table, \"json\"")
	fs.BoolVar(&o.checkNamespaces, "check-node-namespaces", true,
		"refuse to start unless in the kubelet's pid and network namespaces (hostPID, hostNetwork); off only for tests without a kubelet")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() { usage(name, fs) }
	return fs, showVersion
}
