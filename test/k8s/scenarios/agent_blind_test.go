//go:build k8s

package scenarios

import (
	"slices"
	"testing"
	"time"
)

// 11. An agent deployed without HostToContainer on /var/run/netns: a pod
// made after the agent started has its netns bind-mounted on the host, and
// the agent sees only the empty file under it, as if the pod were dead.
// It must say it cannot tell and leave the attachment alone: the job keeps
// its PF while the agent looks again and again, and after the DaemonSet
// is put back the job is released as usual.
func TestAgentThatCannotSeeNetnsReleasesNothing(t *testing.T) {
	requireNodeWhole(t)
	want := len(pfNames())
	setNetnsPropagation(t, "None")
	t.Cleanup(func() { setNetnsPropagation(t, "HostToContainer") })

	start := time.Now()
	held := runJob(t, 1, "blind-agent")
	waitAgentLogged(t, `msg="cannot tell whether the attachment's netns is gone; leaving it alone"`, start)
	// The agent looks again on every change and every resync period: give
	// it changes to look at (a second job comes and goes).
	runJob(t, 1, "blind-agent-other")
	kubectl(t, nil, "delete", "pod", "blind-agent-other")
	waitAllocatable(t, want, "with the blind agent")
	if got := checkJob(t, "blind-agent", 1); !slices.Equal(got, held) {
		t.Fatalf("with an agent that cannot see pods' netns the job holds %v, had %v", got, held)
	}
	if p := agentStatus(t); agentPhase(p, held[0]) != "attached" {
		t.Fatalf("agent status of the job's PF %s: %+v, want attached", held[0], p)
	}

	setNetnsPropagation(t, "HostToContainer")
	if got := checkJob(t, "blind-agent", 1); !slices.Equal(got, held) {
		t.Fatalf("after the DaemonSet was put back the job holds %v, had %v", got, held)
	}
	deleteJobs(t)
	waitAllocatable(t, want, "after the job")
}

// setNetnsPropagation rolls the DaemonSet out with the agent's
// /var/run/netns mount at the given propagation, and waits for it.
func setNetnsPropagation(t *testing.T, mode string) {
	t.Helper()
	patch := `{"spec":{"template":{"spec":{"containers":[{"name":"agent","volumeMounts":[{"mountPath":"/var/run/netns","mountPropagation":"` + mode + `"}]}]}}}}`
	kubectl(t, nil, "-n", "sriov-passthrough-cni", "patch", "ds", "sriov-passthrough-cni", "-p", patch)
	rolloutStatus(t, 3*time.Minute)
	waitFor(t, "one agent pod, ready", 2*time.Minute, func() (bool, error) {
		out, err := kubectlErr(nil, "-n", "sriov-passthrough-cni", "get", "pod", "-o",
			`jsonpath={range .items[*]}{.status.containerStatuses[?(@.name=="agent")].ready}{" "}{end}`)
		return out == "true ", err
	})
}
