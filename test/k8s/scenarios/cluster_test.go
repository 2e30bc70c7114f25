//go:build k8s

// Package scenarios drives sriov-passthrough-cni through a real one-node
// Kubernetes (test/k8s/run.sh brings it up and runs this test binary inside
// the node's namespaces): the scheduler, the kubelet, containerd's CRI and
// multus hand the plugin a prow job pod's attachments, as on the CI cluster.
//
// The node's "SR-IOV NICs" are ifb links with a fake sysfs tree (node.sh).
// Each scenario asserts on the pods (kubectl) and on the node: after the pods
// are gone every device is back under its original name (devices are told
// apart by MAC, which the plugin never changes) and no record is left.
package scenarios

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

const (
	ns         = "default"
	stateDir   = "/var/lib/cni/sriov-passthrough" // the plugin's default
	networkRef = "multus-cni-ns/sriov-passthrough-cni"
	cniBinary  = "/opt/cni/bin/sriov-passthrough-cni"
)

var env struct {
	node, work, busybox string
}

// handedOut counts, by pod UID, the PFs seen inside each job pod that was
// Running: the stage's summary line is computed from it (dra_pods from
// draPods, those of them served through a DRA claim).
var handedOut = map[string]int{}

// device is one of the node's fake PF or VF netdevs.
type device struct {
	name, mac string
	pf        string // the PF it belongs to (itself for a PF)
}

var devices []device

func TestMain(m *testing.M) {
	env.node, env.work = os.Getenv("K8S_E2E_NODE"), os.Getenv("K8S_E2E_WORK")
	env.busybox = os.Getenv("BUSYBOX_IMAGE")
	if env.node == "" || env.work == "" {
		fmt.Println("scenarios: run through test/k8s/run.sh (make k8s-e2e), which brings up the cluster")
		os.Exit(2)
	}
	var err error
	if devices, err = loadDevices(os.Getenv("K8S_E2E_DEVICES")); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	code := m.Run()
	lost, misnamed := census()
	pfs := 0
	for _, n := range handedOut {
		pfs += n
	}
	summary := fmt.Sprintf("pods=%d dra_pods=%d pfs_handed_out=%d devices_lost=%d devices_misnamed=%d",
		len(handedOut), len(draPods), pfs, len(lost), len(misnamed))
	fmt.Printf("scenarios: %s lost=%v misnamed=%v\n", summary, lost, misnamed)
	if len(lost)+len(misnamed) > 0 && code == 0 {
		code = 1
	}
	if code == 0 {
		if err := os.WriteFile(filepath.Join(env.work, "summary"), []byte(summary), 0o644); err != nil {
			fmt.Println(err)
			code = 1
		}
	}
	os.Exit(code)
}

// loadDevices reads the list node.sh wrote when it made the links
// ("<ifindex>: <name>" lines) and takes each one's MAC from the kernel.
func loadDevices(path string) ([]device, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("device list: %w", err)
	}
	// One dump for all: net.InterfaceByName dumps every link of the netns
	// for each call, which on make bench-k8s's node of 2056 links takes
	// minutes.
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("device list: %w", err)
	}
	macs := map[string]string{}
	for _, i := range ifs {
		macs[i.Name] = i.HardwareAddr.String()
	}
	var out []device
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("device list: bad line %q", line)
		}
		mac, ok := macs[f[1]]
		if !ok {
			return nil, fmt.Errorf("device list: no link %q in the node's netns", f[1])
		}
		pf, _, _ := strings.Cut(f[1], "v") // ens1f0v3 is a VF of ens1f0
		out = append(out, device{name: f[1], mac: mac, pf: pf})
	}
	return out, nil
}

// census compares the node's netns with the devices it started with.
func census() (lost, misnamed []string) {
	byMAC := map[string]string{}
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		byMAC[i.HardwareAddr.String()] = i.Name
	}
	for _, d := range devices {
		switch name, ok := byMAC[d.mac]; {
		case !ok:
			lost = append(lost, d.name)
		case name != d.name:
			misnamed = append(misnamed, d.name+"->"+name)
		}
	}
	return lost, misnamed
}

func pfNames() []string {
	var out []string
	for _, d := range devices {
		if d.name == d.pf {
			out = append(out, d.name)
		}
	}
	return out
}

// requireNodeWhole waits (DEL runs after the pod object is gone) until every
// device is home under its own name and the plugin holds no record.
func requireNodeWhole(t *testing.T) {
	t.Helper()
	var lost, misnamed, records []string
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		lost, misnamed = census()
		records = stateRecords(t)
		if len(lost)+len(misnamed)+len(records) == 0 {
			return
		}
	}
	t.Fatalf("node not whole: lost %v, misnamed %v, records left %v", lost, misnamed, records)
}

// stateRecords lists what the plugin and the agent keep in the state dir:
// attachment records and, in the claim checkpoint's subdirectory (a DRA
// node's), the entries of prepared claims.
func stateRecords(t *testing.T) []string {
	entries, err := os.ReadDir(stateDir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		switch e.Name() {
		case "lock":
		case filepath.Base(claimsDir):
			claims, err := os.ReadDir(claimsDir)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range claims {
				out = append(out, filepath.Join(e.Name(), c.Name()))
			}
		default:
			out = append(out, e.Name())
		}
	}
	return out
}

// kubectl runs kubectl and returns its stdout, failing the test on error.
func kubectl(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	out, err := kubectlErr(stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func kubectlErr(stdin []byte, args ...string) (string, error) {
	return kubectlWithin(3*time.Minute, stdin, args...)
}

// kubectlWithin is kubectlErr with its own limit, for a command that waits
// (rollout status) and must end by its own --timeout, with its message.
func kubectlWithin(limit time.Duration, stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kubectl", args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// waitFor polls cond once a second until it returns true or timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	var last error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		ok, err := cond()
		if ok {
			return
		}
		last = err
	}
	t.Fatalf("timed out after %v waiting for %s (last error: %v)", timeout, what, last)
}

func sortedKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func decodeJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
}
