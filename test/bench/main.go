// Command bench measures what a full ADD and DEL of a PF with 0 to 256 VFs
// cost as the runtime sees them (exec of the built plugin with the CNI env
// and stdin), next to containernetworking's host-device called once per
// device, and next to the floor: the same netlink moves and renames done
// in process. Each method runs on the same devices in the same run, in
// rotating order, so the ratios are paired; the machines are noisy, and
// absolute times do not carry over between runs.
//
// It needs root (network namespaces, ifb links). `make bench` builds both
// binaries and runs it; see docs/bench.md.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

func main() {
	var (
		pluginBin = flag.String("plugin", "bin/sriov-passthrough-cni", "the built plugin binary")
		hdBin     = flag.String("host-device", "_output/bench/host-device", "containernetworking host-device binary (\"\" to skip)")
		vfList    = flag.String("vfs", "0,8,32,128", "VF counts to measure on one PF alone (\"\" for none: the -node only); the -node is the 256-VF point")
		runs      = flag.String("runs", "0:41,8:15,32:9,128:5,256:3", "ADD+DEL cycles of the plugin and the floor per VF count (vfs:runs,...; a bare number for all)")
		hdRuns    = flag.String("host-device-runs", "0:9,8:5,32:3,128:2,256:2", "host-device cycles per VF count (it is slow), at most -runs")
		node      = flag.String("node", "8x256", "also a node of PFSxVFS (fake sysfs, all links present) where one PF is handed out (\"\" to skip)")
		nodeRuns  = flag.Int("node-runs", 6, "ADD+DEL cycles of the plugin and the floor on the -node")
		nodeHD    = flag.Int("node-host-device-runs", 2, "host-device cycles on the -node, at most -node-runs")
		agentN    = flag.Int("agent-events", 20, "netlink events to time the node agent on the -node with (0 to skip)")
		out       = flag.String("out", "docs", "directory for bench.png and bench.md (\"\" to skip)")
		compare   = flag.String("compare", "", "a second plugin binary (e.g. an older build) to time next to the first, as plugin-compare")
		inProc    = flag.Bool("inproc", false, "also time the plugin's ADD and DEL in process (no exec), to tell start-up from work")
		replot    = flag.String("replot", "", "write the table, bench.md and bench.png again from a bench.json of an earlier run, measuring nothing")
		wrapCmd   = flag.String("wrap", "", "run plugin binaries under this command, e.g. \"strace -f -c -o /tmp/s\" (profiling only)")
		cpuProf   = flag.String("cpuprofile", "", "write a CPU profile of the bench process to this file: with -inproc it holds the plugin's own ADD and DEL (profiling only)")
	)
	flag.Parse()
	if *replot != "" {
		res, err := load(*replot)
		if err == nil {
			report(os.Stdout, res)
			err = writeDocs(*out, res)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		printSummary(res)
		return
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root to create network namespaces and links")
		os.Exit(2)
	}
	wrap = strings.Fields(*wrapCmd)
	cleanUpOnSignal()
	cfg := benchConfig{plugin: *pluginBin, hostDevice: *hdBin, inProc: *inProc, compare: *compare}
	var err error
	if cfg.vfs, err = parseInts(*vfList); err == nil {
		cfg.runs, err = parseRuns(*runs, cfg.vfs)
	}
	if err == nil {
		cfg.hdRuns, err = parseRuns(*hdRuns, cfg.vfs)
	}
	if err == nil && *node != "" {
		cfg.node, err = parseNode(*node)
		cfg.node.runs, cfg.node.hdRuns, cfg.node.agentEvents = *nodeRuns, min(*nodeHD, *nodeRuns), *agentN
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(2)
		}
		defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
	}
	res, err := run(cfg, os.Stderr)
	if *cpuProf != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	report(os.Stdout, res)
	if *out != "" {
		if err := writeDocs(*out, res); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
	printSummary(res)
}

// printSummary prints the node's line, then the 128-VF line last, as
// before there was a node.
func printSummary(res *results) {
	if s := nodeSummary(res); s != "" {
		fmt.Println(s)
	}
	fmt.Println(summary(res, 128))
}

type benchConfig struct {
	plugin, hostDevice string
	vfs                []int
	runs               map[int]int
	hdRuns             map[int]int
	inProc             bool
	compare            string
	// node, when pfs > 0, is a node of several PFs measured after the
	// single-PF counts.
	node nodeSpec
}

// nodeSpec is a node of pfs PFs of vfs VFs each, and the cycles to run on it.
type nodeSpec struct{ pfs, vfs, runs, hdRuns, agentEvents int }

func parseNode(s string) (nodeSpec, error) {
	a, b, ok := strings.Cut(s, "x")
	pfs, err1 := strconv.Atoi(a)
	vfs, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || pfs < 1 || vfs < 0 {
		return nodeSpec{}, fmt.Errorf("bad -node %q (want PFSxVFS, e.g. 8x256)", s)
	}
	return nodeSpec{pfs: pfs, vfs: vfs}, nil
}

// sample is one ADD+DEL cycle of one method.
type sample struct {
	add, del time.Duration
	rss      int64 // KiB, peak of ADD and DEL
	// cpu is the CPU time of ADD and DEL together (usage).
	cpu time.Duration
}

// point is every sample taken at one VF count, per method name; sample i
// of every method is from round i. pfs is the number of PFs on the node
// (1 but for the -node point).
type point struct {
	vfs, pfs int
	samples  map[string][]sample
	// agent is the node agent's time from each netlink event to its
	// device list update (agentEvents), on the node only.
	agent []time.Duration
}

// results is one bench run.
type results struct {
	cfg    benchConfig
	points []point
	kernel string
	cpus   int
	when   time.Time
	// start is the plugin's bare process cost: exec to exit of a VERSION
	// call, which reads stdin, prints and touches nothing.
	start []time.Duration
	// took is the whole run's wall time, worlds built and torn down
	// included.
	took time.Duration
}

func run(cfg benchConfig, log io.Writer) (*results, error) {
	res := &results{cfg: cfg, kernel: kernelRelease(), cpus: runtime.NumCPU(), when: time.Now().UTC()}
	for range 21 {
		took, err := version(cfg.plugin)
		if err != nil {
			return nil, err
		}
		res.start = append(res.start, took)
	}
	for _, n := range cfg.vfs {
		p, err := measure(cfg, nodeSpec{pfs: 1, vfs: n, runs: cfg.runs[n], hdRuns: cfg.hdRuns[n]}, log)
		if err != nil {
			return nil, fmt.Errorf("%d VFs: %w", n, err)
		}
		res.points = append(res.points, p)
	}
	if cfg.node.pfs > 0 {
		p, err := measure(cfg, cfg.node, log)
		if err != nil {
			return nil, fmt.Errorf("node of %d PFs x %d VFs: %w", cfg.node.pfs, cfg.node.vfs, err)
		}
		res.points = append(res.points, p)
	}
	res.took = time.Since(res.when)
	fmt.Fprintf(log, "bench: measured in %.0fs\n", res.took.Seconds())
	return res, nil
}

// measure builds a world of spec.pfs PFs with spec.vfs VFs each and runs
// every method on its first PF, one cycle of each per round, the order
// rotating from round to round.
func measure(cfg benchConfig, spec nodeSpec, log io.Writer) (point, error) {
	n := spec.vfs
	built := time.Now()
	w, err := newWorld(spec.pfs, n)
	if err != nil {
		return point{}, err
	}
	defer w.close()
	if spec.pfs > 1 {
		fmt.Fprintf(log, "bench: node of %d PFs x %d VFs built in %.1fs\n", spec.pfs, n, time.Since(built).Seconds())
	}
	pm, err := newPluginMethod("plugin", cfg.plugin, w)
	if err != nil {
		return point{}, err
	}
	methods := []method{pm, floorMethod{}}
	if cfg.compare != "" {
		cm, err := newPluginMethod("plugin-compare", cfg.compare, w)
		if err != nil {
			return point{}, err
		}
		methods = append(methods, cm, floorMethod{viaTransit: true})
	}
	if cfg.inProc {
		methods = append(methods, inProcMethod{conf: pm.conf})
	}
	if cfg.hostDevice != "" {
		methods = append(methods, &hostDeviceMethod{bin: cfg.hostDevice})
	}
	p := point{vfs: n, pfs: spec.pfs, samples: map[string][]sample{}}
	hostNames := names(append(w.devices(), w.others...), false)
	podNames := names(w.devices(), true)
	start := time.Now()
	for r := range spec.runs {
		for i := range methods {
			m := methods[(r+i)%len(methods)]
			if m.name() == "host-device" && len(p.samples[m.name()]) >= spec.hdRuns {
				continue
			}
			s, err := cycle(w, m, fmt.Sprintf("bench-%dx%d-%d", spec.pfs, n, r), hostNames, podNames)
			if err != nil {
				return point{}, fmt.Errorf("%s: %w", m.name(), err)
			}
			p.samples[m.name()] = append(p.samples[m.name()], s)
		}
	}
	fmt.Fprintf(log, "bench: %3d VFs (%d PFs): %d rounds in %.1fs\n", n, spec.pfs, spec.runs, time.Since(start).Seconds())
	if spec.agentEvents > 0 && spec.pfs > 1 {
		start = time.Now()
		if p.agent, err = agentEvents(w, fmt.Sprintf("bpf%d", spec.pfs-1), spec.agentEvents); err != nil {
			return point{}, fmt.Errorf("agent: %w", err)
		}
		fmt.Fprintf(log, "bench: agent: %d events in %.1fs\n", spec.agentEvents, time.Since(start).Seconds())
	}
	return p, nil
}

// cycle is one ADD and one DEL into a fresh pod netns, checked before and
// after; only the ADD and DEL themselves are timed.
func cycle(w *world, m method, cid string, hostNames, podNames []string) (sample, error) {
	pod, removePod, err := createNS()
	if err != nil {
		return sample{}, fmt.Errorf("create pod netns: %w", err)
	}
	defer removePod()
	var s sample
	var u usage
	if s.add, u, err = m.add(w, pod, cid); err != nil {
		return s, fmt.Errorf("ADD: %w", err)
	}
	if err := checkNames(pod, "pod after ADD", podNames); err != nil {
		return s, err
	}
	s.rss, s.cpu = u.rssKiB, u.cpu
	if s.del, u, err = m.del(w, pod, cid); err != nil {
		return s, fmt.Errorf("DEL: %w", err)
	}
	s.rss, s.cpu = max(s.rss, u.rssKiB), s.cpu+u.cpu
	if err := checkNames(pod, "pod after DEL", nil); err != nil {
		return s, err
	}
	return s, checkNames(w.host, "host after DEL", hostNames)
}

// version times one VERSION call of the plugin binary.
func version(bin string) (time.Duration, error) {
	cmd := exec.Command(bin)
	cmd.Env = []string{"CNI_COMMAND=VERSION"}
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.1.0"}`)
	start := time.Now()
	out, err := cmd.Output()
	took := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("%s VERSION: %w: %s", bin, err, out)
	}
	return took, nil
}

func names(ds []device, inPod bool) []string {
	var out []string
	for _, d := range ds {
		if inPod {
			out = append(out, d.podName)
		} else {
			out = append(out, d.name)
		}
	}
	return out
}

func parseInts(s string) ([]int, error) {
	var out []int
	if strings.TrimSpace(s) == "" {
		return nil, nil // only the -node
	}
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("bad count %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func parseRuns(s string, vfs []int) (map[int]int, error) {
	runs := map[int]int{}
	if n, err := strconv.Atoi(s); err == nil {
		for _, v := range vfs {
			runs[v] = n
		}
		return runs, nil
	}
	if len(vfs) == 0 {
		return runs, nil
	}
	for _, f := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(f, ":")
		a, err1 := strconv.Atoi(k)
		b, err2 := strconv.Atoi(v)
		if !ok || err1 != nil || err2 != nil || b < 1 {
			return nil, fmt.Errorf("bad runs entry %q (want vfs:runs)", f)
		}
		runs[a] = b
	}
	for _, v := range vfs {
		if runs[v] == 0 {
			return nil, fmt.Errorf("no run count for %d VFs", v)
		}
	}
	return runs, nil
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}
