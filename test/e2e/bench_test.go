//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubevirt/sriov-passthrough-cni/test/e2e/floor"
)

// BenchmarkAddDel times one ADD + DEL of a PF with its 7 VFs on the real
// igb devices (run it with test/vm/run.sh bench). Under TCG every number is
// slow; compare the lines of one run with each other, never across runs.
//
//   - plugin: the plugin binary, exec'd as a runtime does.
//   - floor-inproc: in process, the least the kernel must do: move the 8
//     netdevs into the pod, rename the PF and set it up, and back.
//   - floor-exec: E2E_FLOOR (test/e2e/floorcni, which the harness builds),
//     the same kernel work exec'd exactly like the plugin (CNI environment,
//     config on stdin, names from sysfs): the floor with two process
//     starts in it.
//
// Each round runs every method once, in an order that rotates from round
// to round, so a guest that slows down over the run slows all of them
// alike; ratios are the medians of each round's ratio. The last run (b.N
// above 1: -test.benchtime Nx runs once with b.N = 1 first) ends with one
// line of medians and ratios, which make bench-vm prints per kernel, then
// the profile.
func BenchmarkAddDel(b *testing.B) {
	f := pfs[0]
	names := []string{baseline[f.PCI].Name}
	for _, v := range vfsOf[f.PCI] {
		names = append(names, baseline[v].Name)
	}
	node, logFile, conf := benchNode(b, f)
	type method struct {
		name string
		op   func(path string) error
	}
	methods := []method{
		{"plugin", func(path string) error {
			return execAddDel(filepath.Join(pluginDir, "sriov-passthrough-cni"), path, node, conf)
		}},
		{"floor-inproc", func(path string) error {
			up, err := floor.Add(path, "net1", names)
			if err != nil {
				return err
			}
			return floor.Del(path, "net1", names, up)
		}},
	}
	if bin := os.Getenv("E2E_FLOOR"); bin != "" {
		fnode, _, fconf := benchNode(b, f)
		methods = append(methods, method{"floor-exec", func(path string) error { return execAddDel(bin, path, fnode, fconf) }})
	}
	// Another build of the plugin (an older commit), timed in the same
	// rounds: a before/after that one run's noise cannot fake.
	if bin := os.Getenv("E2E_PLUGIN_BASE"); bin != "" {
		bnode, _, bconf := benchNode(b, f)
		methods = append(methods, method{"plugin-base", func(path string) error { return execAddDel(bin, path, bnode, bconf) }})
	}
	times := map[string][]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range methods {
			m := methods[(i+j)%len(methods)]
			times[m.name] = append(times[m.name], inFreshPod(b, m.op))
		}
	}
	b.StopTimer()
	for _, m := range methods {
		b.ReportMetric(msOf(median(times[m.name])), m.name+"-ms")
	}
	if b.N == 1 {
		return
	}
	// On a line of its own: the testing package has printed the
	// benchmark's name and waits to print its numbers after it.
	line := fmt.Sprintf("\nbench-vm: kernel=%s rounds=%d plugin_ms=%.0f", kernelRelease(), b.N, msOf(median(times["plugin"])))
	for _, floor := range []string{"floor-inproc", "floor-exec", "plugin-base"} {
		if len(times[floor]) == 0 {
			continue
		}
		med, lo, hi := pairedRatio(times["plugin"], times[floor])
		short := strings.TrimPrefix(strings.TrimPrefix(floor, "floor-"), "plugin-")
		name := "floor_" + short
		if short == "base" {
			name = "base"
		}
		line += fmt.Sprintf(" %s_ms=%.0f vs_%s=%.2f (quartiles %.2f-%.2f)", name, msOf(median(times[floor])), short, med, lo, hi)
	}
	fmt.Println(line)
	log, err := os.ReadFile(logFile)
	if err != nil {
		b.Fatal(err)
	}
	printProfile(b, log, f)
}

// pairedRatio is the median and the quartiles of a[i]/b[i].
func pairedRatio(a, b []time.Duration) (med, lo, hi float64) {
	var r []float64
	for i := range min(len(a), len(b)) {
		r = append(r, float64(a[i])/float64(b[i]))
	}
	slices.Sort(r)
	n := len(r)
	return r[n/2], r[n/4], r[(3*n)/4]
}

// inFreshPod runs op on a fresh pod netns made outside the timer, checks
// that the host is as before, and returns op's time.
func inFreshPod(b *testing.B, op func(path string) error) time.Duration {
	b.Helper()
	b.StopTimer()
	defer b.StartTimer()
	const name = "e2e-bench"
	if err := runQuiet("ip", "netns", "add", name); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	t0 := time.Now()
	err := op("/var/run/netns/" + name)
	took := time.Since(t0)
	b.StopTimer()
	_ = runQuiet("ip", "netns", "delete", name)
	if err != nil {
		b.Fatal(err)
	}
	if err := diffHost(); err != nil {
		b.Fatal(err)
	}
	return took
}

// execAddDel runs bin's ADD then DEL on the pod netns at path.
func execAddDel(bin, path, node string, conf []byte) error {
	for _, cmd := range []string{"ADD", "DEL"} {
		if out, err := pluginCmd(bin, cmd, path, node, conf).CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %w: %s", filepath.Base(bin), cmd, err, out)
		}
	}
	return nil
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// benchNode sets up a node for a benchmarked plugin: a node config whose
// state dir and log are in a fresh temporary dir, and the network config
// that pins PF f. The log is at debug level (the plugin's step times).
func benchNode(b *testing.B, f pf) (node, logFile string, conf []byte) {
	b.Helper()
	dir := b.TempDir()
	node, logFile = filepath.Join(dir, "node.json"), filepath.Join(dir, "log")
	writeNode(b, node, map[string]any{"stateDir": filepath.Join(dir, "state"), "logFile": logFile, "logLevel": "debug"})
	conf, err := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": netName, "type": "sriov-passthrough-cni", "pciBusID": f.PCI})
	if err != nil {
		b.Fatal(err)
	}
	return node, logFile, conf
}

// pluginCmd is bin run as a runtime runs a plugin: command cmd on pod
// netns path, CNI_IFNAME net1, the config on stdin. wrap, if any, goes
// before bin (strace).
func pluginCmd(bin, cmd, path, node string, conf []byte, wrap ...string) *exec.Cmd {
	c := exec.Command(bin)
	if len(wrap) > 0 {
		c = exec.Command(wrap[0], append(wrap[1:], bin)...)
	}
	c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=bench", "CNI_NETNS=" + path,
		"CNI_IFNAME=net1", "CNI_PATH=" + pluginDir, "PATH=/bin:/usr/bin", nodeEnv(node)}
	c.Stdin = bytes.NewReader(conf)
	return c
}

// printProfile prints, for ADD and DEL apart, the median time of each step
// the plugin logged at debug level over the timed rounds (stepClock in
// pkg/plugin), then the syscalls of one more ADD and DEL under strace -c:
// in all, and the netlink requests among them (the plugin's only sockets
// are netlink's, and every request is one sendto or sendmsg).
func printProfile(b *testing.B, log []byte, f pf) {
	b.Helper()
	for _, cmd := range []string{"ADD", "DEL"} {
		printSteps(b, cmd, cmd, log)
	}
	printStarts(b)
	strace, err := exec.LookPath("strace")
	if err != nil {
		fmt.Println("bench-vm: no strace in the VM; syscalls not counted")
		return
	}
	node, _, conf := benchNode(b, f)
	dir := b.TempDir()
	b.StopTimer()
	defer b.StartTimer()
	if err := runQuiet("ip", "netns", "add", "e2e-profile"); err != nil {
		b.Fatal(err)
	}
	defer runQuiet("ip", "netns", "delete", "e2e-profile")
	for _, cmd := range []string{"ADD", "DEL"} {
		counts := filepath.Join(dir, cmd+".strace")
		c := pluginCmd(filepath.Join(pluginDir, "sriov-passthrough-cni"), cmd, "/var/run/netns/e2e-profile", node, conf, strace, "-f", "-c", "-o", counts)
		if out, err := c.CombinedOutput(); err != nil {
			b.Fatalf("strace %s: %v: %s", cmd, err, out)
		}
		total, netlink, err := syscallCounts(counts)
		if err != nil {
			b.Fatal(err)
		}
		fmt.Printf("bench-vm: kernel=%s %s syscalls=%d netlink_requests=%d\n", kernelRelease(), cmd, total, netlink)
	}
	if err := diffHost(); err != nil {
		b.Fatalf("after the profile: %v", err)
	}
}

// printStarts prints the median wall time of a process that starts and
// exits at once, for the plugin (CNI_COMMAND=VERSION: its package inits,
// the runtime's start and exit, the page faults of its binary, which
// emulation makes dear) and for the exec'd floor (E2E_FLOOR, asked for a
// command it refuses): what of the plugin's time is neither a step nor the
// kernel's.
func printStarts(b *testing.B) {
	b.Helper()
	bins := map[string]string{"plugin": filepath.Join(pluginDir, "sriov-passthrough-cni")}
	if f := os.Getenv("E2E_FLOOR"); f != "" {
		bins["floor"] = f
	}
	const rounds = 11
	times := map[string][]time.Duration{}
	for range rounds {
		for name, bin := range bins {
			c := exec.Command(bin)
			c.Env = []string{"CNI_COMMAND=VERSION", "PATH=/bin:/usr/bin"}
			t0 := time.Now()
			_ = c.Run() // the floor refuses VERSION: only its start and exit count
			times[name] = append(times[name], time.Since(t0))
		}
	}
	line := fmt.Sprintf("bench-vm: kernel=%s process start+exit (median ms of %d):", kernelRelease(), rounds)
	for _, name := range []string{"plugin", "floor"} {
		if len(times[name]) > 0 {
			line += fmt.Sprintf(" %s=%.1f", name, msOf(median(times[name])))
		}
	}
	fmt.Println(line)
}

// printSteps prints the median time of each step of the plugin's cmd
// that its debug log holds, under the label what.
func printSteps(b *testing.B, what, cmd string, log []byte) {
	b.Helper()
	steps := map[string][]time.Duration{}
	var order []string
	for _, line := range strings.Split(string(log), "\n") {
		if !strings.Contains(line, "msg=steps") || !strings.Contains(line, " cmd="+cmd+" ") {
			continue
		}
		_, list, ok := strings.Cut(line, `steps="`)
		if !ok {
			continue
		}
		list, _, _ = strings.Cut(list, `"`)
		if _, total, ok := strings.Cut(line, " total="); ok {
			list = "total=" + strings.Fields(total)[0] + " " + list
		}
		for _, kv := range strings.Fields(list) {
			name, v, _ := strings.Cut(kv, "=")
			d, err := time.ParseDuration(v)
			if err != nil {
				b.Fatalf("step %q in %q: %v", kv, line, err)
			}
			if _, seen := steps[name]; !seen {
				order = append(order, name)
			}
			steps[name] = append(steps[name], d)
		}
	}
	if len(order) == 0 {
		fmt.Printf("bench-vm: kernel=%s %s steps: none logged (a plugin from before the step timing)\n", kernelRelease(), what)
		return
	}
	var out []string
	for _, name := range order {
		out = append(out, fmt.Sprintf("%s=%.1f", name, msOf(median(steps[name]))))
	}
	fmt.Printf("bench-vm: kernel=%s %s steps (median ms of %d): %s\n", kernelRelease(), what, len(steps[order[0]]), strings.Join(out, " "))
}

// syscallCounts reads strace -c's table: the total calls, and the calls of
// sendto and sendmsg.
func syscallCounts(path string) (total, netlink int, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		calls, err := strconv.Atoi(f[3])
		if err != nil {
			continue // the header and the rules
		}
		switch f[len(f)-1] {
		case "total":
			total = calls
		case "sendto", "sendmsg":
			netlink += calls
		}
	}
	if total == 0 {
		return 0, 0, fmt.Errorf("%s: no total line:\n%s", path, b)
	}
	return total, netlink, nil
}
