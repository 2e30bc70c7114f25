//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

const netName = "sriovpt-e2e"

// harness is one network configuration (written where cnitool finds it and
// loaded for libcni) with its own node configuration (state dir, log
// file), which every plugin it runs gets through SRIOVPT_NODE_CONFIG, and
// its own libcni cache.
type harness struct {
	t        *testing.T
	confDir  string
	nodeFile string
	stateDir string
	logFile  string
	cacheDir string
	list     *libcni.NetworkConfigList
	cni      *libcni.CNIConfig
}

// newHarness writes the config: the plugin's defaults plus extra fields.
// It also registers the final check that the VM is back to its baseline.
func newHarness(t *testing.T, extra map[string]any) *harness {
	t.Helper()
	requireHostRestored(t)
	dir := t.TempDir()
	h := &harness{
		t:        t,
		confDir:  filepath.Join(dir, "net.d"),
		nodeFile: filepath.Join(dir, "node.json"),
		stateDir: filepath.Join(dir, "state"),
		logFile:  filepath.Join(dir, "plugin.log"),
		cacheDir: filepath.Join(dir, "cache"),
	}
	h.setNode(nil)
	plugin := map[string]any{
		"type":     "sriov-passthrough-cni",
		"logLevel": "debug",
	}
	cniVersion := "1.1.0"
	for k, v := range extra {
		if k == "cniVersion" {
			cniVersion = v.(string)
			continue
		}
		plugin[k] = v
	}
	conf, err := json.MarshalIndent(map[string]any{
		"cniVersion": cniVersion,
		"name":       netName,
		"plugins":    []any{plugin},
	}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(h.confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.confDir, "10-sriovpt.conflist"), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	if h.list, err = libcni.NetworkConfFromBytes(conf); err != nil {
		t.Fatal(err)
	}
	h.cni = libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, h.cacheDir, h.exec())
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(h.logFile); err == nil {
				t.Logf("plugin log:\n%s", b)
			}
		}
	})
	return h
}

// setNode writes the harness's node configuration: its state dir and log
// file, and fields (node-only settings such as reservedInterfacesFile).
// The guest's own reserved-interfaces file stays the default.
func (h *harness) setNode(fields map[string]any) {
	h.t.Helper()
	n := map[string]any{"stateDir": h.stateDir, "logFile": h.logFile}
	for k, v := range fields {
		n[k] = v
	}
	writeNode(h.t, h.nodeFile, n)
}

// writeNode writes a node configuration file.
func writeNode(t testing.TB, path string, fields map[string]any) {
	t.Helper()
	b, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// nodeEnv is the environment variable that points a plugin at a node
// configuration: what the runtime's environment carries on a node that
// keeps it elsewhere than /etc/sriov-passthrough-cni/node.json.
func nodeEnv(path string) string { return config.NodeConfigEnv + "=" + path }

// exec runs plugins for libcni with the harness's node configuration.
func (h *harness) exec() invoke.Exec { return kerneltest.ExecWith(nodeEnv(h.nodeFile)) }

// pod is a network namespace made with ip netns, as a runtime would.
type pod struct {
	name string
	path string
}

var podSeq atomic.Int32

func (h *harness) newPod() *pod {
	h.t.Helper()
	p := &pod{name: fmt.Sprintf("e2e-pod%d", podSeq.Add(1))}
	p.path = "/var/run/netns/" + p.name
	run(h.t, "ip", "netns", "add", p.name)
	h.t.Cleanup(func() { p.remove() })
	return p
}

func (p *pod) remove() {
	if netnsExists(p.path) {
		_ = runQuiet("ip", "netns", "delete", p.name)
	}
}

func runQuiet(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// iface and result are the CNI result as JSON, decoded by hand so the test
// sees exactly the keys the plugin wrote.
type iface struct {
	Name    string `json:"name"`
	Mac     string `json:"mac"`
	Mtu     int    `json:"mtu"`
	Sandbox string `json:"sandbox"`
	PciID   string `json:"pciID"`
}

type result struct {
	CNIVersion string  `json:"cniVersion"`
	Interfaces []iface `json:"interfaces"`
	IPs        []any   `json:"ips"`
}

// pf is the PF's entry: the last interface, after the VFs, where multus
// v3.x looks for the attachment's interface.
func (r *result) pf() iface { return r.Interfaces[len(r.Interfaces)-1] }

func decodeResult(t testing.TB, b []byte) *result {
	t.Helper()
	var r result
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("decode CNI result: %v\n%s", err, b)
	}
	return &r
}

// cnitool runs the cnitool binary as a person would.
func (h *harness) cnitool(args ...string) (stdout string, err error) {
	cmd := exec.Command(cnitoolBin, args...)
	cmd.Env = append(os.Environ(), "CNI_PATH="+pluginDir, "NETCONFPATH="+h.confDir, nodeEnv(h.nodeFile))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("cnitool %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// cnitoolContainerID is the container ID cnitool derives from the netns path.
func cnitoolContainerID(netnsPath string) string {
	s := sha512.Sum512([]byte(netnsPath))
	return fmt.Sprintf("cnitool-%x", s[:10])
}

// toolAdd is `cnitool add` that must succeed; DEL is registered as cleanup.
func (h *harness) toolAdd(p *pod, ifname string) *result {
	h.t.Helper()
	h.t.Cleanup(func() { h.toolDel(p, ifname) })
	out, err := h.cnitool("add", netName, p.path, "-i", ifname)
	if err != nil {
		h.t.Fatal(err)
	}
	return decodeResult(h.t, []byte(out))
}

func (h *harness) toolDel(p *pod, ifname string) {
	h.t.Helper()
	if _, err := h.cnitool("del", netName, p.path, "-i", ifname); err != nil {
		h.t.Errorf("%v", err)
	}
}

func (h *harness) rt(p *pod, ifname string) *libcni.RuntimeConf {
	id := "e2e-" + p.name
	return &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       p.path,
		IfName:      ifname,
		Args: [][2]string{
			{"IgnoreUnknown", "true"},
			{"K8S_POD_NAMESPACE", "e2e"},
			{"K8S_POD_NAME", p.name},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
			{"K8S_POD_UID", "uid-" + p.name},
		},
	}
}

// libAdd is libcni's AddNetworkList, the code path of multus and cnitool.
func (h *harness) libAdd(p *pod, ifname string) (*result, error) {
	res, err := h.cni.AddNetworkList(context.Background(), h.list, h.rt(p, ifname))
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := res.PrintTo(&buf); err != nil {
		return nil, err
	}
	return decodeResult(h.t, buf.Bytes()), nil
}

// mustLibAdd is libAdd that must succeed; DEL is registered as cleanup.
func (h *harness) mustLibAdd(p *pod, ifname string) *result {
	h.t.Helper()
	h.t.Cleanup(func() {
		if err := h.libDel(p, ifname); err != nil {
			h.t.Errorf("cleanup DEL %s %s: %v", p.name, ifname, err)
		}
	})
	r, err := h.libAdd(p, ifname)
	if err != nil {
		h.t.Fatalf("ADD %s %s: %v", p.name, ifname, err)
	}
	return r
}

func (h *harness) libDel(p *pod, ifname string) error {
	return h.cni.DelNetworkList(context.Background(), h.list, h.rt(p, ifname))
}

func (h *harness) libCheck(p *pod, ifname string) error {
	return h.cni.CheckNetworkList(context.Background(), h.list, h.rt(p, ifname))
}

// cniCode is the CNI error code carried by err, or -1.
func cniCode(err error) int {
	var e *types.Error
	if errors.As(err, &e) {
		return int(e.Code)
	}
	return -1
}

// stateFiles lists what the plugin keeps in its state dir, lock file aside.
func (h *harness) records() []string {
	entries, err := os.ReadDir(h.stateDir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".json") {
			out = append(out, e.Name())
		}
	}
	return out
}
