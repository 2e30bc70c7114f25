//go:build k8s

package scenarios

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// prowJob is what the README's prow-job snippets show: the job's name, the
// annotations prow copies to the pod, and the pod spec.
type prowJob struct {
	Name        string            `json:"name"`
	Annotations map[string]string `json:"annotations"`
	Spec        map[string]any    `json:"spec"`
}

// readmeJobs returns the README's prow-job snippets (the fenced block after
// each `<!-- test/deploy: prow-job -->` marker, as test/deploy reads them),
// keyed by the number of PFs the job asks for.
func readmeJobs(t *testing.T) map[int]prowJob {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(os.Getenv("REPO"), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?m)^<!-- test/deploy: prow-job -->\n```yaml\n((?s:.*?))```")
	out := map[int]prowJob{}
	for _, m := range re.FindAllStringSubmatch(string(data), -1) {
		var jobs []prowJob
		if err := yaml.UnmarshalStrict([]byte(m[1]), &jobs); err != nil || len(jobs) != 1 {
			t.Fatalf("README prow-job snippet: %v (%d jobs)\n%s", err, len(jobs), m[1])
		}
		out[sriovRequests(t, jobs[0].Spec)] = jobs[0]
	}
	if out[1].Name == "" || out[2].Name == "" {
		t.Fatalf("README: want prow-job snippets for one and two PFs, found %d", len(out))
	}
	return out
}

// sriovRequests sums the containers' prow/sriov requests.
func sriovRequests(t *testing.T, spec map[string]any) int {
	var s struct {
		Containers []struct {
			Resources struct {
				Requests map[string]string `json:"requests"`
			} `json:"resources"`
		} `json:"containers"`
	}
	b, _ := json.Marshal(spec)
	decodeJSON(t, string(b), &s)
	n := 0
	for _, c := range s.Containers {
		var v int
		fmt.Sscan(c.Resources.Requests["prow/sriov"], &v)
		n += v
	}
	return n
}

// createJob makes the pod prow would make from the README's job with pfs
// PFs: its annotations and spec, JOB_IMAGE replaced by a busybox image whose
// command, like a job's, ends promptly on SIGTERM.
func createJob(t *testing.T, pfs int, name string) {
	t.Helper()
	createPod(t, jobPod(t, pfs, name))
}

// jobPod is the pod createJob makes, as an object to create.
func jobPod(t *testing.T, pfs int, name string) map[string]any {
	t.Helper()
	job := readmeJobs(t)[pfs]
	spec := map[string]any{}
	b, _ := json.Marshal(job.Spec)
	decodeJSON(t, string(b), &spec)
	for _, c := range spec["containers"].([]any) {
		c := c.(map[string]any)
		if c["image"] != "JOB_IMAGE" {
			t.Fatalf("README job image %v, want the JOB_IMAGE placeholder", c["image"])
		}
		c["image"] = env.busybox
		c["command"] = []string{"sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"}
		if c["name"] == nil {
			c["name"] = "test"
		}
	}
	return map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": name, "namespace": ns, "annotations": job.Annotations,
			"labels": map[string]string{"k8s-e2e": "job", "prow-job": job.Name}},
		"spec": spec,
	}
}

// createPod creates a job pod (labelled k8s-e2e=job) and has the test's
// cleanup delete every job pod.
func createPod(t *testing.T, pod map[string]any) {
	t.Helper()
	data, _ := json.Marshal(pod)
	kubectl(t, data, "create", "-f", "-")
	t.Cleanup(func() { deleteJobs(t) })
}

// deleteJobs deletes every job pod left and waits until the node has every
// device back.
func deleteJobs(t *testing.T) {
	t.Helper()
	kubectl(t, nil, "delete", "pod", "-l", "k8s-e2e=job", "--ignore-not-found", "--wait=true", "--timeout=120s")
	requireNodeWhole(t)
}

func phase(name string) (string, error) {
	out, err := kubectlErr(nil, "get", "pod", name, "-o", "jsonpath={.status.phase}")
	return strings.TrimSpace(out), err
}

// waitRunning waits for a job pod to run. A pod that failed (at admission,
// say) never will: that ends the wait at once. Either way a pod that is
// not Running is described, with the node's allocatable and the agent's
// last words, so the failure says why.
func waitRunning(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		p, err := phase(name)
		if p == "Running" {
			return
		}
		if p == "Failed" || time.Now().After(deadline) {
			why, _ := kubectlErr(nil, "describe", "pod", name)
			alloc, _ := kubectlErr(nil, "get", "node", env.node, "-o", "jsonpath={.status.allocatable}")
			agents, _ := kubectlErr(nil, "-n", "sriov-passthrough-cni", "get", "pod", "-o", "wide")
			logs, _ := kubectlErr(nil, "-n", "sriov-passthrough-cni", "logs", "-l", "app.kubernetes.io/name=sriov-passthrough-cni",
				"-c", "agent", "--tail", "40")
			t.Fatalf("pod %s is %q, not Running (last error: %v)\n%s\nnode allocatable: %s\n%s\nagent log:\n%s",
				name, p, err, why, alloc, agents, logs)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// link is one netdev as `ip -o link` shows it inside a pod.
type link struct{ name, mac string }

func podLinks(t *testing.T, name string) map[string]link {
	t.Helper()
	return parseLinks(kubectl(t, nil, "exec", name, "--", "ip", "-o", "link"))
}

// parseLinks reads `ip -o link` output: the links with a MAC, by MAC.
func parseLinks(out string) map[string]link {
	byMAC := map[string]link{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		l := link{name: strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]}
		if i := slices.Index(f, "link/ether"); i >= 0 && i+1 < len(f) {
			l.mac = f[i+1]
			byMAC[l.mac] = l
		}
	}
	return byMAC
}

// checkJob asserts that the Running job pod holds pfs PFs as net1..netN,
// each with all its VFs under their own names, that the node no longer has
// them, and that multus' network-status names them. It returns the PFs.
func checkJob(t *testing.T, name string, pfs int) []string {
	t.Helper()
	return checkJobOn(t, name, pfs, networkRef)
}

// checkJobOn is checkJob for a job whose attachments come from network
// (namespace/name of its NetworkAttachmentDefinition).
func checkJobOn(t *testing.T, name string, pfs int, network string) []string {
	t.Helper()
	inPod := podLinks(t, name)
	var given []string
	for i := 1; i <= pfs; i++ {
		ifname := fmt.Sprintf("net%d", i)
		pf := ""
		for _, d := range devices {
			if l, ok := inPod[d.mac]; ok && d.pf == d.name && l.name == ifname {
				pf = d.name
			}
		}
		if pf == "" {
			t.Fatalf("pod %s: %s is none of the node's PFs %v; pod links %v", name, ifname, pfNames(), inPod)
		}
		for _, d := range devices {
			if d.pf != pf || d.name == pf {
				continue
			}
			if l, ok := inPod[d.mac]; !ok || l.name != d.name {
				t.Fatalf("pod %s: VF %s of %s missing or renamed in the pod: %v", name, d.name, pf, inPod)
			}
		}
		given = append(given, pf)
	}
	lost, _ := census()
	for _, pf := range given {
		if !slices.Contains(lost, pf) {
			t.Fatalf("PF %s is in pod %s and still on the node", pf, name)
		}
	}
	checkNetworkStatus(t, name, network, given)
	handedOut[kubectl(t, nil, "get", "pod", name, "-o", "jsonpath={.metadata.uid}")] = len(given)
	t.Logf("pod %s Running with %v (and their VFs)", name, given)
	return given
}

// checkNetworkStatus asserts that multus' network-status lists, for the
// network, the PFs as net1..netN and each one's VFs by name, with their MACs.
func checkNetworkStatus(t *testing.T, name, network string, given []string) {
	t.Helper()
	out := kubectl(t, nil, "get", "pod", name, "-o", `jsonpath={.metadata.annotations.k8s\.v1\.cni\.cncf\.io/network-status}`)
	var status []struct {
		Name      string `json:"name"`
		Interface string `json:"interface"`
		MAC       string `json:"mac"`
	}
	decodeJSON(t, out, &status)
	got, want := map[string]string{}, map[string]string{}
	for _, s := range status {
		if s.Name == network {
			got[s.Interface] = s.MAC
		}
	}
	for i, pf := range given {
		for _, d := range devices {
			switch {
			case d.name == pf:
				want[fmt.Sprintf("net%d", i+1)] = d.mac
			case d.pf == pf:
				want[d.name] = d.mac
			}
		}
	}
	if !maps.Equal(got, want) {
		t.Fatalf("pod %s network-status for %s: %v, want %v", name, network, got, want)
	}
}

// runJob creates a job pod with pfs PFs, waits until it is Running and checks
// it; it returns the PFs the job holds.
func (a allocation) runJob(t *testing.T, pfs int, name string) []string {
	t.Helper()
	createJob(t, pfs, name)
	waitRunning(t, name)
	return a.check(t, name, pfs)
}

// runJob runs a job on a device-plugin node, as most scenarios do.
func runJob(t *testing.T, pfs int, name string) []string {
	t.Helper()
	return devicePlugin.runJob(t, pfs, name)
}

// rolloutStatus waits for the DaemonSet's rollout to end. One that does
// not is explained: the DaemonSet's status, its pods with each container's
// readiness, the last events (a failing probe says why there) and the last
// lines of every container's log, the old pod's and the new one's.
func rolloutStatus(t *testing.T, timeout time.Duration) {
	t.Helper()
	ns := []string{"-n", "sriov-passthrough-cni"}
	_, err := kubectlWithin(timeout+30*time.Second, nil, append(ns, "rollout", "status", "ds/sriov-passthrough-cni",
		fmt.Sprintf("--timeout=%ds", int(timeout.Seconds())))...)
	if err == nil {
		return
	}
	ds := kubectlQuiet(append(ns, "get", "ds", "sriov-passthrough-cni", "-o", "jsonpath={.status}")...)
	pods := kubectlQuiet(append(ns, "get", "pod", "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.metadata.labels.pod-template-generation} deleting={.metadata.deletionTimestamp} {range .status.containerStatuses[*]}{.name}:ready={.ready},restarts={.restartCount} {end}{"\n"}{end}`)...)
	events := strings.Split(strings.TrimSpace(kubectlQuiet(append(ns, "get", "events", "--sort-by=.lastTimestamp")...)), "\n")
	events = events[max(0, len(events)-20):]
	var logs strings.Builder
	for _, p := range strings.Fields(kubectlQuiet(append(ns, "get", "pod", "-o", "name")...)) {
		out := kubectlQuiet(append(ns, "logs", p, "--all-containers", "--prefix", "--timestamps", "--tail", "30")...)
		fmt.Fprintf(&logs, "--- %s\n%s", p, out)
	}
	t.Fatalf("the DaemonSet's rollout did not end within %v: %v\nstatus: %s\npods:\n%s\nlast events:\n%s\nlogs:\n%s",
		timeout, err, ds, pods, strings.Join(events, "\n"), logs.String())
}

// kubectlQuiet is kubectlErr for a diagnosis: the output, or nothing.
func kubectlQuiet(args ...string) string {
	out, _ := kubectlErr(nil, args...)
	return out
}
