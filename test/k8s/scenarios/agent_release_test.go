//go:build k8s

package scenarios

import (
	"bytes"
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

// 12. A KubeVirt job moves its PF and VFs on into its kind node's netns
// (here a netns the test made), and its pod is force-deleted while they are
// there. DEL finds none of them in the pod or on the node: the release
// stays pending, the record keeps every device, and the agent reports the
// PF releasing (Unhealthy, so allocatable drops). When the devices come
// back to the node's netns, the agent finishes the release through the
// plugin's release path: the record goes, the PF and VFs are home under
// their own names, the PF is Healthy and the next job gets it. On a real
// node the kernel hands a dying netns's physical devices back to init_net;
// an ifb link would die with the netns instead, so the test moves them
// back. Printed: the time from their return to the agent's log line and to
// allocatable in the API (not asserted: the kubelet publishes node status
// periodically, and the machine is shared).
func TestAgentFinishesAReleaseWhenDevicesComeHome(t *testing.T) {
	requireNodeWhole(t)
	want := len(pfNames())
	waitAllocatable(t, want, "before")
	pf := runJob(t, 1, "kind-job")[0]
	rec := jobRecord(t, "kind-job")
	if rec == nil {
		t.Fatalf("no state record for kind-job; records: %v", stateRecords(t))
	}
	kind := "sriovpt-kind"
	ip(t, "netns", "add", kind)
	t.Cleanup(func() { bringAllHome(t, kind) })
	var moves []string
	for _, d := range rec.Devices {
		moves = append(moves, fmt.Sprintf("link set dev %s netns %s", d.PodName, kind))
	}
	ipBatch(t, []string{"nsenter", "--net=" + rec.Netns, "ip"}, moves)
	requireAllIn(t, kind, pf, "job's devices moved on into the kind node's netns")

	kubectl(t, nil, "delete", "pod", "kind-job", "--grace-period=0", "--force", "--wait=false")
	deleted := time.Now()
	// The runtime removes the pod's netns once its DEL has returned.
	waitFor(t, "kind-job's netns removed", 2*time.Minute, func() (bool, error) {
		_, err := os.Stat(rec.Netns)
		return os.IsNotExist(err), nil
	})
	rec = jobRecord(t, "kind-job")
	if rec == nil || rec.Phase != "releasing" || slices.ContainsFunc(rec.Devices, func(d recordDevice) bool { return d.Released }) {
		t.Fatalf("after DEL with every device away, record %+v, want releasing with every device pending", rec)
	}
	waitAllocatable(t, want-1, pf+" release pending")
	fmt.Printf("k8s-e2e: kind job force-deleted with its PF away -> allocatable %d in the API after %.1fs\n", want-1, time.Since(deleted).Seconds())
	status := agentStatus(t)
	if agentPhase(status, pf) != "releasing" {
		t.Fatalf("agent status with %s's release pending: %+v", pf, status)
	}
	requireAllIn(t, kind, pf, "nothing lost while the release is pending")

	back := time.Now()
	moveAllHome(t, kind)
	requireNodeWhole(t)
	released := waitAgentLogged(t, `msg="released PF; record removed" .*cmd=reconcile .*hostName=`+regexp.QuoteMeta(pf), back)
	healthy := waitAgentLogged(t, `msg=PF .*name=`+regexp.QuoteMeta(pf)+` .*healthy=true`, back)
	waitAllocatable(t, want, pf+" released by the agent")
	api := time.Since(back)
	if p := agentStatus(t); agentPhase(p, pf) != "free" {
		t.Fatalf("agent status after the release: %+v", p)
	}
	fmt.Printf("k8s-e2e: %s and its VFs back on the node -> the agent released them after %s and logged %s healthy after %s; allocatable %d in the API after %.1fs\n",
		pf, released.Round(time.Millisecond), pf, healthy.Round(time.Millisecond), want, api.Seconds())
	ip(t, "netns", "del", kind)
	runJob(t, 2, "after-kind")
}

// record is the part of the plugin's state record (pkg/state.Record) the
// scenarios read.
type record struct {
	Netns string `json:"netns"`
	Phase string `json:"phase"`
	Pod   struct {
		Name string `json:"name"`
	} `json:"pod"`
	Devices []recordDevice `json:"devices"`
}

type recordDevice struct {
	OriginalName string `json:"originalName"`
	PodName      string `json:"podName"`
	Released     bool   `json:"released"`
}

// jobRecord returns the record of the job pod's attachment, nil if none.
func jobRecord(t *testing.T, pod string) *record {
	t.Helper()
	for _, name := range stateRecords(t) {
		data, err := os.ReadFile(filepath.Join(stateDir, name))
		if err != nil {
			t.Fatal(err)
		}
		var r record
		decodeJSON(t, string(data), &r)
		if r.Pod.Name == pod {
			return &r
		}
	}
	return nil
}

// requireAllIn asserts that pf and every VF of it are in the named netns,
// the PF under the pod's name for it and each VF under its own.
func requireAllIn(t *testing.T, netns, pf, what string) {
	t.Helper()
	in := parseLinks(ipOut(t, "-n", netns, "-o", "link"))
	for _, d := range devices {
		if d.pf != pf {
			continue
		}
		l, ok := in[d.mac]
		if !ok || (d.name != pf && l.name != d.name) {
			t.Fatalf("%s: %s missing or renamed in netns %s: %v", what, d.name, netns, in)
		}
	}
	t.Logf("%s: %s and its VFs are in netns %s", what, pf, netns)
}

// moveAllHome moves every link of the netns but lo to the node's netns
// in one ip process, as the kernel moves a dying netns's physical devices
// back to init_net together.
func moveAllHome(t *testing.T, netns string) {
	t.Helper()
	var moves []string
	for _, l := range parseLinks(ipOut(t, "-n", netns, "-o", "link")) {
		moves = append(moves, fmt.Sprintf("link set dev %s netns %d", l.name, os.Getpid()))
	}
	ipBatch(t, []string{"ip", "-n", netns}, moves)
}

// bringAllHome is the cleanup of a netns holding the node's links: an ifb
// link dies with its netns, so every link goes home first (names the node
// has meanwhile clash, and that link is lost: the test fails anyway).
func bringAllHome(t *testing.T, netns string) {
	out, err := exec.Command("ip", "-n", netns, "-o", "link").Output()
	if err == nil {
		for _, l := range parseLinks(string(out)) {
			if out, err := exec.Command("ip", "-n", netns, "link", "set", "dev", l.name, "netns", strconv.Itoa(os.Getpid())).CombinedOutput(); err != nil {
				t.Errorf("cleanup: %s back from netns %s: %v: %s", l.name, netns, err, out)
			}
		}
	}
	_ = exec.Command("ip", "netns", "del", netns).Run()
}

// ipBatch runs ip (the command line in ip, e.g. under nsenter) with -batch,
// one command a line.
func ipBatch(t *testing.T, ip, cmds []string) {
	t.Helper()
	args := slices.Concat(ip, []string{"-batch", "-"})
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s <<< %q: %v: %s", strings.Join(args, " "), cmds, err, out)
	}
}

func ipOut(t *testing.T, args ...string) string {
	t.Helper()
	var out, stderr bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out.String()
}

// waitAgentLogged waits for the agent's log to show a line matching the
// pattern at or after since, and returns how long after since it came.
func waitAgentLogged(t *testing.T, pattern string, since time.Time) time.Duration {
	t.Helper()
	var took time.Duration
	waitFor(t, "agent log line "+pattern, time.Minute, func() (bool, error) {
		var err error
		took, err = agentLoggedAfter(pattern, since)
		return took >= 0, err
	})
	return took
}
