//go:build k8s

package scenarios

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	podresources "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// The kubelet's pod-resources API and device-plugin directory (node.sh
// keeps the kubelet's default root dir).
const (
	podResourcesSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"
	pluginDir          = "/var/lib/kubelet/device-plugins"
)

// 10. The kubelet SIGKILLed and restarted while a job holds a PF. A
// starting kubelet removes every socket in the device-plugin directory and
// knows no device until a plugin registers again and lists them, while the
// API still shows the old allocatable; the kubelet refuses to admit a pod
// that asks for prow/sriov in that window. The agent must register once
// with the new kubelet (a second registration on the same socket is
// refused, and a plugin that stops serving its first one is disconnected,
// taking the resource with it). Asserted: the kubelet's own count of
// registrations is 1, its pod-resources API lists every PF, the job keeps
// its PF, and a job created then is admitted and gets the other PF. The
// time from the kill to the agent's registration and to the kubelet listing
// the devices is printed.
//
// The agent's readiness (registered with the kubelet listening now) says
// ready again through the new kubelet, and its pod never turns unready: a
// restarted kubelet keeps a container that was Ready so until its first
// probe, which it runs at a random point of the period (10s), and a
// failing readiness probe counts only from the third failure in a row
// (failureThreshold 3), while the agent registers within milliseconds of
// the new socket. A pod that went unready here would mean the agent did
// not register for some 20s, and then its readiness probes failed: when
// the condition changed, the test fails if a probe of either container
// failed since the restart, and otherwise prints the change (the kubelet's
// doing; seen in two runs before the probe counts were kept).
//
// A kubelet older than v1.35 does not keep it: on its start every running
// container is unready until its first readiness probe passes (what the
// ChangeContainerStatusOnKubeletRestart gate, on before v1.35 and off from
// then, governs), so the pod turns unready whatever the agent does. Against
// such a kubelet the assertion is on the probes themselves: the restarted
// kubelet's own counter shows the agent's readiness probe passing the first
// time it runs and never failing, and the pod is Ready again.
func TestAgentRegistersOnceWithARestartedKubelet(t *testing.T) {
	requireNodeWhole(t)
	want := len(pfNames())
	held := runJob(t, 1, "kubelet-restart-held")
	var readyBefore string
	waitFor(t, "the agent pod Ready", 2*time.Minute, func() (bool, error) {
		readyBefore = agentPodReady(t)
		return strings.HasPrefix(readyBefore, "True "), nil
	})
	killed := time.Now()
	t.Cleanup(func() {
		if t.Failed() {
			registrationStory(t)
		}
	})
	restart(t, "kubelet")
	waitFor(t, "the kubelet's pod-resources API lists every prow/sriov device", 2*time.Minute, func() (bool, error) {
		ids, err := kubeletDevices()
		return len(ids) == want, err
	})
	listed := time.Since(killed)
	// The kubelet's socket is made when its device manager starts: bind
	// sets the file's times.
	sock, err := os.Stat(filepath.Join(pluginDir, "kubelet.sock"))
	if err != nil {
		t.Fatal(err)
	}
	registered := waitAgentLogged(t, `msg="registered with the kubelet"`, killed)
	// A registration refused or made twice shows in the kubelet's own
	// counter, which starts at 0 with each kubelet process.
	if n := kubeletRegistrations(t); n != 1 {
		t.Errorf("the restarted kubelet counted %d prow/sriov registrations, want 1", n)
	}
	fmt.Printf("k8s-e2e: kubelet SIGKILLed -> its new socket after %s; the agent registered %s after that; the kubelet listed %d devices %.1fs after the kill\n",
		sock.ModTime().Sub(killed).Round(time.Millisecond), killed.Add(registered).Sub(sock.ModTime()).Round(time.Millisecond), want, listed.Seconds())

	pod := agentPod(t)
	resetsReadiness := kubeletMinor(t) < 35
	if resetsReadiness {
		waitFor(t, "the restarted kubelet's first readiness probe of the agent", 2*time.Minute, func() (bool, error) {
			passed, failed, err := readinessProbes(pod, "agent")
			return passed+failed > 0, err
		})
		requireReadinessNeverFailed(t, pod)
	}
	waitFor(t, "the agent's readiness probe through the new kubelet", 2*time.Minute, func() (bool, error) {
		_, err := kubectlErr(nil, "-n", "sriov-passthrough-cni", "exec", pod, "-c", "agent", "--",
			"sriov-passthrough-agent", "probe", "ready")
		return err == nil, err
	})

	next := runJob(t, 1, "kubelet-restart-new")
	if slices.Equal(next, held) {
		t.Fatalf("the job created after the restart got %v, which the first job holds", next)
	}
	waitFor(t, "exec into the held job after the kubelet restart", 2*time.Minute, func() (bool, error) {
		_, err := kubectlErr(nil, "exec", "kubelet-restart-held", "--", "true")
		return err == nil, err
	})
	if got := checkJob(t, "kubelet-restart-held", 1); !slices.Equal(got, held) {
		t.Fatalf("after the kubelet restart the job holds %v, had %v", got, held)
	}
	if resetsReadiness {
		requireReadinessNeverFailed(t, pod)
		// The installer container's probe runs every 30s: the pod is Ready
		// once both containers' first probes after the restart passed.
		waitFor(t, "the agent pod Ready again", 2*time.Minute, func() (bool, error) {
			return strings.HasPrefix(agentPodReady(t), "True "), nil
		})
	} else if after := agentPodReady(t); after != readyBefore {
		requireProbesNeverFailed(t, pod, readyBefore, after)
	}
	deleteJobs(t)
	waitAllocatable(t, want, "after the jobs")
}

// agentPodReady is the agent pod's Ready condition: its status and when it
// last changed.
func agentPodReady(t *testing.T) string {
	t.Helper()
	return kubectl(t, nil, "-n", "sriov-passthrough-cni", "get", "pod", agentPod(t), "-o",
		`jsonpath={.status.conditions[?(@.type=="Ready")].status} since {.status.conditions[?(@.type=="Ready")].lastTransitionTime}`)
}

// kubeletMinor is the minor version of the node's kubelet, as it reports
// itself in the node's status (34 for v1.34.4).
func kubeletMinor(t *testing.T) int {
	t.Helper()
	v := kubectl(t, nil, "get", "node", env.node, "-o", "jsonpath={.status.nodeInfo.kubeletVersion}")
	var major, minor int
	if _, err := fmt.Sscanf(strings.TrimSpace(v), "v%d.%d", &major, &minor); err != nil {
		t.Fatalf("kubelet version %q: %v", v, err)
	}
	return minor
}

var probeCount = regexp.MustCompile(`(?m)^prober_probe_total\{([^}]*)\} (\d+)`)

// requireProbesNeverFailed is the check when a kubelet of v1.35 or later
// turned the agent pod's Ready condition anyway (from before to after): it
// fails the test if a readiness probe of either container failed since the
// restart, which would be ours to fix, and otherwise says so and passes. It
// happened in two runs here with no diagnosis kept; this keeps
// one.
func requireProbesNeverFailed(t *testing.T, pod, before, after string) {
	t.Helper()
	waitFor(t, "the restarted kubelet's first readiness probe of the agent", 2*time.Minute, func() (bool, error) {
		passed, failed, err := readinessProbes(pod, "agent")
		return passed+failed > 0, err
	})
	var counts []string
	bad := false
	for _, c := range []string{"agent", "install-plugin"} {
		passed, failed, err := readinessProbes(pod, c)
		if err != nil {
			t.Fatal(err)
		}
		bad = bad || failed > 0
		counts = append(counts, fmt.Sprintf("%s %d passed, %d failed", c, passed, failed))
	}
	if bad {
		t.Errorf("the agent pod's Ready condition was %q before the kubelet restart and %q after, and readiness probes failed since: %s",
			before, after, strings.Join(counts, "; "))
		return
	}
	fmt.Printf("k8s-e2e: the restarted kubelet turned the agent pod's Ready condition (%q, then %q) with no readiness probe failing (%s)\n",
		before, after, strings.Join(counts, "; "))
}

// readinessProbes counts the readiness probes of a container of pod that
// the kubelet ran since it started, from its probe metrics (through the
// API server's node proxy): passed, and failed or in error.
func readinessProbes(pod, container string) (passed, failed int, err error) {
	out, err := kubectlErr(nil, "get", "--raw", "/api/v1/nodes/"+env.node+"/proxy/metrics/probes")
	if err != nil {
		return 0, 0, err
	}
	for _, m := range probeCount.FindAllStringSubmatch(out, -1) {
		labels := m[1]
		if !strings.Contains(labels, `container="`+container+`"`) || !strings.Contains(labels, `pod="`+pod+`"`) ||
			!strings.Contains(labels, `probe_type="Readiness"`) {
			continue
		}
		n, err := strconv.Atoi(m[2])
		if err != nil {
			return 0, 0, err
		}
		if strings.Contains(labels, `result="successful"`) {
			passed += n
		} else {
			failed += n
		}
	}
	return passed, failed, nil
}

// requireReadinessNeverFailed fails the test unless the kubelet probed the
// agent's readiness and every probe passed.
func requireReadinessNeverFailed(t *testing.T, pod string) {
	t.Helper()
	passed, failed, err := readinessProbes(pod, "agent")
	if err != nil {
		t.Fatal(err)
	}
	if passed == 0 || failed > 0 {
		t.Errorf("the restarted kubelet probed the agent's readiness: %d passed, %d failed or in error; want every probe passed", passed, failed)
	}
	t.Logf("the restarted kubelet's readiness probes of the agent: %d passed, none failed", passed)
}

// kubeletDevices asks the kubelet's pod-resources API which prow/sriov
// devices its device manager has: none until a plugin has registered and
// sent its list.
func kubeletDevices() ([]string, error) {
	conn, err := grpc.NewClient("unix://"+podResourcesSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := podresources.NewPodResourcesListerClient(conn).GetAllocatableResources(ctx, &podresources.AllocatableResourcesRequest{})
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, d := range resp.Devices {
		if d.ResourceName == "prow/sriov" {
			ids = append(ids, d.DeviceIds...)
		}
	}
	return ids, nil
}

var registrationsMetric = regexp.MustCompile(`(?m)^kubelet_device_plugin_registration_total\{resource_name="prow/sriov"\} (\d+)`)

// kubeletRegistrations reads the kubelet's count of prow/sriov
// registrations from its metrics, through the API server's node proxy.
func kubeletRegistrations(t *testing.T) int {
	t.Helper()
	out := kubectl(t, nil, "get", "--raw", "/api/v1/nodes/"+env.node+"/proxy/metrics")
	m := registrationsMetric.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no prow/sriov registration count in the kubelet's metrics:\n%s", grepLines(out, "device_plugin"))
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// registrationStory prints, when a registration went wrong, what the agent
// and the kubelet logged about it: each side's account of the handshake.
func registrationStory(t *testing.T) {
	t.Helper()
	if out, err := kubectlErr(nil, "-n", "sriov-passthrough-cni", "logs", agentPod(t), "-c", "agent"); err == nil {
		t.Logf("the agent's log on its sockets and registrations:\n%s", grepAny(out, "regist", "socket", "device plugin", "kubelet"))
	}
	if data, err := os.ReadFile(filepath.Join(env.work, "logs", "kubelet.log")); err == nil {
		t.Logf("the kubelet's log on device plugins:\n%s", grepAny(string(data), "registration", "device plugin", "Connected to new client", "endpoint", "prow/sriov"))
	}
}

func grepAny(s string, subs ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if strings.Contains(l, sub) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
