package multus

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	nadutils "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/utils"

	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// networkName is how multus names the attachment in network-status.
const networkName = "multus-cni-ns/sriov-passthrough-cni"

var binDir string

func TestMain(m *testing.M) { os.Exit(kerneltest.RunWithBinaries(m, "sriovpt-multus-", &binDir)) }

// attachment is one real ADD as multus v3.x or v4 makes it: the built
// plugin through libcni, with IPAM and the CNIDeviceInfoFile capability,
// on kernel-test devices. It returns the result as the runtime got it (in
// the configuration's version) and the device-info multus would load.
func attachment(t *testing.T, e *kerneltest.Env, cniVersion string) (types.Result, *nadv1.DeviceInfo, ns.NetNS) {
	t.Helper()
	plugin := map[string]any{
		"type":         "sriov-passthrough-cni",
		"capabilities": map[string]bool{"CNIDeviceInfoFile": true},
		"ipam":         map[string]any{"type": "host-local", "subnet": "192.0.2.0/28", "dataDir": filepath.Join(t.TempDir(), "ipam")},
	}
	b, _ := json.Marshal(map[string]any{"cniVersion": cniVersion, "name": "sriov-passthrough-cni", "plugins": []any{plugin}})
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	pod := e.NewPod()
	infoFile := filepath.Join(t.TempDir(), "devinfo.json")
	rt := &libcni.RuntimeConf{
		ContainerID: "job1", NetNS: pod.Path(), IfName: "net1",
		Args:           [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "kubevirt-prow"}, {"K8S_POD_NAME", "job1"}},
		CapabilityArgs: map[string]any{"CNIDeviceInfoFile": infoFile},
	}
	// Multus execs delegates with its own environment: the node points the
	// plugin at its node configuration there.
	cni := libcni.NewCNIConfigWithCacheDir([]string{binDir}, t.TempDir(), e.Exec())
	var res types.Result
	inHost(t, e, func() (err error) { res, err = cni.AddNetworkList(context.Background(), list, rt); return err })
	t.Cleanup(func() {
		inHost(t, e, func() error { return cni.DelNetworkList(context.Background(), list, rt) })
	})
	dev, err := nadutils.LoadDeviceInfoFromCNI(infoFile)
	if err != nil {
		t.Fatalf("load the device-info file as multus does: %v", err)
	}
	return res, dev, pod
}

func inHost(t *testing.T, e *kerneltest.Env, f func() error) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := e.Host.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

// The result stays honest: the PF first, as net1, then every VF, each in
// the pod's sandbox, because each is there.
func assertHonest(t *testing.T, res types.Result, pf kerneltest.PF, pod ns.NetNS) *current.Result {
	t.Helper()
	r, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, i := range r.Interfaces {
		if i.Sandbox != pod.Path() {
			t.Errorf("interface %s has sandbox %q, want the pod's %s", i.Name, i.Sandbox, pod.Path())
		}
		got = append(got, i.Name)
	}
	want := []string{"net1"}
	for _, vf := range pf.VFs {
		want = append(want, vf.Name)
	}
	if !slices.Equal(got, want) || len(r.IPs) != 1 || *r.IPs[0].Interface != 0 {
		t.Fatalf("result interfaces %v IPs %v, want %v with one IP on interfaces[0]", got, r.IPs, want)
	}
	return r
}

// multus v4: one entry per sandboxed interface. The job finds the PF as the
// entry whose interface is the name it asked for (net1); that entry alone
// carries the attachment's IP, and device-info names the PF's PCI address.
func TestNetworkStatusesV4FindThePF(t *testing.T) {
	for _, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			e := kerneltest.New(t)
			pf := e.AddPF("ens1f0", 3)
			res, dev, pod := attachment(t, e, v)
			r := assertHonest(t, res, pf, pod)

			statuses, err := nadutils.CreateNetworkStatuses(res, networkName, false, dev)
			if err != nil {
				t.Fatal(err)
			}
			if len(statuses) != 1+len(pf.VFs) {
				t.Fatalf("%d network-status entries, want one per sandboxed interface (%d)", len(statuses), 1+len(pf.VFs))
			}
			var found []*nadv1.NetworkStatus
			for _, s := range statuses {
				if s.Name != networkName {
					t.Errorf("entry %s has network %q", s.Interface, s.Name)
				}
				if s.Interface == "net1" {
					found = append(found, s)
				} else if len(s.IPs) != 0 {
					t.Errorf("VF entry %s carries IPs %v", s.Interface, s.IPs)
				}
			}
			if len(found) != 1 || statuses[0] != found[0] {
				t.Fatalf("want exactly one entry for net1, the first: %s", mustJSON(t, statuses))
			}
			s := found[0]
			if s.Mac != r.Interfaces[0].Mac || !slices.Equal(s.IPs, []string{r.IPs[0].Address.IP.String()}) {
				t.Errorf("net1 entry %s, want the PF's MAC %s and IP %s", mustJSON(t, s), r.Interfaces[0].Mac, r.IPs[0].Address.IP)
			}
			assertDeviceInfo(t, s.DeviceInfo, pf.PCI)
			t.Logf("multus v4 network-status for net1: %s", mustJSON(t, s))
		})
	}
}

// multus v3.x: one entry per attachment, whose interface and MAC are the
// LAST sandboxed interface's, a VF's: no honest result makes them the PF's
// (interfaces[0] is the PF, and each VF really is in the pod). What does
// name the PF there is its IP (the attachment's only one) and device-info's
// PCI address; docs/prow-jobs.md says how a job finds net1 with them.
func TestNetworkStatusV3NamesThePFByDeviceInfo(t *testing.T) {
	e := kerneltest.New(t)
	pf := e.AddPF("ens1f0", 3)
	res, dev, pod := attachment(t, e, "0.4.0")
	r := assertHonest(t, res, pf, pod)

	s, err := nadutils.CreateNetworkStatus(res, networkName, false, dev)
	if err != nil {
		t.Fatal(err)
	}
	last := pf.VFs[len(pf.VFs)-1].Name
	if s.Interface != last || s.Mac != r.Interfaces[len(r.Interfaces)-1].Mac {
		t.Errorf("v3.x entry names %s (%s); the library's rule (last sandboxed interface) gives %s: update docs/prow-jobs.md", s.Interface, s.Mac, last)
	}
	if !slices.Equal(s.IPs, []string{r.IPs[0].Address.IP.String()}) {
		t.Errorf("v3.x entry IPs %v, want the PF's %s", s.IPs, r.IPs[0].Address.IP)
	}
	assertDeviceInfo(t, s.DeviceInfo, pf.PCI)
	t.Logf("multus v3.x network-status: %s", mustJSON(t, s))
}

func assertDeviceInfo(t *testing.T, dev *nadv1.DeviceInfo, pci string) {
	t.Helper()
	if dev == nil || dev.Type != nadv1.DeviceInfoTypePCI || dev.Version != nadv1.DeviceInfoVersion || dev.Pci == nil || dev.Pci.PciAddress != pci {
		t.Errorf("device-info %s, want type pci, version %s, pci-address %s", mustJSON(t, dev), nadv1.DeviceInfoVersion, pci)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
