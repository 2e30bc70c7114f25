package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// fakeKubelet is the kubelet's side of the device-plugin API, as the
// kubelet's device manager (v1.37) behaves:
//   - starting, it removes every socket in the directory, then listens on
//     kubelet.sock;
//   - on Register it connects to the plugin's socket and watches its
//     ListAndWatch stream, but refuses a socket path it is still
//     connected to;
//   - when a stream ends it drops that path, and with the resource's last
//     path it marks every device Unhealthy;
//   - killed, it leaves kubelet.sock behind and its streams end.
//
// With byResource set it behaves as v1.36 and older do instead: it keeps
// one client per resource, a registration replaces it without closing the
// one before, and when any stream of the resource ends it disconnects the
// client it has now.
type fakeKubelet struct {
	byResource bool
	current    string // byResource: the path of the client it has
	pluginapi.UnimplementedRegistrationServer
	dir  string
	srv  *grpc.Server
	regs chan *pluginapi.RegisterRequest

	mu        sync.Mutex
	accepted  int
	refused   int
	endpoints map[string]*grpc.ClientConn // socket path -> connection
	devices   map[string]string           // device ID -> health
	// firsts holds the first list each registration's stream brought.
	firsts []map[string]string
}

func startKubelet(t *testing.T, dir string) *fakeKubelet {
	return startKubeletAfter(t, dir, 0)
}

// startKubeletAfter starts a kubelet that listens only delay after it has
// removed the directory's sockets.
func startKubeletAfter(t *testing.T, dir string, delay time.Duration) *fakeKubelet {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(delay)
	l, err := net.Listen("unix", filepath.Join(dir, kubeletSocket))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	k := &fakeKubelet{dir: dir, srv: grpc.NewServer(), regs: make(chan *pluginapi.RegisterRequest, 16),
		endpoints: map[string]*grpc.ClientConn{}, devices: map[string]string{}}
	pluginapi.RegisterRegistrationServer(k.srv, k)
	go k.srv.Serve(l)
	t.Cleanup(k.kill)
	return k
}

// forEachKeying runs test as a subtest against a fake kubelet in each of
// its keyings (v1.37: by socket; v1.36 and older: by resource), in a
// device-plugin directory of its own. (Short subtest names: the socket
// path has at most 107 bytes.)
func forEachKeying(t *testing.T, test func(t *testing.T, dir string, k *fakeKubelet)) {
	for _, byResource := range []bool{false, true} {
		t.Run(map[bool]string{false: "v1.37", true: "v1.36"}[byResource], func(t *testing.T) {
			dir := t.TempDir()
			k := startKubelet(t, dir)
			k.byResource = byResource
			test(t, dir, k)
		})
	}
}

func (k *fakeKubelet) Register(_ context.Context, r *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	path := filepath.Join(k.dir, r.Endpoint)
	k.mu.Lock()
	if _, ok := k.endpoints[path]; ok && !k.byResource {
		k.refused++
		k.mu.Unlock()
		return nil, fmt.Errorf("device plugin already connected: %s", path)
	}
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		k.mu.Unlock()
		return nil, err
	}
	k.endpoints[path] = conn
	k.current = path
	k.mu.Unlock()
	stream, err := pluginapi.NewDevicePluginClient(conn).ListAndWatch(context.Background(), &pluginapi.Empty{})
	if err != nil {
		k.drop(path)
		return nil, err
	}
	go k.watch(path, stream)
	k.mu.Lock()
	k.accepted++
	k.mu.Unlock()
	k.regs <- r
	return &pluginapi.Empty{}, nil
}

func (k *fakeKubelet) watch(path string, s grpc.ServerStreamingClient[pluginapi.ListAndWatchResponse]) {
	for first := true; ; first = false {
		resp, err := s.Recv()
		if err != nil {
			k.mu.Lock()
			if k.byResource {
				path = k.current
			}
			k.mu.Unlock()
			k.drop(path)
			return
		}
		k.mu.Lock()
		k.devices = map[string]string{}
		for _, d := range resp.Devices {
			k.devices[d.ID] = d.Health
		}
		if first {
			k.firsts = append(k.firsts, maps.Clone(k.devices))
		}
		k.mu.Unlock()
	}
}

func (k *fakeKubelet) drop(path string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if c, ok := k.endpoints[path]; ok {
		c.Close()
		delete(k.endpoints, path)
	}
	if len(k.endpoints) == 0 {
		for id := range k.devices {
			k.devices[id] = pluginapi.Unhealthy
		}
	}
}

// kill ends the kubelet as SIGKILL would: its connections close, its
// socket file stays.
func (k *fakeKubelet) kill() {
	k.srv.Stop()
	k.mu.Lock()
	conns := k.endpoints
	k.endpoints = map[string]*grpc.ClientConn{}
	k.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

func (k *fakeKubelet) registered(t *testing.T) *pluginapi.RegisterRequest {
	t.Helper()
	select {
	case r := <-k.regs:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not register with the kubelet")
		return nil
	}
}

// healthy reports whether the kubelet has the device Healthy through a
// connected plugin, with the numbers of registrations it accepted and
// refused.
func (k *fakeKubelet) healthy(id string) (ok bool, accepted, refused int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	connected := len(k.endpoints) > 0
	if k.byResource {
		_, connected = k.endpoints[k.current]
	}
	return connected && k.devices[id] == pluginapi.Healthy, k.accepted, k.refused
}

// settled waits until the kubelet has the device Healthy, then watches for
// a second: a registration that was going to follow the first comes within
// milliseconds. It returns the registrations accepted and refused.
func (k *fakeKubelet) settled(t *testing.T, id string) (accepted, refused int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, _, _ := k.healthy(id)
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kubelet never had %s Healthy through a connected plugin", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(time.Second)
	ok, accepted, refused := k.healthy(id)
	if !ok {
		t.Fatalf("the kubelet lost %s after it had it Healthy", id)
	}
	return accepted, refused
}

// A kubelet restart removes the plugin sockets and re-creates its own: the
// agent must register again, exactly once, or the node loses the resource.
// The restarted kubelets listen at once or only a while after their
// cleanup, as a busy node's may.
func TestRegistersOnceWithEachKubelet(t *testing.T) {
	dir := t.TempDir()
	const pci = "0000:3b:00.0"
	k := startKubelet(t, dir)
	startPlugin(t, dir, []PF{{PCI: pci, Phase: Free}})
	if a, r := k.settled(t, pci); a != 1 || r != 0 {
		t.Fatalf("first kubelet: %d registrations accepted, %d refused; want 1, 0", a, r)
	}
	for i, delay := range []time.Duration{0, 0, 200 * time.Millisecond, 0} {
		k.kill()
		k = startKubeletAfter(t, dir, delay)
		if a, r := k.settled(t, pci); a != 1 || r != 0 {
			t.Fatalf("restart %d (listening %s after its cleanup): %d registrations accepted, %d refused; want 1, 0", i, delay, a, r)
		}
	}
}

// A kubelet's socket file exists from its bind(2), and it refuses
// connections until its listen(2), with no event for the agent in
// between. Here the kubelet was gone long enough for the agent's retries
// to back off to seconds, then a new kubelet.sock appears refusing for
// 300 ms: the agent must be registered soon after it listens, not when
// its doubled backoff runs out (5 s in a v1.34 kubelet restart in
// make k8s-e2e).
func TestRegistersSoonAfterAKubeletSocketStartsListening(t *testing.T) {
	dir := t.TempDir()
	const pci = "0000:3b:00.0"
	k := startKubelet(t, dir)
	startPlugin(t, dir, []PF{{PCI: pci, Phase: Free}})
	k.registered(t)
	k.kill() // kubelet.sock stays and refuses: the agent's tries fail
	time.Sleep(2500 * time.Millisecond)

	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "kubelet.sock.new")
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: tmp}); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, kubeletSocket)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	listening := time.Now()
	f := os.NewFile(uintptr(fd), kubeletSocket)
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	k2 := &fakeKubelet{dir: dir, srv: grpc.NewServer(), regs: make(chan *pluginapi.RegisterRequest, 16),
		endpoints: map[string]*grpc.ClientConn{}, devices: map[string]string{}}
	pluginapi.RegisterRegistrationServer(k2.srv, k2)
	go k2.srv.Serve(l)
	t.Cleanup(k2.kill)
	k2.registered(t)
	if took := time.Since(listening); took > time.Second {
		t.Errorf("registered %s after the kubelet listened; want well under a second", took.Round(time.Millisecond))
	}
}

// A plugin socket removed while the kubelet runs (by hand, or by a
// cleanup that raced a restart): the agent serves on a new socket and
// registers it, and the kubelet keeps the device through the switch. The
// old socket is served on until that kubelet goes: ending its stream
// would make a kubelet of v1.36 or older drop the new registration. The
// next kubelet finds only the new one.
func TestServesANewSocketWhenItsOwnIsRemoved(t *testing.T) {
	forEachKeying(t, func(t *testing.T, dir string, k *fakeKubelet) {
		const pci = "0000:3b:00.0"
		byResource := k.byResource
		startPlugin(t, dir, []PF{{PCI: pci, Phase: Free}})
		first := k.registered(t)
		if err := os.Remove(filepath.Join(dir, first.Endpoint)); err != nil {
			t.Fatal(err)
		}
		second := k.registered(t)
		if second.Endpoint == first.Endpoint {
			t.Fatalf("registered %s again", first.Endpoint)
		}
		if a, r := k.settled(t, pci); a != 2 || r != 0 {
			t.Fatalf("%d registrations accepted, %d refused; want 2, 0", a, r)
		}
		k.kill()
		k = startKubelet(t, dir)
		k.byResource = byResource
		if a, r := k.settled(t, pci); a != 1 || r != 0 {
			t.Fatalf("next kubelet: %d registrations accepted, %d refused; want 1, 0", a, r)
		}
		if _, err := os.Stat(filepath.Join(dir, first.Endpoint)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the replaced socket is still there: %v", err)
		}
	})
}

// A kubelet that ends the stream of our registration while it still runs
// has dropped us (a v1.36 kubelet does when an older stream of ours ends
// after the new registration, as at an agent restart): the agent
// registers again, once.
func TestRegistersAgainWhenTheKubeletDropsIt(t *testing.T) {
	dir := t.TempDir()
	const pci = "0000:3b:00.0"
	k := startKubelet(t, dir)
	startPlugin(t, dir, []PF{{PCI: pci, Phase: Free}})
	first := k.registered(t)
	k.settled(t, pci)
	k.drop(filepath.Join(dir, first.Endpoint))
	again := k.registered(t)
	if a, r := k.settled(t, pci); a != 2 || r != 0 {
		t.Fatalf("%d registrations accepted, %d refused; want 2, 0", a, r)
	}
	t.Logf("dropped on %s, registered again on %s", first.Endpoint, again.Endpoint)
}

// A restarted agent never registers a socket path its predecessor used:
// a v1.37 kubelet that handles the end of the old stream after the new
// registration on the same path disconnects both.
func TestARestartedAgentUsesNewSocketNames(t *testing.T) {
	dir := t.TempDir()
	const pci = "0000:3b:00.0"
	k := startKubelet(t, dir)
	dp := NewDevicePlugin("prow/sriov", testLogger(t))
	dp.Update([]PF{{PCI: pci, Phase: Free}})
	var names []string
	for range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() {
			done <- (&Server{Dir: dir, Socket: "sriov-passthrough.sock", Plugin: dp, Log: dp.Log}).Run(ctx)
		}()
		names = append(names, k.registered(t).Endpoint)
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if names[0] == names[1] {
		t.Fatalf("two runs of the agent registered the same socket %s", names[0])
	}
}

// In a DaemonSet's surge the new agent starts while the old one still
// serves: it leaves the old one's socket alone, so the old agent does not
// serve and register a new one after the new agent's registration. With a
// kubelet of v1.36 or older that registration would make the old agent the
// resource's client, and its exit then left the kubelet with prow/sriov
// stopped and the new agent's stream open (make k8s-e2e's v1.34 pass saw
// every pod refused at admission). When the old agent stops, the kubelet
// has the device through the new one.
func TestASurgingAgentLeavesTheOldAgentsSocket(t *testing.T) {
	forEachKeying(t, func(t *testing.T, dir string, k *fakeKubelet) {
		const pci = "0000:3b:00.0"
		_, stopOld := runPlugin(t, dir, []PF{{PCI: pci, Phase: Free}})
		t.Cleanup(stopOld)
		old := k.registered(t)
		startPlugin(t, dir, []PF{{PCI: pci, Phase: Free}})
		k.registered(t)
		if _, err := os.Stat(filepath.Join(dir, old.Endpoint)); err != nil {
			t.Fatalf("the old agent's socket %s after the new agent started: %v", old.Endpoint, err)
		}
		select {
		case r := <-k.regs:
			t.Fatalf("registered %s after the new agent did: the old agent lost its socket", r.Endpoint)
		case <-time.After(500 * time.Millisecond):
		}
		stopOld()
		k.settled(t, pci)
		if _, err := os.Stat(filepath.Join(dir, old.Endpoint)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the old agent's socket %s is left after it stopped: %v", old.Endpoint, err)
		}
	})
}

// The agent's sockets are its own: an old run's are removed at start, and
// the current one when the agent stops.
func TestRemovesItsSockets(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"sriov-passthrough.sock", "sriov-passthrough.7.sock", "sriov-passthrough.dnc0-3.sock"} {
		l, err := net.Listen("unix", filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
	}
	k := startKubelet(t, dir)
	// (startKubelet removed both, as a kubelet would; put one back as if
	// the kubelet had started before the old agent's last socket.)
	l, err := net.Listen("unix", filepath.Join(dir, "sriov-passthrough.7.sock"))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	dp := NewDevicePlugin("prow/sriov", testLogger(t))
	dp.Update(nil) // a look at a node without PFs: the agent registers only after one
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- (&Server{Dir: dir, Socket: "sriov-passthrough.sock", Plugin: dp, Log: dp.Log}).Run(ctx)
	}()
	k.registered(t)
	if _, err := os.Stat(filepath.Join(dir, "sriov-passthrough.7.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an old run's socket is still there: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "sriov-passthrough*")); len(left) > 0 {
		t.Errorf("the agent's sockets are left after it stopped: %v", left)
	}
}

// The kubelet takes a plugin's first list as the truth: an empty one says
// the node has no prow/sriov, a wrong one lets it admit pods on it. The
// agent registers only once it has looked at the node.
func TestRegistersOnlyAfterTheFirstLook(t *testing.T) {
	dir := t.TempDir()
	const pci = "0000:3b:00.0"
	k := startKubelet(t, dir)
	dp := NewDevicePlugin("prow/sriov", testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		(&Server{Dir: dir, Socket: "sriov-passthrough.sock", Plugin: dp, Log: dp.Log}).Run(ctx)
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done })
	// Time for a server that does not wait to register with nothing to
	// say; one that waits registers only after the Update, however slow
	// the machine.
	time.Sleep(300 * time.Millisecond)
	dp.Update([]PF{{PCI: pci, Phase: Free}})
	k.registered(t)
	k.settled(t, pci)
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.firsts) != 1 || k.firsts[0][pci] != pluginapi.Healthy {
		t.Fatalf("first lists the kubelet got: %v; want one, with %s Healthy", k.firsts, pci)
	}
}
