//go:build k8s

package scenarios

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The DRA pass (run.sh K8S_DRA=1, make k8s-e2e's third): the same node and
// jobs, but the agent is a DRA kubelet plugin (deploy/components/dra), the
// scheduler serves prow/sriov from the DeviceClass's extendedResourceName,
// containerd v2 applies the claim's CDI edits, and the CNI takes the PF of
// the pod's prepared claim from the checkpoint. The TestDRA* scenarios run
// only there; the device-plugin ones only elsewhere (run.sh selects).

const (
	draDriver = "sriov-passthrough.kubevirt.io"
	// claimsDir is the claim checkpoint (pkg/claims) under the state dir.
	claimsDir = stateDir + "/dra-claims"
)

// draPods counts, by pod UID, the PFs of each job pod that was Running with
// a prepared claim: the summary line's dra_pods.
var draPods = map[string]int{}

func requireDRA(t *testing.T) {
	t.Helper()
	if os.Getenv("K8S_DRA") != "1" {
		t.Skip("the DRA pass only (run.sh K8S_DRA=1)")
	}
}

// dra is the DRA node's allocation: a job is checked through its claim, the
// node is whole only with no claim left, and the node offers its PFs in
// its ResourceSlice.
var dra = allocation{check: checkDRAJob, whole: requireDRANodeWhole, offered: waitSliceDevices, pending: "cannot allocate all claims"}

// 1. The README's prow-job pods, unchanged, on a DRA node: one PF, then two.
func TestDRAReadmeProwJobs(t *testing.T) { requireDRA(t); readmeProwJobs(t, dra) }

// 2. Two PFs, three one-PF jobs: the scheduler allocates two claims and
// keeps the third pod Pending until a PF's claim is deallocated.
func TestDRAThirdJobWaitsForAPF(t *testing.T) { requireDRA(t); thirdJobWaitsForAPF(t, dra) }

// 3. Delete and force delete give both PFs back: the claim is unprepared
// (its checkpoint entry and CDI spec go), deallocated and deleted, and a
// two-PF job runs next.
func TestDRADeleteAndForceDeleteGiveBack(t *testing.T) {
	requireDRA(t)
	deleteAndForceDeleteGiveBack(t, dra)
}

// 4. The kubelet and the agent killed (SIGKILL) while two jobs hold a PF
// each: the jobs keep their PFs and claims, the checkpoint keeps both
// entries, the slice keeps both devices, and a job created afterwards gets
// the PF a deleted one gave back.
func TestDRARestartsLoseNothing(t *testing.T) {
	requireDRA(t)
	requireDRANodeWhole(t)
	want := len(pfNames())
	held := map[string][]string{"dra-during-a": dra.runJob(t, 1, "dra-during-a"), "dra-during-b": dra.runJob(t, 1, "dra-during-b")}
	for _, what := range []string{"kubelet", "agent"} {
		if what == "kubelet" {
			restart(t, "kubelet")
		} else {
			killAgent(t)
		}
		for _, name := range sortedKeys(held) {
			waitRunning(t, name)
			waitFor(t, "exec into "+name+" after the "+what+" restart", 2*time.Minute, func() (bool, error) {
				_, err := kubectlErr(nil, "exec", name, "--", "true")
				return err == nil, err
			})
			if got := checkDRAJob(t, name, 1); !slices.Equal(got, held[name]) {
				t.Fatalf("after the %s restart %s holds %v, had %v", what, name, got, held[name])
			}
		}
		waitSliceDevices(t, want, "after the "+what+" restart")
	}
	kubectl(t, nil, "delete", "pod", "dra-during-a")
	if got := dra.runJob(t, 1, "dra-after-restarts"); !slices.Equal(got, held["dra-during-a"]) {
		t.Fatalf("the job after the restarts got %v, want %v, the deleted job's", got, held["dra-during-a"])
	}
}

// 5. A PF that comes back late leaves the ResourceSlice and returns to it.
func TestDRAPFComesBackLate(t *testing.T) { requireDRA(t); pfComesBackLate(t, dra) }

// 6. The node switched to the device plugin and back, as docs/dra.md says,
// with no job on it: node.json's allocation set through the generator, and
// the DaemonSet rolls. On the device plugin the driver's slice goes (the
// kubelet deletes a driver's slices a while after its plugin unregisters),
// allocatable prow/sriov comes back, and a job is served from it with no
// claim. Back on DRA the kubelet keeps the device plugin's prow/sriov in
// the node's status at 0 (it never drops a resource a plugin once
// advertised), the scheduler and the kubelet take an extended resource at
// 0 as no device plugin's (kubernetes#133784), and a job is served through
// a claim again. The node stays on DRA at the end, whatever happens.
func TestDRASwitchNodeToTheDevicePluginAndBack(t *testing.T) {
	requireDRA(t)
	requireDRANodeWhole(t)
	want := len(pfNames())
	waitSliceDevices(t, want, "before the switch")
	draOverlay := currentOverlay(t)
	t.Cleanup(func() {
		if out, err := kubectlErr(nil, "apply", "-k", draOverlay); err != nil {
			t.Errorf("putting the node back on DRA: %v\n%s", err, out)
		}
	})

	start := time.Now()
	applyAndRoll(t, nodeConfigOverlay(t, draOverlay, "allocation", "devicePlugin"))
	waitAllocatable(t, want, "on the device plugin")
	waitSliceDevices(t, 0, "once the DRA plugin is gone")
	toDevicePlugin := time.Since(start)
	devicePlugin.runJob(t, 1, "switched-to-dp")
	requireNoClaim(t, "switched-to-dp")
	deleteJobs(t)
	requireNodeWhole(t)

	start = time.Now()
	applyAndRoll(t, draOverlay)
	waitSliceDevices(t, want, "back on DRA")
	waitAllocatable(t, 0, "back on DRA (the device plugin's prow/sriov kept at 0)")
	back := time.Since(start)
	dra.runJob(t, 1, "switched-back-to-dra")
	deleteJobs(t)
	requireDRANodeWhole(t)
	fmt.Printf("k8s-e2e: node switched DRA -> device plugin: allocatable %d, slice empty after %.1fs; back to DRA: %d devices in the slice, allocatable 0 after %.1fs; a job served each way\n",
		want, toDevicePlugin.Seconds(), want, back.Seconds())
}

// requireNoClaim checks that the job pod was served by the device plugin:
// no claim in its status and none in its namespace.
func requireNoClaim(t *testing.T, name string) {
	t.Helper()
	st := strings.TrimSpace(kubectl(t, nil, "get", "pod", name, "-o", "jsonpath={.status.extendedResourceClaimStatus}"))
	claims := strings.TrimSpace(kubectl(t, nil, "-n", ns, "get", "resourceclaims", "-o", "name"))
	if st != "" || claims != "" {
		t.Fatalf("pod %s on the device plugin: extendedResourceClaimStatus %q, claims %q; want neither", name, st, claims)
	}
}

// checkDRAJob is checkJob plus what DRA adds: the pod's status names the
// claim the scheduler made for prow/sriov, the claim is allocated the
// PFs the pod holds and reserved for the pod, the node's checkpoint has
// its entry (the pod, its PFs), and the container got
// PCIDEVICE_PROW_SRIOV through the claim's CDI device.
func checkDRAJob(t *testing.T, name string, pfs int) []string {
	t.Helper()
	given := checkJob(t, name, pfs)
	var pcis []string
	for _, pf := range given {
		pcis = append(pcis, pciOf(t, pf))
	}
	slices.Sort(pcis)

	var pod struct {
		Metadata struct {
			UID string `json:"uid"`
		} `json:"metadata"`
		Status struct {
			Claims *struct {
				Name     string `json:"resourceClaimName"`
				Mappings []struct {
					Container string `json:"containerName"`
					Resource  string `json:"resourceName"`
					Request   string `json:"requestName"`
				} `json:"requestMappings"`
			} `json:"extendedResourceClaimStatus"`
		} `json:"status"`
	}
	decodeJSON(t, kubectl(t, nil, "get", "pod", name, "-o", "json"), &pod)
	st := pod.Status.Claims
	if st == nil || st.Name == "" || len(st.Mappings) == 0 || st.Mappings[0].Resource != "prow/sriov" {
		t.Fatalf("pod %s: extendedResourceClaimStatus %+v, want a claim for prow/sriov", name, st)
	}

	claim := readClaim(t, st.Name)
	var devs []string
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver == draDriver && r.Pool == env.node {
			devs = append(devs, r.Device)
		}
	}
	slices.Sort(devs)
	if want := deviceNames(pcis); !slices.Equal(devs, want) {
		t.Fatalf("claim %s is allocated %v, the pod holds %v (%v)", st.Name, devs, want, given)
	}
	if !slices.ContainsFunc(claim.Status.ReservedFor, func(r claimConsumer) bool { return r.UID == pod.Metadata.UID }) {
		t.Fatalf("claim %s is reserved for %+v, not pod %s (%s)", st.Name, claim.Status.ReservedFor, name, pod.Metadata.UID)
	}

	e := readCheckpoint(t, claim.Metadata.UID)
	if e.Claim.Name != st.Name || !slices.Equal(e.PFs, pcis) ||
		!slices.ContainsFunc(e.Pods, func(p ref) bool { return p.Name == name && p.UID == pod.Metadata.UID }) {
		t.Fatalf("checkpoint entry of claim %s: %+v, want pod %s (%s) with %v", st.Name, e, name, pod.Metadata.UID, pcis)
	}

	envVar := strings.TrimSpace(kubectl(t, nil, "exec", name, "--", "sh", "-c", `echo "$PCIDEVICE_PROW_SRIOV"`))
	if envVar != strings.Join(pcis, ",") {
		t.Fatalf("pod %s: PCIDEVICE_PROW_SRIOV=%q, want %q (the claim's CDI device)", name, envVar, strings.Join(pcis, ","))
	}
	draPods[pod.Metadata.UID] = len(given)
	t.Logf("pod %s: claim %s (%s), checkpoint entry, PCIDEVICE_PROW_SRIOV=%s", name, st.Name, strings.Join(devs, ","), envVar)
	return given
}

type claimConsumer struct {
	Resource string `json:"resource"`
	Name     string `json:"name"`
	UID      string `json:"uid"`
}

type resourceClaim struct {
	Metadata struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"metadata"`
	Status struct {
		Allocation struct {
			Devices struct {
				Results []struct {
					Request string `json:"request"`
					Driver  string `json:"driver"`
					Pool    string `json:"pool"`
					Device  string `json:"device"`
				} `json:"results"`
			} `json:"devices"`
		} `json:"allocation"`
		ReservedFor []claimConsumer `json:"reservedFor"`
	} `json:"status"`
}

func readClaim(t *testing.T, name string) resourceClaim {
	t.Helper()
	var c resourceClaim
	decodeJSON(t, kubectl(t, nil, "get", "resourceclaim", name, "-o", "json"), &c)
	return c
}

// ref and checkpointEntry are pkg/claims' entry as the file holds it, read
// here as a person on the node would read it.
type ref struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

type checkpointEntry struct {
	Claim ref      `json:"claim"`
	Pods  []ref    `json:"pods"`
	PFs   []string `json:"pfs"`
}

func readCheckpoint(t *testing.T, claimUID string) checkpointEntry {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(claimsDir, claimUID+".json"))
	if err != nil {
		t.Fatalf("checkpoint entry: %v", err)
	}
	var e checkpointEntry
	if err := json.Unmarshal(data, &e); err != nil {
		t.Fatalf("checkpoint entry %s: %v\n%s", claimUID, err, data)
	}
	return e
}

// deviceNames are the slice's names of the PFs at pcis (pkg/dra's
// DeviceName: "pf-" and the address with '-' for ':' and '.').
func deviceNames(pcis []string) []string {
	var out []string
	for _, pci := range pcis {
		out = append(out, "pf-"+strings.NewReplacer(":", "-", ".", "-").Replace(pci))
	}
	return out
}

// requireDRANodeWhole is requireNodeWhole (every device home, no record, no
// checkpoint entry) plus no ResourceClaim left in the jobs' namespace: the
// scheduler allocates a job's PFs only once the previous claim is gone.
func requireDRANodeWhole(t *testing.T) {
	t.Helper()
	requireNodeWhole(t)
	waitFor(t, "no ResourceClaim left in namespace "+ns, 2*time.Minute, func() (bool, error) {
		out, err := kubectlErr(nil, "-n", ns, "get", "resourceclaims", "-o", "name")
		return err == nil && strings.TrimSpace(out) == "", err
	})
}

// sliceDevices counts the devices of the driver in the node's ResourceSlices.
func sliceDevices() (int, error) {
	out, err := kubectlErr(nil, "get", "resourceslices", "--field-selector", "spec.nodeName="+env.node+",spec.driver="+draDriver,
		"-o", `jsonpath={range .items[*].spec.devices[*]}{.name}{"\n"}{end}`)
	return len(strings.Fields(out)), err
}

func waitSliceDevices(t *testing.T, want int, when string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d devices in the ResourceSlice %s", want, when), 2*time.Minute, func() (bool, error) {
		n, err := sliceDevices()
		return n == want, err
	})
}

// killAgent SIGKILLs the agent, as a crash would, and waits until its
// container runs again and is ready (registered with the kubelet).
func killAgent(t *testing.T) {
	t.Helper()
	pod := agentPod(t)
	restarts := agentRestarts(t, pod)
	pid := agentPid(t)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill agent (%d): %v", pid, err)
	}
	waitFor(t, "agent container restarted", 2*time.Minute, func() (bool, error) {
		return agentRestarts(t, pod) > restarts, nil
	})
	waitFor(t, "agent ready again", 2*time.Minute, func() (bool, error) {
		out, err := kubectlErr(nil, "-n", "sriov-passthrough-cni", "get", "pod", pod, "-o",
			`jsonpath={.status.containerStatuses[?(@.name=="agent")].ready}`)
		return strings.TrimSpace(out) == "true", err
	})
	t.Logf("agent killed (pid %d) and restarted (pid %d)", pid, agentPid(t))
}
