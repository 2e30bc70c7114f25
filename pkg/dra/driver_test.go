package dra

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/agent"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/claims"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
)

const (
	pfA = "0000:3b:00.0"
	pfB = "0000:3c:00.0"
	pfC = "0000:3d:00.0"
)

// recorder is a Publisher that keeps what it was given.
type recorder struct {
	got []resourceslice.DriverResources
}

func (r *recorder) PublishResources(_ context.Context, res resourceslice.DriverResources) error {
	r.got = append(r.got, res)
	return nil
}

// last is the device names of the last publication's one slice.
func (r *recorder) last(t *testing.T) []resourceapi.Device {
	t.Helper()
	if len(r.got) == 0 {
		t.Fatal("nothing published")
	}
	pool, ok := r.got[len(r.got)-1].Pools["node-1"]
	if !ok || len(pool.Slices) != 1 {
		t.Fatalf("published %+v, want pool node-1 with one slice", r.got[len(r.got)-1])
	}
	return pool.Slices[0].Devices
}

func names(devs []resourceapi.Device) []string {
	var out []string
	for _, d := range devs {
		out = append(out, d.Name)
	}
	return out
}

// newDriver is a driver over a fake sysfs tree in which pfA is bound to igb
// on NUMA node 1 and pfB has no NUMA affinity (numa_node -1).
func newDriver(t *testing.T) *Driver {
	t.Helper()
	root := t.TempDir()
	for pci, numa := range map[string]string{pfA: "1", pfB: "-1", pfC: "0"} {
		dir := filepath.Join(root, "bus", "pci", "devices", pci)
		must(t, os.MkdirAll(dir, 0o755))
		must(t, os.WriteFile(filepath.Join(dir, "numa_node"), []byte(numa+"\n"), 0o644))
	}
	must(t, os.Symlink("../../../../bus/pci/drivers/igb", filepath.Join(root, "bus", "pci", "devices", pfA, "driver")))
	state := t.TempDir()
	return &Driver{NodeName: "node-1", Resource: "prow/sriov", Sys: sriov.Sysfs{Root: root}, Claims: claims.For(state),
		CDI: CDI{Dir: filepath.Join(t.TempDir(), "cdi")}, Log: slog.New(slog.DiscardHandler)}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func attr(d resourceapi.Device, name string) any {
	a, ok := d.Attributes[resourceapi.QualifiedName(name)]
	switch {
	case !ok:
		return nil
	case a.StringValue != nil:
		return *a.StringValue
	case a.IntValue != nil:
		return *a.IntValue
	}
	return "?"
}

// The slice offers what the device plugin counts: free PFs and PFs held by
// a pod they were allocated to. Not one a job holds that did not ask for
// it, one whose release is pending, a reserved one or one off its baseline.
func TestSliceOffersWhatTheDevicePluginCounts(t *testing.T) {
	d := newDriver(t)
	pfs := []agent.PF{
		{PCI: pfB, Name: "ens2f0", VFs: 2, TotalVFs: 8, Phase: agent.Attached, Holder: &agent.Holder{Pod: "ci/job"}},
		{PCI: pfA, Name: "ens1f0", VFs: 4, TotalVFs: 8, Phase: agent.Free},
		{PCI: pfC, Name: "ens3f0", Phase: agent.Attached, Unpinned: true},
		{PCI: "0000:3e:00.0", Name: "ens4f0", Phase: agent.Releasing},
		{PCI: "0000:3f:00.0", Name: "eno1", Phase: agent.Ineligible},
		{PCI: "0000:40:00.0", Name: "ens5f0", Phase: agent.OffBaseline},
		{PCI: "0000:41:00.0", Name: "ens6f0", Phase: agent.Missing},
	}
	for _, p := range pfs {
		if want := slices.Contains([]string{pfA, pfB}, p.PCI); Offered(p) != want {
			t.Errorf("Offered(%s %s unpinned=%v) = %v", p.PCI, p.Phase, p.Unpinned, !want)
		}
	}
	r := &recorder{}
	d.SetPublisher(r)
	if len(r.got) != 0 {
		t.Fatalf("published before the agent looked at the node: %+v", r.got)
	}
	d.Update(pfs)
	devs := r.last(t)
	if got := names(devs); !slices.Equal(got, []string{"pf-0000-3b-00-0", "pf-0000-3c-00-0"}) {
		t.Fatalf("slice devices %v", got)
	}
	want := map[string]any{
		"pciAddress": pfA, "pfName": "ens1f0", "numVFs": int64(4), "totalVFs": int64(8), "driver": "igb",
		"resource.kubernetes.io/pciBusID": pfA, "resource.kubernetes.io/numaNode": int64(1),
		"k8s.cni.cncf.io/deviceID": pfA, "k8s.cni.cncf.io/resourceName": "prow/sriov",
	}
	if len(devs[0].Attributes) != len(want) {
		t.Errorf("attributes %v, want %d", devs[0].Attributes, len(want))
	}
	for k, v := range want {
		if got := attr(devs[0], k); got != v {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
	// No NUMA affinity, no driver bound: no such attribute (a -1 would
	// match every other device without NUMA affinity).
	if attr(devs[1], "resource.kubernetes.io/numaNode") != nil || attr(devs[1], "driver") != nil {
		t.Errorf("pfB attributes %v", devs[1].Attributes)
	}
	if got := pciOf(devs[1].Name); got != pfB {
		t.Errorf("pciOf(%s) = %s", devs[1].Name, got)
	}
}

// As ListAndWatch sends a new list only when a device changed, the slice
// is published again only when it changes: a PF that stops being free
// leaves it at the next look.
func TestSliceFollowsTheInventory(t *testing.T) {
	d := newDriver(t)
	free := []agent.PF{{PCI: pfA, Name: "ens1f0", Phase: agent.Free}, {PCI: pfB, Name: "ens2f0", Phase: agent.Free}}
	d.Update(free)
	r := &recorder{}
	d.SetPublisher(r)
	if got := names(r.last(t)); len(got) != 2 {
		t.Fatalf("first publication %v", got)
	}
	d.Update(slices.Clone(free))
	if len(r.got) != 1 {
		t.Errorf("published %d times for an unchanged node", len(r.got))
	}
	taken := slices.Clone(free)
	taken[0].Phase, taken[0].Unpinned = agent.Attached, true
	d.Update(taken)
	if got := names(r.last(t)); !slices.Equal(got, []string{"pf-0000-3c-00-0"}) || len(r.got) != 2 {
		t.Errorf("after a job took pfA unasked: %v (%d publications)", got, len(r.got))
	}
	d.Update(nil)
	if got := r.last(t); len(got) != 0 || len(r.got) != 3 {
		t.Errorf("no PF left: %v", names(got))
	}
}

// claim is a claim allocated pfs of node-1 for request "sriov", reserved
// for pod ci/job.
func claim(uid string, pfs ...string) *resourceapi.ResourceClaim {
	c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ci", Name: "job-sriov", UID: types.UID(uid)}}
	c.Status.Allocation = &resourceapi.AllocationResult{}
	for _, pci := range pfs {
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results, resourceapi.DeviceRequestAllocationResult{
			Request: "sriov", Driver: DriverName, Pool: "node-1", Device: DeviceName(pci)})
	}
	c.Status.ReservedFor = []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: "job", UID: types.UID("pod-" + uid)}}
	return c
}

func prepareOne(t *testing.T, d *Driver, c *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
	t.Helper()
	res, err := d.PrepareResourceClaims(context.Background(), []*resourceapi.ResourceClaim{c})
	if err != nil {
		t.Fatal(err)
	}
	r, ok := res[c.UID]
	if !ok || len(res) != 1 {
		t.Fatalf("result %+v lacks claim %s", res, c.UID)
	}
	return r
}

// Prepare records the claim for the CNI plugin and gives the container
// PCIDEVICE_PROW_SRIOV through CDI; the kubelet's repeat gets the same
// answer once the pod holds the PFs; Unprepare takes both away.
func TestPrepareAndUnprepare(t *testing.T) {
	d := newDriver(t)
	d.Update([]agent.PF{{PCI: pfA, Name: "ens1f0", Phase: agent.Free}, {PCI: pfB, Name: "ens2f0", Phase: agent.Free}})
	c := claim("uid-1", pfB, pfA)
	res := prepareOne(t, d, c)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	cdiID := CDIKind + "=uid-1-sriov"
	wantDevs := []kubeletplugin.Device{
		{Requests: []string{"sriov"}, PoolName: "node-1", DeviceName: "pf-0000-3b-00-0", CDIDeviceIDs: []string{cdiID}},
		{Requests: []string{"sriov"}, PoolName: "node-1", DeviceName: "pf-0000-3c-00-0"},
	}
	if got, _ := json.Marshal(res.Devices); string(got) != string(mustJSON(t, wantDevs)) {
		t.Errorf("devices %s, want %s", got, mustJSON(t, wantDevs))
	}
	e, err := d.Claims.Get("uid-1")
	if err != nil || e == nil || !slices.Equal(e.PFs, []string{pfA, pfB}) ||
		!slices.Equal(e.Pods, []claims.Ref{{Namespace: "ci", Name: "job", UID: "pod-uid-1"}}) || e.Claim.Name != "job-sriov" {
		t.Fatalf("checkpoint entry %+v %v", e, err)
	}
	spec, err := os.ReadFile(d.CDI.file("uid-1"))
	must(t, err)
	var s cdiSpec
	must(t, json.Unmarshal(spec, &s))
	if s.Kind != CDIKind || len(s.Devices) != 1 || s.Devices[0].Name != "uid-1-sriov" ||
		!slices.Equal(s.Devices[0].Edits.Env, []string{"PCIDEVICE_PROW_SRIOV=" + pfA + "," + pfB}) {
		t.Errorf("CDI spec %s", spec)
	}

	// The pod now holds both PFs; the kubelet restarts and asks again.
	d.Update([]agent.PF{{PCI: pfA, Phase: agent.Attached}, {PCI: pfB, Phase: agent.Attached}})
	again := prepareOne(t, d, c)
	if again.Err != nil || string(mustJSON(t, again.Devices)) != string(mustJSON(t, res.Devices)) {
		t.Errorf("repeated Prepare: %+v", again)
	}
	if e2, _ := d.Claims.Get("uid-1"); !e2.Prepared.Equal(e.Prepared) {
		t.Errorf("repeated Prepare rewrote the entry: %v, was %v", e2.Prepared, e.Prepared)
	}

	obj := kubeletplugin.NamespacedObject{NamespacedName: types.NamespacedName{Namespace: "ci", Name: "job-sriov"}, UID: "uid-1"}
	for range 2 {
		out, err := d.UnprepareResourceClaims(context.Background(), []kubeletplugin.NamespacedObject{obj})
		if err != nil || len(out) != 1 || out["uid-1"] != nil {
			t.Fatalf("Unprepare: %v %v", out, err)
		}
	}
	if e, _ := d.Claims.Get("uid-1"); e != nil {
		t.Errorf("entry left: %+v", e)
	}
	if _, err := os.Stat(d.CDI.file("uid-1")); !os.IsNotExist(err) {
		t.Errorf("CDI spec left: %v", err)
	}
}

// A new claim is refused, with nothing written, for a PF that is not free
// on the node now or that another claim holds, before the agent has looked
// at the node, and for a device not of this node's pool; the kubelet
// retries it.
func TestPrepareRefusesWhatIsNotFree(t *testing.T) {
	d := newDriver(t)
	refused := func(c *resourceapi.ResourceClaim, want ...string) {
		t.Helper()
		res := prepareOne(t, d, c)
		if res.Err == nil {
			t.Fatalf("claim %s prepared, want refused", c.UID)
		}
		for _, w := range want {
			if !strings.Contains(res.Err.Error(), w) {
				t.Errorf("error %q does not say %q", res.Err, w)
			}
		}
		if e, _ := d.Claims.Get(string(c.UID)); e != nil {
			t.Errorf("refused claim recorded: %+v", e)
		}
		if _, err := os.Stat(d.CDI.file(string(c.UID))); !os.IsNotExist(err) {
			t.Errorf("refused claim has a CDI spec: %v", err)
		}
	}
	refused(claim("early", pfA), "not looked")
	d.Update([]agent.PF{
		{PCI: pfA, Name: "ens1f0", Phase: agent.Free},
		{PCI: pfB, Name: "ens2f0", Phase: agent.Releasing, Why: "release pending"},
		{PCI: pfC, Name: "ens3f0", Phase: agent.Attached, Holder: &agent.Holder{Pod: "ci/other"}},
	})
	refused(claim("u-rel", pfB), pfB, "release pending")
	refused(claim("u-held", pfC), pfC, "ci/other")
	if res := prepareOne(t, d, claim("u-1", pfA)); res.Err != nil {
		t.Fatal(res.Err)
	}
	refused(claim("u-2", pfA), pfA, "prepared for claim", "u-1")
	other := claim("u-3", pfA)
	other.Status.Allocation.Devices.Results[0].Pool = "node-2"
	refused(other, "node-2")
	refused(claim("../escape", pfA), "not a valid")
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	must(t, err)
	return b
}

// deploy/components/dra names the driver as this package does: the
// DeviceClass selects its devices, and the agent's socket directory is the
// one kubeletplugin uses for it.
func TestDeployNamesThisDriver(t *testing.T) {
	class, err := os.ReadFile("../../deploy/components/dra/deviceclass.yaml")
	must(t, err)
	if !strings.Contains(string(class), `device.driver == "`+DriverName+`"`) {
		t.Errorf("the DeviceClass does not select driver %s:\n%s", DriverName, class)
	}
	kust, err := os.ReadFile("../../deploy/components/dra/kustomization.yaml")
	must(t, err)
	if !strings.Contains(string(kust), "/var/lib/kubelet/plugins/"+DriverName) {
		t.Errorf("the component does not mount /var/lib/kubelet/plugins/%s", DriverName)
	}
}
