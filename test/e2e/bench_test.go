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
// It ends with one line of medians and ratios, which `make bench-vm`
// prints per kernel.
func BenchmarkAddDel(b *testing.B) {
	f := pfs[0]
	var log []byte
	b.Run("plugin", func(b *testing.B) {
		rounds["plugin"], log = benchExec(b, filepath.Join(pluginDir, "sriov-passthrough-cni"), f)
	})
	b.Run("floor-inproc", func(b *testing.B) {
		names := []string{baseline[f.PCI].Name}
		for _, v := range vfsOf[f.PCI] {
			names = append(names, baseline[v].Name)
		}
		rounds["floor-inproc"] = eachPod(b, func(path string) error {
			if err := floor.Add(path, "net1", names); err != nil {
				return err
			}
			return floor.Del(path, "net1", names)
		})
	})
	floor := os.Getenv("E2E_FLOOR")
	if floor != "" {
		b.Run("floor-exec", func(b *testing.B) { rounds["floor-exec"], _ = benchExec(b, floor, f) })
	}
	p, in, ex := median(rounds["plugin"]), median(rounds["floor-inproc"]), median(rounds["floor-exec"])
	line := fmt.Sprintf("bench-vm: kernel=%s rounds=%d plugin_ms=%.0f floor_inproc_ms=%.0f", kernelRelease(), len(rounds["plugin"]), msOf(p), msOf(in))
	if in > 0 {
		line += fmt.Sprintf(" vs_inproc=%.2f", float64(p)/float64(in))
	}
	if ex > 0 {
		line += fmt.Sprintf(" floor_exec_ms=%.0f vs_exec=%.2f", msOf(ex), float64(p)/float64(ex))
	}
	fmt.Println(line)
	printProfile(b, log, f)
}

// rounds keeps each method's round times from the last run of its
// benchmark (the testing package runs each once with b.N = 1 first).
var rounds = map[string][]time.Duration{}

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

// eachPod runs op b.N times, each with a fresh netns made outside the
// timer, and returns each round's time.
func eachPod(b *testing.B, op func(path string) error) []time.Duration {
	b.Helper()
	var times []time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		name := fmt.Sprintf("e2e-bench%d", i)
		if err := runQuiet("ip", "netns", "add", name); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		err := op("/var/run/netns/" + name)
		times = append(times, time.Since(t0))
		b.StopTimer()
		_ = runQuiet("ip", "netns", "delete", name)
		if err != nil {
			b.Fatal(err)
		}
		if err := diffHost(); err != nil {
			b.Fatalf("after round %d: %v", i, err)
		}
		b.StartTimer()
	}
	return times
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

// benchExec times ADD+DEL of bin, exec'd as a runtime does, and returns
// the round times and the plugin's log (at debug level: its step times).
func benchExec(b *testing.B, bin string, f pf) ([]time.Duration, []byte) {
	node, logFile, conf := benchNode(b, f)
	times := eachPod(b, func(path string) error {
		for _, cmd := range []string{"ADD", "DEL"} {
			if out, err := pluginCmd(bin, cmd, path, node, conf).CombinedOutput(); err != nil {
				return fmt.Errorf("%s %s: %w: %s", filepath.Base(bin), cmd, err, out)
			}
		}
		return nil
	})
	log, _ := os.ReadFile(logFile) // the floor writes none
	return times, log
}

// printProfile prints, for ADD and DEL apart, the median time of each step
// the plugin logged at debug level over the timed rounds (stepClock in
// pkg/plugin), then the syscalls of one more ADD and DEL under strace -c:
// in all, and the netlink requests among them (the plugin's only sockets
// are netlink's, and every request is one sendto or sendmsg).
func printProfile(b *testing.B, log []byte, f pf) {
	b.Helper()
	for _, cmd := range []string{"ADD", "DEL"} {
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
			fmt.Printf("bench-vm: kernel=%s %s steps: none logged (a plugin from before the step timing)\n", kernelRelease(), cmd)
			continue
		}
		var out []string
		for _, name := range order {
			out = append(out, fmt.Sprintf("%s=%.1f", name, msOf(median(steps[name]))))
		}
		fmt.Printf("bench-vm: kernel=%s %s steps (median ms of %d): %s\n", kernelRelease(), cmd, len(steps[order[0]]), strings.Join(out, " "))
	}
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
