package plugin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// On a node whose configuration says requireDeviceID (it runs the agent),
// ADD takes exactly the PF the kubelet allocated, as multus passes it
// (top-level deviceID), and refuses an attachment without one instead of
// choosing a PF the kubelet may count as free.
func TestRequireDeviceIDFailsClosed(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 1)
	second := e.AddPF("ens2f0", 1)
	e.SetNode(map[string]any{"requireDeviceID": true})
	_, err := call(t, e, "ADD", args(e.NewPod(), "c1", "net1", e.Conf(nil)))
	if cniCode(t, err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "no deviceID") || !strings.Contains(err.Error(), e.NodeFile) {
		t.Fatalf("ADD without deviceID: %v", err)
	}
	assertHostIntact(t, e)
	pinned := e.Conf(map[string]any{"deviceID": second.PCI})
	res := add(t, e, e.NewPod(), "c2", "net1", pinned)
	if pfOf(res).PciID != second.PCI {
		t.Fatalf("took %s, want the allocated %s", pfOf(res).PciID, second.PCI)
	}
}

// A NAD that sets a node-only field is refused before anything is touched:
// not another state dir (a second lock domain), not "no node file" (which
// would drop requireDeviceID), not a sysfs, log or reservations file.
func TestNodeOnlyFieldsInTheNADTouchNothing(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 1)
	e.SetNode(map[string]any{"requireDeviceID": true})
	elsewhere := t.TempDir()
	for field, value := range map[string]any{
		"stateDir": elsewhere, "nodeConfigFile": "", "sysfsRoot": e.SysfsRoot,
		"logFile": filepath.Join(elsewhere, "log"), "reservedInterfacesFile": "",
	} {
		conf := e.Conf(map[string]any{"deviceID": pf.PCI, field: value})
		_, err := call(t, e, "ADD", args(e.NewPod(), "c1", "net1", conf))
		if cniCode(t, err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), `"`+field+`"`) {
			t.Errorf("ADD with %s in the NAD: %v", field, err)
		}
		assertHostIntact(t, e)
	}
	if left, _ := os.ReadDir(elsewhere); len(left) != 0 {
		t.Errorf("a refused ADD wrote %v", left)
	}
}

// The node's logFile gets the plugin's log, at the node's logLevel unless
// the NAD chooses another.
func TestNodeLogFile(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 1)
	logFile := filepath.Join(t.TempDir(), "plugin.log")
	attach := func(cid string, conf []byte) string {
		t.Helper()
		pod := e.NewPod()
		add(t, e, pod, cid, "net1", conf)
		del(t, e, pod, cid, "net1", conf)
		logs, err := os.ReadFile(logFile)
		if err != nil {
			t.Fatal(err)
		}
		return string(logs)
	}
	e.SetNode(map[string]any{"logFile": logFile})
	if logs := attach("c1", e.Conf(nil)); !strings.Contains(logs, "cmd=ADD container=c1") || !strings.Contains(logs, "cmd=DEL container=c1") {
		t.Errorf("node logFile lacks c1's ADD and DEL:\n%s", logs)
	}
	e.SetNode(map[string]any{"logFile": logFile, "logLevel": "warn"})
	if logs := attach("c2", e.Conf(nil)); strings.Contains(logs, "container=c2") {
		t.Errorf("node logLevel warn logged c2's info lines:\n%s", logs)
	}
	if logs := attach("c3", e.Conf(map[string]any{"logLevel": "info"})); !strings.Contains(logs, "container=c3") {
		t.Errorf("the NAD's logLevel info did not win over the node's warn:\n%s", logs)
	}
}

// A pod attached before node-only fields were refused may be released with
// a configuration that still sets them: multus replays DEL from the
// configuration it cached at ADD. DEL ignores them (the node's values are
// used) and gives the PF back; refusing would fail every DEL and leave the
// PF in the pod.
func TestDelIgnoresNodeOnlyFieldsAndGivesThePFBack(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 2)
	pod := e.NewPod()
	add(t, e, pod, "c1", "net1", e.Conf(nil))
	cached := e.Conf(map[string]any{"stateDir": t.TempDir(), "nodeConfigFile": "", "logFile": filepath.Join(t.TempDir(), "log")})
	del(t, e, pod, "c1", "net1", cached)
	assertHostIntact(t, e)
	if recs, _ := os.ReadDir(e.StateDir); len(recs) > 1 {
		t.Errorf("records left in the node's state dir after DEL: %v", recs)
	}
}

// After a rollback, node.json may set a field of a later release: ADD,
// CHECK, DEL and GC go on as before, each naming the field in a warning.
// A known field of the wrong type is still refused (code 7), naming it.
func TestUnknownNodeFieldsAreWarnedOfNotRefused(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 1)
	logFile := filepath.Join(t.TempDir(), "plugin.log")
	e.SetNode(map[string]any{"logFile": logFile, "vfBaseline": map[string]any{"numVFs": 4}})
	pod := e.NewPod()
	res := add(t, e, pod, "c1", "net1", e.Conf(nil))
	if _, err := call(t, e, "CHECK", args(pod, "c1", "net1", e.Conf(map[string]any{"prevResult": res}))); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	del(t, e, pod, "c1", "net1", e.Conf(nil))
	if _, err := call(t, e, "GC", args(nil, "", "", e.Conf(map[string]any{"cni.dev/valid-attachments": []any{}}))); err != nil {
		t.Errorf("GC: %v", err)
	}
	assertHostIntact(t, e)
	logs, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"ADD", "CHECK", "DEL", "GC"} {
		found := false
		for line := range strings.Lines(string(logs)) {
			if strings.Contains(line, "level=WARN") && strings.Contains(line, "cmd="+cmd+" ") &&
				strings.Contains(line, "does not know") && strings.Contains(line, "fields=[vfBaseline]") {
				found = true
			}
		}
		if !found {
			t.Errorf("no warning naming vfBaseline for %s in the log:\n%s", cmd, logs)
		}
	}

	e.SetNode(map[string]any{"requireDeviceID": "yes", "vfBaseline": 4})
	_, err = call(t, e, "ADD", args(e.NewPod(), "c2", "net1", e.Conf(nil)))
	if cniCode(t, err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), `field "requireDeviceID"`) {
		t.Errorf("ADD with requireDeviceID of the wrong type: %v, want code 7 naming the field", err)
	}
	assertHostIntact(t, e)
}
