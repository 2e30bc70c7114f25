//go:build k8s

package scenarios

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The CI cluster's network as the bash plugin's installer left it: in the
// default namespace, cniVersion 0.3.0, no name, no resourceName annotation.
const (
	todaysNetwork = "default/sriov-passthrough-cni"
	todaysConfig  = `{"cniVersion": "0.3.0", "type": "sriov-passthrough-cni"}`
)

// 15. Today's CI jobs through the staged cutover (docs/deploy.md, "Cutover
// from the bash plugin"), with deploy/ as shipped (requireDeviceID off):
//
//  0. The bash plugin's installer is there first: a DaemonSet with our
//     names and its selector (name: sriovpassthrough). `kubectl apply -k`
//     over it is refused (a selector is immutable); deleting it and
//     applying, as docs/deploy.md says, brings the agent up again.
//
//  1. A job shaped like today's release-branch SR-IOV jobs (two
//     attachments of default/sriov-passthrough-cni, a 0.3.0 network with
//     no resourceName, no prow/sriov request, one job per node by
//     podAntiAffinity) gets both PFs with their VFs. The kubelet did not
//     allocate them, so the agent withdraws them from its count while the
//     job holds them (allocatable 0) and gives them back after.
//
//  2. The network gains the resourceName annotation and the job requests
//     prow/sriov: 2; it gets exactly the kubelet's allocation and the
//     PFs stay counted as allocated (allocatable 2). A job still without
//     the request keeps working on the annotated network.
//
//  3. requireDeviceID on, as docs/deploy.md has an admin do it: node.json
//     changed in the overlay and applied, so the generated ConfigMap gets a
//     new name and the DaemonSet rolls to it. A job without the request is
//     refused with the plugin's error naming the missing deviceID, a job
//     with it runs.
//
// And back: the overlay as it was applied again, the DaemonSet rolls back
// to its first ConfigMap, today's job runs again. docs/deploy.md's pruning
// then removes the stage's ConfigMap, left behind, and nothing else.
func TestTodaysJobsThroughTheCutoverStages(t *testing.T) {
	requireNodeWhole(t)
	want := len(pfNames())
	waitAllocatable(t, want, "before")
	createTodaysNetwork(t)

	// Stage 0.
	takeOverFromTheBashInstaller(t)

	// Stage 1.
	held := runTodaysJob(t, "todays-job", false)
	waitAllocatable(t, 0, "while today's job holds both PFs without the kubelet's allocation")
	status := agentStatus(t)
	for _, pf := range held {
		p := status[pciOf(t, pf)]
		if p.Phase != "attached" || p.Holder == nil || p.Holder.Pod != "default/todays-job" || !strings.Contains(p.Why, "no deviceID") {
			t.Fatalf("agent status of %s held by today's job: %+v", pf, p)
		}
	}
	deleteJobs(t)
	waitAllocatable(t, want, "after today's job")

	// Stage 2.
	kubectl(t, nil, "annotate", "network-attachment-definitions.k8s.cni.cncf.io", "-n", "default", "sriov-passthrough-cni",
		"k8s.v1.cni.cncf.io/resourceName=prow/sriov")
	pinned := runTodaysJob(t, "todays-job-pinned", true)
	alloc := strings.Split(strings.TrimSpace(kubectl(t, nil, "exec", "todays-job-pinned", "--", "sh", "-c", `echo "$PCIDEVICE_PROW_SRIOV"`)), ",")
	var holds []string
	for _, pf := range pinned {
		holds = append(holds, pciOf(t, pf))
	}
	slices.Sort(alloc)
	slices.Sort(holds)
	if !slices.Equal(alloc, holds) {
		t.Fatalf("the kubelet allocated %v, the job holds %v", alloc, holds)
	}
	if n, err := allocatableSRIOV(); err != nil || n != want {
		t.Fatalf("allocatable %d (%v) while the pinned job holds its allocation, want %d", n, err, want)
	}
	deleteJobs(t)
	runTodaysJob(t, "todays-job-annotated", false)
	deleteJobs(t)

	// Stage 3, and back.
	overlay, first := currentOverlay(t), nodeConfigMap(t)
	restored := false
	t.Cleanup(func() {
		if !restored {
			applyAndRoll(t, overlay)
		}
	})
	applyAndRoll(t, nodeConfigOverlay(t, overlay, "requireDeviceID", true))
	stage3 := nodeConfigMap(t)
	if stage3 == first {
		t.Fatalf("node.json changed, the DaemonSet still mounts ConfigMap %s", first)
	}
	t.Logf("stage 3: node.json with requireDeviceID applied, the DaemonSet rolled from ConfigMap %s to %s", first, stage3)
	createTodaysJob(t, "todays-job-refused", false)
	why := waitPodEvent(t, "todays-job-refused", "no deviceID")
	t.Logf("stage 3 refuses a job without prow/sriov: %s", why)
	deleteJobs(t)
	runTodaysJob(t, "todays-job-stage3", true)
	deleteJobs(t)

	applyAndRoll(t, overlay)
	restored = true
	if got := nodeConfigMap(t); got != first {
		t.Fatalf("the overlay applied again, the DaemonSet mounts ConfigMap %s, want %s", got, first)
	}
	runTodaysJob(t, "todays-job-back", false)
	deleteJobs(t)
	waitAllocatable(t, want, "after the stages")
	pruneNodeConfigs(t, first, stage3)
}

// currentOverlay is run.sh's overlay of the image whose binary is
// installed: applying it changes no image.
func currentOverlay(t *testing.T) string {
	t.Helper()
	tag := os.Getenv("PLUGIN_TAG_A")
	if fileHash(t, cniBinary) == binaryHash(t, os.Getenv("PLUGIN_TAG_B")) {
		tag = os.Getenv("PLUGIN_TAG_B")
	}
	return filepath.Join(env.work, "overlay-"+tag)
}

// nodeConfigOverlay writes an admin's overlay of base whose node.json is
// the one the DaemonSet runs with field set to value, through the
// generator as docs/configuration.md shows, and returns its directory.
func nodeConfigOverlay(t *testing.T, base, field string, value any) string {
	t.Helper()
	_, conf := nodeConfig(t)
	conf[field] = value
	node, _ := json.MarshalIndent(conf, "", "  ")
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, base)
	if err != nil {
		t.Fatal(err)
	}
	kust := "resources:\n- " + rel + "\n" +
		"configMapGenerator:\n- name: sriov-passthrough-cni-node\n  namespace: sriov-passthrough-cni\n" +
		"  behavior: replace\n  files:\n  - node.json\n"
	for name, data := range map[string][]byte{"kustomization.yaml": []byte(kust), "node.json": append(node, '\n')} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// applyAndRoll applies an overlay whose pod template differs from the
// running one and waits until the DaemonSet has rolled: its only pod is a
// new one, with the agent ready.
func applyAndRoll(t *testing.T, overlay string) {
	t.Helper()
	old := agentPod(t)
	start := time.Now()
	kubectl(t, nil, "apply", "-k", overlay)
	rolloutStatus(t, 3*time.Minute)
	waitForNewAgent(t, old)
	t.Logf("applied %s: agent pod %s replaced by %s in %.1fs", filepath.Base(overlay), old, agentPod(t), time.Since(start).Seconds())
}

// pruneNodeConfigs runs docs/deploy.md's pruning of node-config
// ConfigMaps: the one the DaemonSet mounts stays, and so does every
// ConfigMap that is not this deploy's (kube-root-ca.crt); stale goes.
func pruneNodeConfigs(t *testing.T, inUse, stale string) {
	t.Helper()
	list := func() []string {
		out := kubectl(t, nil, "-n", "sriov-passthrough-cni", "get", "configmap", "-o", "jsonpath={.items[*].metadata.name}")
		names := strings.Fields(out)
		slices.Sort(names)
		return names
	}
	before := list()
	if !slices.Contains(before, stale) || !slices.Contains(before, inUse) {
		t.Fatalf("ConfigMaps %v before pruning: want %s (in use) and %s (left behind by the apply)", before, inUse, stale)
	}
	data, err := os.ReadFile(filepath.Join(os.Getenv("REPO"), "docs", "deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?m)^<!-- test/deploy: prune-node-configs -->\n```sh\n((?s:.*?))```").FindSubmatch(data)
	if m == nil {
		t.Fatal("docs/deploy.md: no prune-node-configs snippet")
	}
	if out, err := exec.Command("bash", "-c", string(m[1])).CombinedOutput(); err != nil {
		t.Fatalf("docs/deploy.md's pruning: %v\n%s", err, out)
	}
	after := list()
	want := slices.DeleteFunc(slices.Clone(before), func(n string) bool { return n == stale })
	if !slices.Equal(after, want) {
		t.Fatalf("after docs/deploy.md's pruning the ConfigMaps are %v, want %v", after, want)
	}
	t.Logf("docs/deploy.md's pruning: ConfigMaps %v -> %v", before, after)
	waitAllocatable(t, len(pfNames()), "after pruning")
}

// createTodaysNetwork makes the network the bash plugin's installer made,
// removed again at the end.
func createTodaysNetwork(t *testing.T) {
	t.Helper()
	nad := map[string]any{
		"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
		"metadata": map[string]any{"name": "sriov-passthrough-cni", "namespace": "default"},
		"spec":     map[string]any{"config": todaysConfig},
	}
	data, _ := json.Marshal(nad)
	kubectl(t, data, "create", "-f", "-")
	t.Cleanup(func() {
		kubectl(t, nil, "delete", "network-attachment-definitions.k8s.cni.cncf.io", "-n", "default", "sriov-passthrough-cni", "--ignore-not-found")
	})
}

// createTodaysJob makes a pod shaped like today's release-branch SR-IOV
// job: two attachments of the default namespace's network, the sriov-pod
// label and the podAntiAffinity that keeps one such job per node; with
// request, prow/sriov: 2 as well (the cutover's second stage).
func createTodaysJob(t *testing.T, name string, request bool) {
	t.Helper()
	container := map[string]any{
		"name": "test", "image": env.busybox,
		"command": []string{"sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"},
	}
	if request {
		container["resources"] = map[string]any{
			"requests": map[string]string{"prow/sriov": "2"}, "limits": map[string]string{"prow/sriov": "2"},
		}
	}
	pod := map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{
			"name": name, "namespace": ns,
			"annotations": map[string]string{"k8s.v1.cni.cncf.io/networks": todaysNetwork + "," + todaysNetwork},
			"labels":      map[string]string{"k8s-e2e": "job", "sriov-pod": "true"},
		},
		"spec": map[string]any{
			"terminationGracePeriodSeconds": 5,
			"containers":                    []any{container},
			"affinity": map[string]any{"podAntiAffinity": map[string]any{
				"requiredDuringSchedulingIgnoredDuringExecution": []any{map[string]any{
					"labelSelector": map[string]any{"matchExpressions": []any{map[string]any{
						"key": "sriov-pod", "operator": "In", "values": []string{"true"},
					}}},
					"topologyKey": "kubernetes.io/hostname",
				}},
			}},
		},
	}
	data, _ := json.Marshal(pod)
	kubectl(t, data, "create", "-f", "-")
	t.Cleanup(func() { deleteJobs(t) })
}

// runTodaysJob creates today's job, waits until it runs and checks that it
// holds both PFs with their VFs, named in the network-status of today's
// network; it returns the PFs.
func runTodaysJob(t *testing.T, name string, request bool) []string {
	t.Helper()
	createTodaysJob(t, name, request)
	waitRunning(t, name)
	return checkJobOn(t, name, 2, todaysNetwork)
}

// waitPodEvent waits for an event of the pod whose message contains sub,
// and returns that message.
func waitPodEvent(t *testing.T, pod, sub string) string {
	t.Helper()
	var msg string
	waitFor(t, fmt.Sprintf("an event of pod %s saying %q", pod, sub), 2*time.Minute, func() (bool, error) {
		out, err := kubectlErr(nil, "get", "events", "--field-selector", "involvedObject.name="+pod, "-o", "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}")
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, sub) {
				msg = l
				return true, nil
			}
		}
		return false, err
	})
	return msg
}

// takeOverFromTheBashInstaller replaces this cluster's DaemonSet with one
// shaped like the bash plugin's installer (its selector and labels; its
// container only sleeps, so the binary on the node stays ours, as the bash
// plugin's stays on a real node until the installer replaces it), shows
// that applying deploy/ over it is refused, and takes over as
// docs/deploy.md says: delete it, apply.
func takeOverFromTheBashInstaller(t *testing.T) {
	t.Helper()
	overlay := currentOverlay(t)
	kubectl(t, nil, "-n", "sriov-passthrough-cni", "delete", "ds", "sriov-passthrough-cni", "--wait=true", "--timeout=120s")
	// Whatever happens next, the cluster ends with deploy/'s DaemonSet.
	t.Cleanup(func() {
		if _, err := kubectlErr(nil, "-n", "sriov-passthrough-cni", "get", "ds", "sriov-passthrough-cni", "-o", `jsonpath={.spec.selector.matchLabels.name}`); err == nil {
			kubectlErr(nil, "-n", "sriov-passthrough-cni", "delete", "ds", "sriov-passthrough-cni", "--wait=true", "--timeout=120s")
		}
		kubectlErr(nil, "apply", "-k", overlay)
		kubectlErr(nil, "-n", "sriov-passthrough-cni", "rollout", "status", "ds/sriov-passthrough-cni", "--timeout=180s")
	})
	old := map[string]any{
		"apiVersion": "apps/v1", "kind": "DaemonSet",
		"metadata": map[string]any{"name": "sriov-passthrough-cni", "namespace": "sriov-passthrough-cni",
			"labels": map[string]string{"tier": "node", "app": "sriovpassthrough"}},
		"spec": map[string]any{
			"selector": map[string]any{"matchLabels": map[string]string{"name": "sriovpassthrough"}},
			"template": map[string]any{
				"metadata": map[string]any{"labels": map[string]string{"name": "sriovpassthrough", "tier": "node", "app": "sriovpassthrough"}},
				"spec": map[string]any{
					"hostNetwork":                   true,
					"tolerations":                   []any{map[string]any{"operator": "Exists", "effect": "NoSchedule"}},
					"terminationGracePeriodSeconds": 1,
					"containers": []any{map[string]any{
						"name": "kube-sriov-passthrough-cni", "image": env.busybox,
						"command": []string{"sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"},
					}},
				},
			},
		},
	}
	data, _ := json.Marshal(old)
	kubectl(t, data, "create", "-f", "-")
	rolloutStatus(t, 2*time.Minute)
	out, err := kubectlErr(nil, "apply", "-k", overlay)
	if err == nil || !strings.Contains(out+err.Error(), "field is immutable") {
		t.Fatalf("apply -k over the bash plugin's installer: %v\n%s\nwant a refusal: its selector is immutable", err, out)
	}
	t.Logf("apply over the bash installer refused, as docs/deploy.md says: %s", firstLine(out+err.Error(), "immutable"))
	took := time.Now()
	kubectl(t, nil, "-n", "sriov-passthrough-cni", "delete", "ds", "sriov-passthrough-cni", "--wait=true", "--timeout=120s")
	kubectl(t, nil, "apply", "-k", overlay)
	rolloutStatus(t, 3*time.Minute)
	waitAllocatable(t, len(pfNames()), "after the takeover")
	fmt.Printf("k8s-e2e: takeover from the bash plugin's installer (delete, apply) -> agent ready and allocatable %d after %.1fs\n",
		len(pfNames()), time.Since(took).Seconds())
}

// firstLine is the first line of s that contains sub ("" if none).
func firstLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}
