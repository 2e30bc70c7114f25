//go:build k8s

package scenarios

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// 7. A PF that comes back late: the PF leaves the node's netns for a netns
// the test made (as a PF still in a dying pod's netns is away from the
// host) and returns. The agent reports it Missing, then Healthy; the time
// from its return to the node's offer in the API (allocatable, or the
// ResourceSlice) is printed (the kubelet publishes node status
// periodically, so it is not asserted), and so is the time to the agent's
// own log line saying it is healthy again.
func TestAgentPFComesBackLate(t *testing.T) { pfComesBackLate(t, devicePlugin) }

func pfComesBackLate(t *testing.T, a allocation) {
	a.whole(t)
	want := len(pfNames())
	a.offered(t, want, "before")
	pf := pfNames()[0]
	away := "sriovpt-late"
	ip(t, "netns", "add", away)
	t.Cleanup(func() { bringAllHome(t, away) })
	ip(t, "link", "set", pf, "netns", away)
	a.offered(t, want-1, pf+" away from the host")
	if p := agentStatus(t); agentPhase(p, pf) != "missing" {
		t.Fatalf("agent status with %s away: %+v", pf, p)
	}

	back := time.Now()
	ip(t, "-n", away, "link", "set", pf, "netns", strconv.Itoa(os.Getpid()))
	a.offered(t, want, pf+" back on the host")
	api := time.Since(back)
	agent, err := agentLoggedAfter(`msg=PF .*name=`+regexp.QuoteMeta(pf)+` .*healthy=true`, back)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("k8s-e2e: late PF %s back on the host -> %d offered in the API after %.1fs; the agent logged it healthy after %s\n",
		pf, want, api.Seconds(), agent.Round(time.Millisecond))
	ip(t, "netns", "del", away)
	a.runJob(t, 2, "after-late")
}

// 8. The agent killed (SIGKILL, as a crash) while a job holds a PF: its
// container restarts, allocatable is right again, the job keeps its PF,
// and once the job is deleted every device is back.
func TestAgentKilledLosesNothing(t *testing.T) {
	requireNodeWhole(t)
	want := len(pfNames())
	held := runJob(t, 1, "agent-killed")
	killAgent(t)
	waitAllocatable(t, want, "after the agent restart")
	if got := checkJob(t, "agent-killed", 1); !slices.Equal(got, held) {
		t.Fatalf("after the agent restart the job holds %v, had %v", got, held)
	}
	deleteJobs(t)
	waitAllocatable(t, want, "after the job")
}

// 9. A global address on a free PF makes it the node's uplink: the agent
// stops advertising it; with the address gone it is advertised again.
func TestAgentUplinkLeavesAllocatable(t *testing.T) {
	requireNodeWhole(t)
	want := len(pfNames())
	waitAllocatable(t, want, "before")
	pf := pfNames()[len(pfNames())-1]
	addr := "198.51.100.7/24" // documentation range, only on the node's netns
	ip(t, "addr", "add", addr, "dev", pf)
	t.Cleanup(func() { _ = exec.Command("ip", "addr", "del", addr, "dev", pf).Run() })
	start := time.Now()
	waitAllocatable(t, want-1, pf+" an uplink")
	fmt.Printf("k8s-e2e: %s given %s -> allocatable %d in the API after %.1fs\n", pf, addr, want-1, time.Since(start).Seconds())
	if p := agentStatus(t); agentPhase(p, pf) != "ineligible" {
		t.Fatalf("agent status with %s an uplink: %+v", pf, p)
	}
	start = time.Now()
	ip(t, "addr", "del", addr, "dev", pf)
	waitAllocatable(t, want, pf+" no longer an uplink")
	fmt.Printf("k8s-e2e: address removed -> allocatable %d in the API after %.1fs\n", want, time.Since(start).Seconds())
}

func waitAllocatable(t *testing.T, want int, when string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("allocatable prow/sriov = %d %s", want, when), 2*time.Minute, func() (bool, error) {
		n, err := allocatableSRIOV()
		return n == want, err
	})
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	ipOut(t, args...)
}

func agentPhase(byPCI map[string]agentPF, name string) string {
	for _, p := range byPCI {
		if p.Name == name {
			return p.Phase
		}
	}
	return ""
}

// agentLoggedAfter finds, in the agent's log, the first line at or after
// since that matches the pattern, and returns how long after since it
// came; -1 if there is none. A kubelet that just restarted serves logs
// only after a while: that is an error to retry.
func agentLoggedAfter(pattern string, since time.Time) (time.Duration, error) {
	pod, err := kubectlErr(nil, "-n", "sriov-passthrough-cni", "get", "pod", "-o", "jsonpath={.items[0].metadata.name}")
	if err != nil {
		return -1, err
	}
	out, err := kubectlErr(nil, "-n", "sriov-passthrough-cni", "logs", strings.TrimSpace(pod), "-c", "agent")
	if err != nil {
		return -1, err
	}
	re := regexp.MustCompile(`^time=(\S+) .*` + pattern)
	for _, line := range strings.Split(out, "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if at, err := time.Parse(time.RFC3339Nano, m[1]); err == nil && !at.Before(since) {
			return at.Sub(since), nil
		}
	}
	return -1, nil
}

func agentRestarts(t *testing.T, pod string) int {
	t.Helper()
	out := kubectl(t, nil, "-n", "sriov-passthrough-cni", "get", "pod", pod, "-o",
		`jsonpath={.status.containerStatuses[?(@.name=="agent")].restartCount}`)
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("agent restart count %q: %v", out, err)
	}
	return n
}

// agentPid finds the running agent (hostPID: it is in the node's pid
// namespace, where this test runs): the process whose command is the
// agent binary with -install-node-config, not a `status` exec. On a DRA
// node the agent has exec'd sriov-passthrough-dra, with the same pid and
// arguments.
func agentPid(t *testing.T) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		agent := strings.HasSuffix(args[0], "sriov-passthrough-agent") || strings.HasSuffix(args[0], "sriov-passthrough-dra")
		if agent && slices.ContainsFunc(args, func(a string) bool {
			return strings.HasPrefix(a, "-install-node-config")
		}) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	t.Fatal("no agent process found")
	return 0
}
