//go:build k8s

package scenarios

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// 13. Allocate refuses a PF that is not free on the node. An engineer's
// attachment made by hand (the plugin run as cnitool runs it, into a netns
// of the test's own) holds the first PF. The agent reports it attached,
// Healthy as every held PF is, so the kubelet, which allocated it to no
// pod, counts it free: that is the window, and it stays open for as long
// as the attachment lives. A one-PF job is admitted on the other PF (the
// agent's preferred allocation puts free PFs first); a second one-PF job is
// scheduled (allocatable 2, one requested) and the kubelet has only the
// held PF left to allocate: the agent refuses it, and the kubelet fails the
// pod at admission (phase Failed, reason UnexpectedAdmissionError, the
// message naming the PF's PCI address) instead of starting it into a CNI
// ADD that would fail and leave it in ContainerCreating. Once the
// attachment is deleted as cnitool would, the node is whole and a two-PF
// job gets both PFs. Printed: the time from the refused pod's creation to
// its Failed phase in the API.
func TestAllocateRefusesAPFThatIsNotFree(t *testing.T) {
	requireNodeWhole(t)
	want := len(pfNames())
	waitAllocatable(t, want, "before")
	pf := pfNames()[0]
	pci := pciOf(t, pf)
	start := time.Now()
	detach := attachByHand(t, pf, pci)
	// The running agent's own view, which Allocate answers from (status
	// runs a look of its own).
	waitAgentLogged(t, `msg=PF .*pci=`+regexp.QuoteMeta(pci)+` .*phase=attached healthy=true`, start)
	if p := agentStatus(t)[pci]; p.Phase != "attached" || p.Holder == nil || p.Holder.Pod != "default/by-hand" {
		t.Fatalf("agent status of %s held by hand: %+v", pf, p)
	}
	waitAllocatable(t, want, "with "+pf+" held by hand (Healthy: the kubelet counts it)")

	beside := runJob(t, 1, "beside-by-hand")
	// A job's cleanup wants the node whole: undo the attachment first.
	t.Cleanup(detach)
	if beside[0] == pf {
		t.Fatalf("the job beside the attachment made by hand got %s, which it holds", pf)
	}
	created := time.Now()
	createJob(t, 1, "refused")
	t.Cleanup(detach)
	var st podStatus
	waitFor(t, "pod refused Failed", 2*time.Minute, func() (bool, error) {
		var err error
		st, err = getPodStatus("refused")
		return st.Phase == "Failed", err
	})
	took := time.Since(created)
	if st.Reason != "UnexpectedAdmissionError" || !strings.Contains(st.Message, pci) {
		t.Fatalf("refused pod: phase %s reason %q message %q; want Failed, UnexpectedAdmissionError, naming %s", st.Phase, st.Reason, st.Message, pci)
	}
	if st.Started {
		t.Fatalf("refused pod had a container made: %+v", st)
	}
	requireNoneCreating(t)
	t.Logf("refused: %s: %s", st.Reason, st.Message)
	fmt.Printf("k8s-e2e: a one-PF job offered %s (held by hand) -> Failed at admission (%s) %.1fs after its creation\n", pci, st.Reason, took.Seconds())
	waitAgentLogged(t, `msg="allocation refused" .*pfs=`+regexp.QuoteMeta(pci), created)

	detach()
	deleteJobs(t)
	runJob(t, 2, "after-refusal")
}

// attachByHand makes an attachment of pf the kubelet knows nothing of: the
// plugin's ADD, run as cnitool runs it (the node's requireDeviceID wants
// the PF named), into a netns the test made. It returns the DEL that
// undoes it, which may be called more than once, and registers it.
func attachByHand(t *testing.T, pf, pci string) func() {
	t.Helper()
	netns := "sriovpt-by-hand"
	ip(t, "netns", "add", netns)
	detach := sync.OnceFunc(func() {
		if out, err := cniByHand("DEL", netns, pci); err != nil {
			t.Errorf("DEL by hand: %v\n%s", err, out)
		}
		bringAllHome(t, netns)
	})
	t.Cleanup(detach)
	if out, err := cniByHand("ADD", netns, pci); err != nil {
		t.Fatalf("ADD by hand: %v\n%s", err, out)
	}
	requireAllIn(t, netns, pf, "attachment made by hand")
	return detach
}

// cniByHand runs the installed plugin with a CNI command, as libcni does,
// for container "by-hand" and the netns of that name under /var/run/netns.
func cniByHand(command, netns, pci string) ([]byte, error) {
	conf, _ := json.Marshal(map[string]string{
		"cniVersion": "1.1.0", "name": "sriov-passthrough-cni", "type": "sriov-passthrough-cni", "deviceID": pci,
	})
	cmd := exec.Command(cniBinary)
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID=sriovpt-by-hand",
		"CNI_NETNS=/var/run/netns/"+netns, "CNI_IFNAME=net1", "CNI_PATH=/opt/cni/bin",
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=by-hand")
	cmd.Stdin = bytes.NewReader(conf)
	return cmd.CombinedOutput()
}

// pciOf returns the PCI address of one of the node's PFs, from the fake
// sysfs tree node.sh made (class/net/<name>/device), which the plugin and
// the agent read.
func pciOf(t *testing.T, pf string) string {
	t.Helper()
	dev, err := filepath.EvalSymlinks(filepath.Join(fakeSysfs, "class", "net", pf, "device"))
	if err != nil {
		t.Fatalf("PCI address of %s: %v", pf, err)
	}
	return filepath.Base(dev)
}

// fakeSysfs is node.sh's fake sysfs tree (the node config's sysfsRoot).
const fakeSysfs = "/run/sriovpt-sys"

type podStatus struct {
	Phase, Reason, Message string
	// Started is set when any of the pod's containers was made: a pod
	// refused at admission never gets that far.
	Started bool
}

func getPodStatus(name string) (podStatus, error) {
	out, err := kubectlErr(nil, "get", "pod", name, "-o", "json")
	if err != nil {
		return podStatus{}, err
	}
	var p struct {
		Status struct {
			Phase, Reason, Message string
			ContainerStatuses      []struct {
				ContainerID string `json:"containerID"`
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		return podStatus{}, err
	}
	s := p.Status
	st := podStatus{Phase: s.Phase, Reason: s.Reason, Message: s.Message}
	for _, c := range s.ContainerStatuses {
		st.Started = st.Started || c.ContainerID != ""
	}
	return st, nil
}

// requireNoneCreating asserts that no pod of the cluster has a container
// waiting in ContainerCreating.
func requireNoneCreating(t *testing.T) {
	t.Helper()
	out := kubectl(t, nil, "get", "pods", "-A", "-o",
		`jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name} {.status.containerStatuses[*].state.waiting.reason}{"\n"}{end}`)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "ContainerCreating") {
			t.Fatalf("a pod sits in ContainerCreating: %s\n%s", line, out)
		}
	}
}

func agentPod(t *testing.T) string {
	t.Helper()
	return strings.TrimSpace(kubectl(t, nil, "-n", "sriov-passthrough-cni", "get", "pod", "-o", "jsonpath={.items[0].metadata.name}"))
}
