//go:build k8s

package scenarios

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// agentPF is one PF in the node agent's own view (status -o json), run in its
// container as a person on the node would: PCI address -> PF.
type agentPF struct {
	PCI   string `json:"pci"`
	Name  string `json:"name"`
	Phase string `json:"phase"`
	Why   string `json:"why"`
	// Holder is the attachment holding the PF, nil when none does.
	Holder *struct {
		Pod string `json:"pod"`
	} `json:"holder"`
}

func agentStatus(t *testing.T) map[string]agentPF {
	t.Helper()
	pod := strings.TrimSpace(kubectl(t, nil, "-n", "sriov-passthrough-cni", "get", "pod", "-o", "jsonpath={.items[0].metadata.name}"))
	out := kubectl(t, nil, "-n", "sriov-passthrough-cni", "exec", pod, "-c", "agent", "--",
		"sriov-passthrough-agent", "status", "-o", "json", "-host-root=/host")
	var pfs []agentPF
	if err := json.Unmarshal([]byte(out), &pfs); err != nil {
		t.Fatalf("agent status: %v\n%s", err, out)
	}
	byPCI := map[string]agentPF{}
	for _, p := range pfs {
		byPCI[p.PCI] = p
	}
	return byPCI
}

func allocatableSRIOV() (int, error) {
	out, err := kubectlErr(nil, "get", "node", env.node, "-o", "jsonpath={.status.allocatable.prow/sriov}")
	if err != nil {
		return -1, err
	}
	return strconv.Atoi(strings.TrimSpace(out))
}

// 6. The node agent, with nothing patched onto the node: allocatable is
// the node's eligible PFs; a PF reserved by an atomic replace of the
// reserved file leaves it and comes back (the API-side latency is printed,
// not asserted: the kubelet publishes node status periodically); a job
// gets exactly the PF the kubelet allocated to it (PCIDEVICE_PROW_SRIOV,
// which multus also passes the plugin as deviceID).
func TestAgentAdvertisesAndTheJobGetsTheKubeletsPF(t *testing.T) {
	requireNodeWhole(t)
	want := len(pfNames())
	waitFor(t, fmt.Sprintf("allocatable prow/sriov = %d", want), time.Minute, func() (bool, error) {
		n, err := allocatableSRIOV()
		return n == want, err
	})
	byPCI := agentStatus(t)

	reserved := "/etc/pfscni-system-reserved-interfaces"
	pf := pfNames()[0]
	start := time.Now()
	if err := os.WriteFile(reserved+".tmp", []byte(pf+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(reserved+".tmp", reserved); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "allocatable drops with "+pf+" reserved", time.Minute, func() (bool, error) {
		n, err := allocatableSRIOV()
		return n == want-1, err
	})
	fmt.Printf("k8s-e2e: %s reserved -> allocatable %d in the API after %.1fs (node status every few seconds)\n", pf, want-1, time.Since(start).Seconds())
	start = time.Now()
	if err := os.Remove(reserved); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "allocatable back", time.Minute, func() (bool, error) {
		n, err := allocatableSRIOV()
		return n == want, err
	})
	fmt.Printf("k8s-e2e: reservation lifted -> allocatable %d in the API after %.1fs\n", want, time.Since(start).Seconds())

	got := runJob(t, 1, "pinned")
	alloc := strings.TrimSpace(kubectl(t, nil, "exec", "pinned", "--", "sh", "-c", "echo \"$PCIDEVICE_PROW_SRIOV\""))
	if byPCI[alloc].Name != got[0] {
		t.Fatalf("the kubelet allocated %s (%s), the job holds %s", alloc, byPCI[alloc].Name, got[0])
	}
	t.Logf("job holds %s = %s, the kubelet's allocation", got[0], alloc)
	deleteJobs(t)
}
