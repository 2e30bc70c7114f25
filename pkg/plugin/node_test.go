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
	node := filepath.Join(t.TempDir(), "node.json")
	if err := os.WriteFile(node, []byte(`{"requireDeviceID":true,"stateDir":"`+e.StateDir+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	none := e.Conf(map[string]any{"nodeConfigFile": node})
	_, err := call(t, e, "ADD", args(e.NewPod(), "c1", "net1", none))
	if cniCode(t, err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "no deviceID") {
		t.Fatalf("ADD without deviceID: %v", err)
	}
	assertHostIntact(t, e)
	pinned := e.Conf(map[string]any{"nodeConfigFile": node, "deviceID": second.PCI})
	res := add(t, e, e.NewPod(), "c2", "net1", pinned)
	if res.Interfaces[0].PciID != second.PCI {
		t.Fatalf("took %s, want the allocated %s", res.Interfaces[0].PciID, second.PCI)
	}
	// A NAD that names another state dir than the node's is refused.
	other := e.Conf(map[string]any{"nodeConfigFile": node, "deviceID": e.PFs[0].PCI, "stateDir": t.TempDir()})
	_, err = call(t, e, "ADD", args(e.NewPod(), "c3", "net1", other))
	if cniCode(t, err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "disagrees with the node configuration") {
		t.Fatalf("disagreeing NAD: %v", err)
	}
}
