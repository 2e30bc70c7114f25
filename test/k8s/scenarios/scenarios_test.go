//go:build k8s

package scenarios

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// allocation is how the pass's node hands out prow/sriov: the device plugin
// (the kubelet's allocatable, its Allocate) or DRA (a claim the scheduler
// allocates from the node's ResourceSlice). The scenarios that both serve
// run through it, each mode under its own test name.
type allocation struct {
	// check asserts that the Running job pod holds pfs PFs, and what the
	// mode adds to that; it returns the PFs.
	check func(t *testing.T, name string, pfs int) []string
	// whole waits until the node has every device back and keeps nothing
	// of any job.
	whole func(t *testing.T)
	// offered waits until the node offers want PFs in the API.
	offered func(t *testing.T, want int, when string)
	// pending is what the scheduler's message says of a pod for which no
	// PF is left.
	pending string
}

var devicePlugin = allocation{check: checkJob, whole: requireNodeWhole, offered: waitAllocatable, pending: "prow/sriov"}

// 1. The README's prow-job pods, one PF and two PFs, run with their PFs.
func TestReadmeProwJobs(t *testing.T) { readmeProwJobs(t, devicePlugin) }

func readmeProwJobs(t *testing.T, a allocation) {
	a.whole(t)
	got := a.runJob(t, 1, "one-pf")
	deleteJobs(t)
	if len(got) != 1 {
		t.Fatalf("one-PF job holds %v", got)
	}
	both := a.runJob(t, 2, "two-pf")
	slices.Sort(both)
	if !slices.Equal(both, pfNames()) {
		t.Fatalf("two-PF job holds %v, want the node's %v", both, pfNames())
	}
}

// 2. Two PFs, three one-PF jobs: the scheduler runs two and keeps the third
// Pending for prow/sriov until one of the two is deleted.
func TestThirdJobWaitsForAPF(t *testing.T) { thirdJobWaitsForAPF(t, devicePlugin) }

func thirdJobWaitsForAPF(t *testing.T, a allocation) {
	a.whole(t)
	held := map[string][]string{}
	for _, name := range []string{"job-a", "job-b", "job-c"} {
		createJob(t, 1, name)
	}
	waitFor(t, "two of three jobs Running", 3*time.Minute, func() (bool, error) {
		n := 0
		for _, name := range []string{"job-a", "job-b", "job-c"} {
			if p, _ := phase(name); p == "Running" {
				n++
			}
		}
		return n == 2, nil
	})
	var waiting string
	for _, name := range []string{"job-a", "job-b", "job-c"} {
		if p, _ := phase(name); p == "Running" {
			held[name] = a.check(t, name, 1)
		} else {
			waiting = name
		}
	}
	msg := kubectl(t, nil, "get", "pod", waiting, "-o",
		`jsonpath={.status.phase} {.status.conditions[?(@.type=="PodScheduled")].status} {.status.conditions[?(@.type=="PodScheduled")].message}`)
	if !strings.HasPrefix(msg, "Pending False ") || !strings.Contains(msg, a.pending) {
		t.Fatalf("third job %s: %q, want Pending, not scheduled: %q", waiting, msg, a.pending)
	}
	t.Logf("third job %s: %s", waiting, msg)
	victim := sortedKeys(held)[0]
	start := time.Now()
	kubectl(t, nil, "delete", "pod", victim, "--wait=false")
	waitRunning(t, waiting)
	elapsed := time.Since(start)
	got := a.check(t, waiting, 1)
	if !slices.Equal(got, held[victim]) {
		t.Fatalf("third job got %v, want %v, the PF the deleted job held", got, held[victim])
	}
	fmt.Printf("k8s-e2e: third job Running %.1fs after a PF holder was deleted\n", elapsed.Seconds())
}

// 3. Delete and force-delete give every device back; the next job gets it.
func TestDeleteAndForceDeleteGiveBack(t *testing.T) { deleteAndForceDeleteGiveBack(t, devicePlugin) }

func deleteAndForceDeleteGiveBack(t *testing.T, a allocation) {
	a.whole(t)
	for _, force := range []bool{false, true} {
		name := map[bool]string{false: "deleted", true: "force-deleted"}[force]
		a.runJob(t, 2, name)
		args := []string{"delete", "pod", name, "--wait=false"}
		if force {
			// The API object goes at once; the kubelet still stops the
			// sandbox, and with it runs DEL, before the netns goes.
			args = append(args, "--grace-period=0", "--force")
		}
		kubectl(t, nil, args...)
		a.whole(t)
		t.Logf("force=%v: every device back on the node, no record left", force)
	}
	// Only a node with both PFs back can run the two-PF job.
	a.runJob(t, 2, "next")
}

// 4. The kubelet, containerd and the installer pod killed and restarted
// while jobs hold PFs: the jobs keep them, and they all come back.
func TestRestartsLoseNothing(t *testing.T) {
	requireNodeWhole(t)
	a := runJob(t, 1, "during-a")
	b := runJob(t, 1, "during-b")
	for _, c := range []string{"kubelet", "containerd"} {
		restart(t, c)
		for name, pfs := range map[string][]string{"during-a": a, "during-b": b} {
			waitRunning(t, name)
			// A restarted kubelet serves exec only once it has synced the pod.
			waitFor(t, "exec into "+name+" after "+c+" restart", 2*time.Minute, func() (bool, error) {
				_, err := kubectlErr(nil, "exec", name, "--", "true")
				return err == nil, err
			})
			if got := checkJob(t, name, 1); !slices.Equal(got, pfs) {
				t.Fatalf("after %s restart %s holds %v, had %v", c, name, got, pfs)
			}
		}
	}
	kubectl(t, nil, "-n", "sriov-passthrough-cni", "delete", "pod", "-l", "app.kubernetes.io/name=sriov-passthrough-cni")
	rolloutStatus(t, 3*time.Minute)
	kubectl(t, nil, "delete", "pod", "during-a")
	runJob(t, 1, "after-restarts")
}

// restart kills a node component with SIGKILL, as a crash would, and waits
// for its supervisor (node.sh) to start it again and the node to be Ready.
func restart(t *testing.T, name string) {
	t.Helper()
	pidFile := filepath.Join(env.work, "pids", name)
	old := readPid(t, pidFile)
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s (%d): %v", name, old, err)
	}
	waitFor(t, name+" restarted", time.Minute, func() (bool, error) {
		return readPid(t, pidFile) != old, nil
	})
	waitFor(t, "node Ready after "+name+" restart", 2*time.Minute, func() (bool, error) {
		out, err := kubectlErr(nil, "get", "node", env.node, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return out == "True", err
	})
	t.Logf("%s killed (pid %d) and restarted (pid %d)", name, old, readPid(t, pidFile))
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// 5. A DaemonSet upgrade to a new image version replaces the installed
// binary atomically while a job holds a PF and others come and go: every
// read of the file sees the old binary or the new one, never a mix.
func TestDaemonSetUpgrade(t *testing.T) {
	requireNodeWhole(t)
	// The scenarios run in any order (node.sh shuffles them): upgrade from
	// whichever of the two images is installed to the other.
	from, to := os.Getenv("PLUGIN_TAG_A"), os.Getenv("PLUGIN_TAG_B")
	if fileHash(t, cniBinary) == binaryHash(t, to) {
		from, to = to, from
	}
	old, new := binaryHash(t, from), binaryHash(t, to)
	if h := fileHash(t, cniBinary); h != old {
		t.Fatalf("installed binary is neither image %s's nor %s's", from, to)
	}
	t.Logf("upgrading the DaemonSet from image %s to %s", from, to)
	held := runJob(t, 1, "long-job")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	// Once the new binary is in place the old one never comes back: the
	// new pod's installer wrote last, and the old pod's leaves it (an
	// installer that put its own back would keep the new pod unready and
	// the surge rollout waiting on it).
	var reads, oldSeen, newSeen, backToOld int
	var torn error
	wg.Add(1)
	go func() { // reads the installed binary over and over during the rollout
		defer wg.Done()
		lastNew := false
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(cniBinary)
			h := fmt.Sprintf("%x", sha256.Sum256(b))
			switch {
			case err != nil:
				torn = fmt.Errorf("read %s: %w", cniBinary, err)
			case h == old:
				if lastNew {
					backToOld++
				}
				oldSeen++
				lastNew = false
			case h == new:
				newSeen++
				lastNew = true
			default:
				torn = fmt.Errorf("read %d: %s is neither version (%d bytes)", reads, cniBinary, len(b))
			}
			reads++
			if torn != nil {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	applied := time.Now()
	kubectl(t, nil, "apply", "-k", filepath.Join(env.work, "overlay-"+to))
	// Jobs come and go on the other PF while the new installer and agent
	// start. A pod the kubelet admits while the agent's pod is being
	// replaced finds no device plugin for prow/sriov and is failed at
	// admission (UnexpectedAdmissionError): the kubelet's own rule for any
	// device plugin's restart. A bare pod is never retried, so the job's
	// owner (prow, here the test) creates it again; the count is printed.
	refused := 0
	for i := range 3 {
		name := fmt.Sprintf("churn-%d", i)
		refused += runJobThroughHandover(t, 1, name)
		kubectl(t, nil, "delete", "pod", name)
	}
	fmt.Printf("k8s-e2e: %d job pods refused at admission while the agent was replaced, created again\n", refused)
	// The DaemonSet surges: the new agent registers before the old one
	// stops, so a v1.37 kubelet (device plugins keyed by socket) has a
	// device plugin all along. A v1.36 or older kubelet keys them by
	// resource name: when the old agent's stream ends it disconnects the
	// client registered last, the new agent's, and marks prow/sriov
	// unhealthy until the agent registers again (tens of milliseconds;
	// printReRegistration shows it). A job admitted in that window is
	// refused; that is the kubelet's rule, and the docs say so.
	if refused > 0 && kubeletMinor(t) >= 37 {
		t.Errorf("%d job pods refused at admission during the surge rollout: the kubelet was left without a prow/sriov device plugin", refused)
	}
	rolloutStatus(t, 3*time.Minute)
	waitFor(t, "new binary installed", time.Minute, func() (bool, error) { return fileHash(t, cniBinary) == new, nil })
	close(stop)
	wg.Wait()
	if torn != nil {
		t.Fatal(torn)
	}
	t.Logf("binary read %d times during the upgrade: %d old, %d new, none torn", reads, oldSeen, newSeen)
	if backToOld > 0 {
		t.Errorf("the old binary came back %d times after the new one was installed: an installer put its own back over the newer one's", backToOld)
	}
	if got := checkJob(t, "long-job", 1); !slices.Equal(got, held) {
		t.Fatalf("long job holds %v after the upgrade, had %v", got, held)
	}
	version := runBinaryVersion(t)
	if !strings.Contains(version, to) {
		t.Fatalf("installed binary reports %q, want version %s", version, to)
	}
	// The job that started under the old binary is released by the new one.
	kubectl(t, nil, "delete", "pod", "long-job")
	requireNodeWhole(t)
	runJob(t, 2, "after-upgrade")
	printReRegistration(t, applied)
}

// printReRegistration says whether, in the surge rollout since the given
// time, the kubelet dropped the new agent's registration when the old
// agent's stream ended, and how soon the agent registered again: a kubelet
// of v1.36 or older keys device plugins by resource name and drops the
// client registered last, v1.37 keys them by socket and keeps it. Printed,
// not asserted: the jobs admitted after the rollout are the proof.
func printReRegistration(t *testing.T, since time.Time) {
	t.Helper()
	waitFor(t, "the old agent pod gone", 2*time.Minute, func() (bool, error) {
		out, err := kubectlErr(nil, "-n", "sriov-passthrough-cni", "get", "pod", "-o", "name")
		return len(strings.Fields(out)) == 1, err
	})
	dropped, err := agentLoggedAfter(`msg="the kubelet ended our device list stream; registering again"`, since)
	if err != nil {
		t.Fatal(err)
	}
	story := "the kubelet kept the new agent's registration when the old agent's stream ended"
	if dropped >= 0 {
		again, err := agentLoggedAfter(`msg="registered with the kubelet"`, since.Add(dropped))
		if err != nil {
			t.Fatal(err)
		}
		story = fmt.Sprintf("the kubelet dropped the new agent's registration when the old agent's stream ended; it registered again %s later",
			again.Round(time.Millisecond))
	}
	fmt.Printf("k8s-e2e: surge rollout, kubelet v1.%d: %s\n", kubeletMinor(t), story)
}

func binaryHash(t *testing.T, tag string) string {
	return fileHash(t, filepath.Join(env.work, "build", tag, "sriov-passthrough-cni"))
}

func fileHash(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

func runBinaryVersion(t *testing.T) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(cniBinary, "--version")
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out.String())
}

// runJobThroughHandover runs a job as runJob does, but creates it again
// when the kubelet refused it at admission for want of a prow/sriov device
// plugin (the agent being replaced); any other failure fails the test. It
// returns how many times the pod was refused.
func runJobThroughHandover(t *testing.T, pfs int, name string) int {
	t.Helper()
	for refused := 0; ; refused++ {
		createJob(t, pfs, name)
		var p string
		waitFor(t, "pod "+name+" Running or refused at admission", 3*time.Minute, func() (bool, error) {
			var err error
			p, err = phase(name)
			return p == "Running" || p == "Failed", err
		})
		if p == "Running" {
			checkJob(t, name, pfs)
			return refused
		}
		why, _ := kubectlErr(nil, "get", "pod", name, "-o", "jsonpath={.status.reason}: {.status.message}")
		if !strings.HasPrefix(why, "UnexpectedAdmissionError") || !strings.Contains(why, "prow/sriov") || refused == 4 {
			waitRunning(t, name) // describes the pod and fails
		}
		t.Logf("%s refused at admission while the agent was replaced (%s); created again", name, why)
		kubectl(t, nil, "delete", "pod", name)
	}
}
