//go:build k8s

package scenarios

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// 14. The node config names the pool by a PF's altname (the predictable
// name systemd gives a PF, here enp<bus>s0f<fn> from its PCI address): the
// pool is that PF alone, allocatable 1. A job's PF is in its pod, renamed
// net1, where the host's names are not: the agent judges it by the names
// it had on the host and keeps it advertised and Healthy while the job
// holds it (allocatable stays 1 across node status updates, the running
// agent never logs it unadvertised, status shows it attached with the job
// as holder); the job deleted, the PF is back, free. The same after the
// agent pod is deleted while a job holds the PF: the new agent never saw
// the altname on the host, and takes the plugin's record as the witness
// that the pool admitted the PF.
func TestAgentKeepsAPFInAPoolNamedByAltname(t *testing.T) {
	requireNodeWhole(t)
	want := len(pfNames())
	waitAllocatable(t, want, "before")
	pf, other := pfNames()[0], pfNames()[1]
	pci := pciOf(t, pf)
	alt := predictableName(t, pci)
	ip(t, "link", "property", "add", "dev", pf, "altname", alt)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "link", "property", "del", "dev", pf, "altname", alt).CombinedOutput(); err != nil {
			t.Errorf("cleanup: remove altname %s of %s: %v: %s", alt, pf, err, out)
		}
	})
	setNodeConfig(t, "pfNames", []string{alt})
	waitAllocatable(t, 1, "with pfNames ["+alt+"]")
	status := agentStatus(t)
	if status[pci].Phase != "free" || agentPhase(status, other) != "ineligible" {
		t.Fatalf("agent status with pfNames [%s]: %+v", alt, status)
	}

	for _, restartAgent := range []bool{false, true} {
		job := map[bool]string{false: "altname-job", true: "altname-job-agent-restarted"}[restartAgent]
		since := time.Now()
		if got := runJob(t, 1, job); got[0] != pf {
			t.Fatalf("job %s holds %v, want %s, the pool", job, got, pf)
		}
		if restartAgent {
			since = restartAgentPod(t)
			waitAllocatable(t, 1, "after the agent restart")
		}
		requireHeldAndAdvertised(t, pf, pci, "default/"+job, since)
		kubectl(t, nil, "delete", "pod", job)
		requireNodeWhole(t)
		waitAllocatable(t, 1, "with "+job+" gone")
		if p := agentStatus(t)[pci]; p.Phase != "free" {
			t.Fatalf("agent status of %s after %s: %+v, want free", pf, job, p)
		}
		t.Logf("%s held %s (agent pod deleted meanwhile: %v): the PF stayed advertised and came back free", job, pf, restartAgent)
	}
}

// requireHeldAndAdvertised asserts, while a job holds the PF, that
// allocatable stays 1 over three node status updates (every 4s), that the
// running agent has not logged the PF unadvertised since the given time,
// and that status shows the PF attached with the job as holder.
func requireHeldAndAdvertised(t *testing.T, pf, pci, holder string, since time.Time) {
	t.Helper()
	for end := time.Now().Add(13 * time.Second); time.Now().Before(end); time.Sleep(time.Second) {
		if n, err := allocatableSRIOV(); err != nil || n != 1 {
			t.Fatalf("allocatable prow/sriov %d (%v) while %s holds %s, want 1", n, err, holder, pf)
		}
	}
	withdrawn, err := agentLoggedAfter(`msg=PF .*pci=`+regexp.QuoteMeta(pci)+` .*advertised=false`, since)
	if err != nil {
		t.Fatal(err)
	}
	if withdrawn >= 0 {
		t.Fatalf("the agent withdrew %s %s after %v while %s held it", pf, withdrawn, since.Format(time.RFC3339), holder)
	}
	if p := agentStatus(t)[pci]; p.Phase != "attached" || p.Holder == nil || p.Holder.Pod != holder {
		t.Fatalf("agent status of %s while %s holds it: %+v", pf, holder, p)
	}
}

// predictableName is the name systemd's net_id gives a PCI function's
// netdev from its address: 0000:3b:00.0 -> enp59s0f0.
func predictableName(t *testing.T, pci string) string {
	t.Helper()
	var domain, bus, slot, fn int
	if _, err := fmt.Sscanf(pci, "%x:%x:%x.%x", &domain, &bus, &slot, &fn); err != nil {
		t.Fatalf("PCI address %q: %v", pci, err)
	}
	return fmt.Sprintf("enp%ds%df%d", bus, slot, fn)
}

// nodeConfigMap is the ConfigMap the DaemonSet mounts as its node
// configuration: kustomize names it after a hash of node.json, so it is
// read from the DaemonSet rather than known.
func nodeConfigMap(t *testing.T) string {
	t.Helper()
	name := strings.TrimSpace(kubectl(t, nil, "-n", "sriov-passthrough-cni", "get", "ds", "sriov-passthrough-cni", "-o",
		`jsonpath={.spec.template.spec.volumes[?(@.name=="node-config")].configMap.name}`))
	if name == "" {
		t.Fatal("the DaemonSet mounts no node-config ConfigMap")
	}
	return name
}

// nodeConfig returns the node.json the DaemonSet's agents install, decoded.
func nodeConfig(t *testing.T) (raw string, conf map[string]any) {
	t.Helper()
	raw = kubectl(t, nil, "-n", "sriov-passthrough-cni", "get", "configmap", nodeConfigMap(t), "-o", `jsonpath={.data.node\.json}`)
	decodeJSON(t, raw, &conf)
	return raw, conf
}

// setNodeConfig sets one field of the DaemonSet's node.json and restarts
// the agent, which installs it for the plugin on start. Cleanup puts the
// ConfigMap back as it was and restarts the agent again.
//
// It edits the live ConfigMap in place rather than node.json through the
// generator: the scenario is about the agent's pool, and an edit in place
// leaves the DaemonSet's template, and with it which revision the other
// scenarios find, as it was. TestTodaysJobsThroughTheCutoverStages changes
// node.json the way an admin does, and the DaemonSet rolls.
func setNodeConfig(t *testing.T, field string, value any) {
	t.Helper()
	orig, conf := nodeConfig(t)
	conf[field] = value
	changed, _ := json.MarshalIndent(conf, "", "  ")
	t.Cleanup(func() {
		putNodeConfig(t, orig)
		restartAgentPod(t)
		waitAllocatable(t, len(pfNames()), "with the node config restored")
	})
	putNodeConfig(t, string(changed)+"\n")
	restartAgentPod(t)
	t.Logf("node.json: %s", strings.Join(strings.Fields(string(changed)), " "))
}

func putNodeConfig(t *testing.T, nodeJSON string) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"data": map[string]string{"node.json": nodeJSON}})
	kubectl(t, nil, "-n", "sriov-passthrough-cni", "patch", "configmap", nodeConfigMap(t), "--type=merge", "-p", string(patch))
}

// restartAgentPod deletes the DaemonSet's pod and waits until its
// successor's agent is ready (registered with the kubelet, a device list
// sent); it returns when the old pod was gone. Unlike a rollout restart it
// leaves the DaemonSet as it was.
func restartAgentPod(t *testing.T) time.Time {
	t.Helper()
	old := agentPod(t)
	kubectl(t, nil, "-n", "sriov-passthrough-cni", "delete", "pod", old, "--wait=true", "--timeout=120s")
	gone := time.Now()
	waitForNewAgent(t, old)
	t.Logf("agent pod %s deleted; %s ready %.1fs later", old, agentPod(t), time.Since(gone).Seconds())
	return gone
}

// waitForNewAgent waits until the DaemonSet's only pod is another than old
// and its agent is ready.
func waitForNewAgent(t *testing.T, old string) {
	t.Helper()
	waitFor(t, "a new agent pod, ready, and the only one", 2*time.Minute, func() (bool, error) {
		out, err := kubectlErr(nil, "-n", "sriov-passthrough-cni", "get", "pod", "-o",
			`jsonpath={range .items[*]}{.metadata.name}={.status.containerStatuses[?(@.name=="agent")].ready}{" "}{end}`)
		f := strings.Fields(out)
		return len(f) == 1 && !strings.HasPrefix(f[0], old+"=") && strings.HasSuffix(f[0], "=true"), err
	})
}
