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

// versions are the CNI versions a NAD may give the plugin: 0.3.0 to 0.4.0
// for multus v3.x (the CI cluster's NAD says 0.3.0), 1.x for multus v4.
var versions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// eachVersion runs check on a real ADD of a PF with three VFs in each
// version, once the result is found honest (assertHonest).
func eachVersion(t *testing.T, check func(t *testing.T, pf kerneltest.PF, res types.Result, r *current.Result, dev *nadv1.DeviceInfo)) {
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			e := kerneltest.New(t)
			pf := e.AddPF("ens1f0", 3)
			res, dev, pod := attachment(t, e, v)
			check(t, pf, res, assertHonest(t, res, pf, pod), dev)
		})
	}
}

// The result stays honest: every VF, then the PF as net1, each in the
// pod's sandbox, because each is there. The PF comes last, and the
// attachment's one IP points at it.
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
	var want []string
	for _, vf := range pf.VFs {
		want = append(want, vf.Name)
	}
	want = append(want, "net1")
	if !slices.Equal(got, want) {
		t.Errorf("result interfaces %v, want %v", got, want)
	}
	if len(r.IPs) != 1 {
		t.Fatalf("result IPs %s, want one", mustJSON(t, r.IPs))
	}
	if last := len(r.Interfaces) - 1; r.IPs[0].Interface == nil || *r.IPs[0].Interface != last {
		t.Errorf("result IP %s, want it on interfaces[%d], the PF", mustJSON(t, r.IPs[0]), last)
	}
	return r
}

// multus v4 (v4.2.2, cmdAdd in pkg/multus/multus.go) builds the
// network-status with CreateNetworkStatuses: one entry per interface that
// has a sandbox, in the result's order, each IP on the entry its interface
// index points at. It does not pick an entry by CNI_IFNAME: the job finds
// the PF as the entry whose interface is the name it asked for (net1),
// wherever it stands; it is the last one. That entry alone carries the
// attachment's IP, and device-info names the PF's PCI address.
func TestNetworkStatusesV4FindThePF(t *testing.T) {
	eachVersion(t, func(t *testing.T, pf kerneltest.PF, res types.Result, r *current.Result, dev *nadv1.DeviceInfo) {
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
		if len(found) != 1 || statuses[len(statuses)-1] != found[0] {
			t.Fatalf("want exactly one entry for net1, the last: %s", mustJSON(t, statuses))
		}
		s, pfIface := found[0], named(t, r, "net1")
		if s.Mac != pfIface.Mac || !slices.Equal(s.IPs, []string{r.IPs[0].Address.IP.String()}) {
			t.Errorf("net1 entry %s, want the PF's MAC %s and IP %s", mustJSON(t, s), pfIface.Mac, r.IPs[0].Address.IP)
		}
		assertDeviceInfo(t, s.DeviceInfo, pf.PCI)
		t.Logf("multus v4 network-status for net1: %s", mustJSON(t, s))
	})
}

// v3Interface is the interface multus v3.x names the attachment after. Its
// cmdAdd (pkg/multus/multus.go, v3.7 to v3.9.3) builds one network-status
// entry per attachment with CreateNetworkStatus of the
// network-attachment-definition-client it vendors
// (pkg/utils/net-attach-def.go), which converts the result to the current
// type, walks its interfaces and keeps the name and MAC of the last one
// with a sandbox. The library this module uses still has that rule; the
// test checks both, so a change in either shows.
func v3Interface(r *current.Result) (name, mac string) {
	for i := len(r.Interfaces) - 1; i >= 0; i-- {
		if r.Interfaces[i].Sandbox != "" {
			return r.Interfaces[i].Name, r.Interfaces[i].Mac
		}
	}
	return "", ""
}

// multus v3.x: one entry per attachment, whose interface and MAC are those
// of the last sandboxed interface of the result: the PF's, net1, as the
// plugin lists it last. The entry's IPs are the attachment's (the PF's) and
// device-info names the PF's PCI address.
func TestNetworkStatusV3NamesThePF(t *testing.T) {
	eachVersion(t, func(t *testing.T, pf kerneltest.PF, res types.Result, r *current.Result, dev *nadv1.DeviceInfo) {
		pfMac := named(t, r, "net1").Mac
		if name, mac := v3Interface(r); name != "net1" || mac != pfMac {
			t.Errorf("multus v3.x's rule names %s (%s), want net1 (%s)", name, mac, pfMac)
		}
		s, err := nadutils.CreateNetworkStatus(res, networkName, false, dev)
		if err != nil {
			t.Fatal(err)
		}
		if s.Interface != "net1" || s.Mac != pfMac {
			t.Errorf("library entry names %s (%s), want net1 (%s)", s.Interface, s.Mac, pfMac)
		}
		if !slices.Equal(s.IPs, []string{r.IPs[0].Address.IP.String()}) {
			t.Errorf("v3.x entry IPs %v, want the PF's %s", s.IPs, r.IPs[0].Address.IP)
		}
		assertDeviceInfo(t, s.DeviceInfo, pf.PCI)
		t.Logf("multus v3.x network-status: %s", mustJSON(t, s))
	})
}

// named is the result's interface of that name.
func named(t *testing.T, r *current.Result, name string) *current.Interface {
	t.Helper()
	i := slices.IndexFunc(r.Interfaces, func(i *current.Interface) bool { return i.Name == name })
	if i < 0 {
		t.Fatalf("the result has no interface %s", name)
	}
	return r.Interfaces[i]
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
