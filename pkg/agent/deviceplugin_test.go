package agent

import (
	"context"
	"log/slog"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// dialPlugin connects to the plugin's endpoint as the kubelet does after
// a registration.
func dialPlugin(t *testing.T, dir, endpoint string) pluginapi.DevicePluginClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pluginapi.NewDevicePluginClient(conn)
}

func startPlugin(t *testing.T, dir string, pfs []PF) *DevicePlugin {
	t.Helper()
	dp, stop := runPlugin(t, dir, pfs)
	t.Cleanup(stop)
	return dp
}

// runPlugin is startPlugin for a test that stops the agent itself: stop
// ends its Run and waits for it (again: nothing more).
func runPlugin(t *testing.T, dir string, pfs []PF) (dp *DevicePlugin, stop func()) {
	t.Helper()
	dp = NewDevicePlugin("prow/sriov", testLogger(t))
	dp.Update(pfs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	srv := &Server{Dir: dir, Socket: "sriov-passthrough.sock", Plugin: dp, Log: dp.Log}
	go func() { srv.Run(ctx); close(done) }()
	return dp, func() { cancel(); <-done }
}

// ownSocket is the name the agent gives a socket served on the default
// -socket: the stem, a process token and a generation.
var ownSocket = regexp.MustCompile(`^sriov-passthrough\.[0-9a-z]+-[0-9]+\.sock$`)

type testWriter struct{ t *testing.T }

func testLogger(t *testing.T) *slog.Logger { return slog.New(slog.NewTextHandler(testWriter{t}, nil)) }

func (w testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

type devs map[string]string

func recv(t *testing.T, s grpc.ServerStreamingClient[pluginapi.ListAndWatchResponse]) devs {
	t.Helper()
	r, err := s.Recv()
	if err != nil {
		t.Fatalf("ListAndWatch: %v", err)
	}
	out := devs{}
	for _, d := range r.Devices {
		out[d.ID] = d.Health
	}
	return out
}

func TestDevicePluginAPIAsTheKubeletDrivesIt(t *testing.T) {
	dir := t.TempDir()
	kubelet := startKubelet(t, dir)
	pfs := []PF{
		{PCI: "0000:3b:00.0", Name: "ens1", Phase: Attached},
		{PCI: "0000:3c:00.0", Name: "ens2", Phase: Free},
		{PCI: "0000:3d:00.0", Name: "ens3", Phase: Releasing, Why: "release pending"},
		{PCI: "0000:3e:00.0", Name: "eno1", Phase: Ineligible, Why: "uplink"},
		{PCI: "0000:3f:00.0", Name: "ens4", Phase: Free},
	}
	dp := startPlugin(t, dir, pfs)
	reg := kubelet.registered(t)
	if reg.Version != pluginapi.Version || reg.ResourceName != "prow/sriov" || !ownSocket.MatchString(reg.Endpoint) ||
		!reg.Options.GetPreferredAllocationAvailable {
		t.Fatalf("registration: %+v", reg)
	}
	c := dialPlugin(t, dir, reg.Endpoint)
	ctx := context.Background()
	opts, err := c.GetDevicePluginOptions(ctx, &pluginapi.Empty{})
	if err != nil || !opts.GetPreferredAllocationAvailable {
		t.Fatalf("options %+v, %v", opts, err)
	}
	stream, err := c.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	want := devs{"0000:3b:00.0": "Healthy", "0000:3c:00.0": "Healthy", "0000:3d:00.0": "Unhealthy", "0000:3f:00.0": "Healthy"}
	if got := recv(t, stream); !maps.Equal(got, want) {
		t.Fatalf("first list %v, want %v (the uplink is not advertised)", got, want)
	}

	// A look that changes nothing the kubelet sees sends nothing; the
	// release finishing does.
	pfs[1].Why = "same phase, other words"
	dp.Update(slices.Clone(pfs))
	pfs[2].Phase, pfs[2].Why = Free, ""
	dp.Update(slices.Clone(pfs))
	want["0000:3d:00.0"] = "Healthy"
	if got := recv(t, stream); !maps.Equal(got, want) {
		t.Fatalf("after the release: %v, want %v", got, want)
	}

	// Preferred: what must be included, then free PFs in PCI order, then
	// the held one the kubelet thinks is free.
	pref, err := c.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{
		{AvailableDeviceIDs: []string{"0000:3f:00.0", "0000:3b:00.0", "0000:3d:00.0", "0000:3c:00.0"}, AllocationSize: 2},
		{AvailableDeviceIDs: []string{"0000:3f:00.0", "0000:3b:00.0", "0000:3c:00.0"}, MustIncludeDeviceIDs: []string{"0000:3b:00.0"}, AllocationSize: 2},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got := pref.ContainerResponses[0].DeviceIDs; !slices.Equal(got, []string{"0000:3c:00.0", "0000:3d:00.0"}) {
		t.Errorf("preferred %v", got)
	}
	if got := pref.ContainerResponses[1].DeviceIDs; !slices.Equal(got, []string{"0000:3b:00.0", "0000:3c:00.0"}) {
		t.Errorf("preferred with must-include %v", got)
	}

	alloc, err := c.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
		{DevicesIds: []string{"0000:3c:00.0"}}, {DevicesIds: []string{"0000:3d:00.0", "0000:3f:00.0"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got := alloc.ContainerResponses[0].Envs; !maps.Equal(got, map[string]string{"PCIDEVICE_PROW_SRIOV": "0000:3c:00.0"}) {
		t.Errorf("envs %v", got)
	}
	if got := alloc.ContainerResponses[1].Envs["PCIDEVICE_PROW_SRIOV"]; got != "0000:3d:00.0,0000:3f:00.0" {
		t.Errorf("envs %v", got)
	}
	if _, err := c.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
		{DevicesIds: []string{"0000:3e:00.0"}}}}); err == nil {
		t.Error("allocating the uplink, which was never advertised, succeeded")
	}
}

func TestEnvName(t *testing.T) {
	for in, want := range map[string]string{"prow/sriov": "PCIDEVICE_PROW_SRIOV", "intel.com/sriov-netdevice": "PCIDEVICE_INTEL_COM_SRIOV_NETDEVICE"} {
		if got := EnvName(in); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", in, got, want)
		}
	}
}

// The kubelet allocates from what it counts as free, which is not what the
// node has free: a PF held by an attachment the kubelet does not know of,
// one whose release is pending, one gone or reserved since the last list.
// Allocate refuses those with the reason, so the pod fails at admission
// instead of waiting in ContainerCreating for a CNI ADD that must fail.
func TestAllocateRefusesDevicesThatAreNotFree(t *testing.T) {
	dp := NewDevicePlugin("prow/sriov", testLogger(t))
	dp.Update([]PF{
		{PCI: "0000:3b:00.0", Name: "ens1", Phase: Free},
		{PCI: "0000:3c:00.0", Name: "ens2", Phase: Attached, Holder: &Holder{Pod: "ci/job-a", ContainerID: "c1", IfName: "net1"}},
		{PCI: "0000:3d:00.0", Name: "ens3", Phase: Adding, Holder: &Holder{Pod: "ci/job-b", ContainerID: "c2", IfName: "net1"}},
		{PCI: "0000:3e:00.0", Name: "ens4", Phase: Releasing, Why: "release pending: not back on the host yet: ens4 (0000:3e:00.0)"},
		{PCI: "0000:3f:00.0", Name: "ens5", Phase: Ineligible, Why: "ens5 is reserved"},
		{PCI: "0000:40:00.0", Name: "eno1", Phase: Ineligible, Why: "uplink: eno1 has a default route"},
		{PCI: "0000:41:00.0", Name: "ens6", Phase: Missing, Why: "no longer on the host, and no attachment holds it"},
	})
	ctx := context.Background()
	alloc := func(ids ...string) error {
		_, err := dp.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}}})
		return err
	}
	if err := alloc("0000:3b:00.0"); err != nil {
		t.Fatalf("a free PF: %v", err)
	}
	for id, want := range map[string]string{
		"0000:3c:00.0": "held by pod ci/job-a",
		"0000:3d:00.0": "held by pod ci/job-b",
		"0000:3e:00.0": "release pending",
		"0000:3f:00.0": "ens5 is reserved",
		"0000:40:00.0": "uplink",
		"0000:41:00.0": "no longer on the host",
		"0000:99:00.0": "not a prow/sriov device of this node",
	} {
		// With a free PF in the same request: nothing is handed out.
		err := alloc("0000:3b:00.0", id)
		if err == nil {
			t.Errorf("%s: allocated; want refused (%s)", id, want)
			continue
		}
		if s, _ := status.FromError(err); !strings.Contains(s.Message(), id) || !strings.Contains(s.Message(), want) {
			t.Errorf("%s: refused with %q; want the PCI address and %q", id, s.Message(), want)
		}
	}
}
