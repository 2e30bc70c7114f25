package dra

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/agent"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/agentcmd"
)

// The agent's command line names the driver (the default of
// -dra-plugin-dir) without importing this package, which would put the
// Kubernetes API client into the device-plugin agent's binary.
func TestTheCommandLineNamesThisDriver(t *testing.T) {
	if agentcmd.DRADriverName != DriverName {
		t.Errorf("agentcmd.DRADriverName %q, want %q", agentcmd.DRADriverName, DriverName)
	}
}

// Through the kubelet plugin as the kubelet and the API server see it: the
// helper serves the driver's DRA gRPC socket, fetches the claim from the
// API server (a fake clientset) on NodePrepareResources, and its slice
// controller creates the node's ResourceSlice there and changes it when
// the agent's look changes.
func TestThroughTheKubeletPlugin(t *testing.T) {
	d := newDriver(t)
	d.Update([]agent.PF{{PCI: pfA, Name: "ens1f0", Phase: agent.Free}, {PCI: pfB, Name: "ens2f0", Phase: agent.Free}})
	c := claim("uid-grpc", pfA)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", UID: "node-uid"}}
	client := fake.NewClientset(node, c)
	dir := t.TempDir()
	p := &Plugin{Driver: d, Client: client, RegistrarDir: filepath.Join(dir, "registry"), DataDir: filepath.Join(dir, "plugin")}
	for _, sub := range []string{p.RegistrarDir, p.DataDir} {
		must(t, os.MkdirAll(sub, 0o755))
	}
	defer runPlugin(t, p, "Run")()
	ctx := context.Background()

	slice := func(want []string) {
		t.Helper()
		var got []string
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			list, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
			must(t, err)
			got = nil
			for _, s := range list.Items {
				if s.Spec.Driver != DriverName || s.Spec.NodeName == nil || *s.Spec.NodeName != "node-1" {
					t.Fatalf("slice %s: driver %s node %v", s.Name, s.Spec.Driver, s.Spec.NodeName)
				}
				got = append(got, names(s.Spec.Devices)...)
			}
			if len(list.Items) == 1 && slices.Equal(got, want) {
				return
			}
		}
		t.Fatalf("ResourceSlice devices %v, want %v", got, want)
	}
	slice([]string{"pf-0000-3b-00-0", "pf-0000-3c-00-0"})

	sock := filepath.Join(p.DataDir, "dra.sock")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no DRA socket at %s", sock)
		}
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	must(t, err)
	defer conn.Close()
	dra := drapb.NewDRAPluginClient(conn)
	req := []*drapb.Claim{{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)}}
	resp, err := dra.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: req})
	must(t, err)
	got := resp.Claims[string(c.UID)]
	if got == nil || got.Error != "" || len(got.Devices) != 1 || got.Devices[0].DeviceName != "pf-0000-3b-00-0" ||
		!slices.Equal(got.Devices[0].CdiDeviceIds, []string{CDIKind + "=uid-grpc-sriov"}) {
		t.Fatalf("NodePrepareResources: %v", resp)
	}
	if e, _ := d.Claims.Get("uid-grpc"); e == nil || !slices.Equal(e.PFs, []string{pfA}) {
		t.Errorf("checkpoint after NodePrepareResources: %+v", e)
	}

	// A job takes pfB without asking: it leaves the slice.
	d.Update([]agent.PF{{PCI: pfA, Name: "ens1f0", Phase: agent.Attached}, {PCI: pfB, Name: "ens2f0", Phase: agent.Attached, Unpinned: true}})
	slice([]string{"pf-0000-3b-00-0"})

	uresp, err := dra.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: req})
	must(t, err)
	if r := uresp.Claims[string(c.UID)]; r == nil || r.Error != "" {
		t.Fatalf("NodeUnprepareResources: %v", uresp)
	}
	if e, _ := d.Claims.Get("uid-grpc"); e != nil {
		t.Errorf("checkpoint after NodeUnprepareResources: %+v", e)
	}
}

// During a DaemonSet's surge two agent pods serve one node: each names its
// registration and DRA sockets after its pod, so the new pod's do not take
// the old pod's paths, and the old pod stopping leaves the new pod's in
// place for the kubelet.
func TestTwoAgentPodsServeSideBySide(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", UID: "node-uid"}}
	client := fake.NewClientset(node)
	dir := t.TempDir()
	registry, data := filepath.Join(dir, "registry"), filepath.Join(dir, "plugin")
	for _, sub := range []string{registry, data} {
		must(t, os.MkdirAll(sub, 0o755))
	}
	sockets := func() []string {
		var out []string
		for _, d := range []string{registry, data} {
			entries, err := os.ReadDir(d)
			must(t, err)
			for _, e := range entries {
				if e.Type()&os.ModeSocket != 0 {
					out = append(out, filepath.Join(filepath.Base(d), e.Name()))
				}
			}
		}
		slices.Sort(out)
		return out
	}
	start := func(uid string) (stop func()) {
		d := newDriver(t)
		d.Update([]agent.PF{{PCI: pfA, Name: "ens1f0", Phase: agent.Free}})
		p := &Plugin{Driver: d, Client: client, RegistrarDir: registry, DataDir: data, PodUID: uid}
		return runPlugin(t, p, "Run of pod "+uid)
	}
	waitSockets := func(want ...string) {
		t.Helper()
		slices.Sort(want)
		var got []string
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if got = sockets(); slices.Equal(got, want) {
				return
			}
		}
		t.Fatalf("sockets %v, want %v", got, want)
	}
	stopOld := start("old-pod")
	waitSockets("plugin/dra-old-pod.sock", "registry/"+DriverName+"-old-pod-reg.sock")
	stopNew := start("new-pod")
	defer stopNew()
	waitSockets("plugin/dra-old-pod.sock", "plugin/dra-new-pod.sock",
		"registry/"+DriverName+"-old-pod-reg.sock", "registry/"+DriverName+"-new-pod-reg.sock")
	stopOld()
	waitSockets("plugin/dra-new-pod.sock", "registry/"+DriverName+"-new-pod-reg.sock")
}

// runPlugin runs p until the returned stop is called; stop waits for Run
// to return and reports its error under what.
func runPlugin(t *testing.T, p *Plugin, what string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
}
