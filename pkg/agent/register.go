package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// kubeletSocket is the kubelet's registration socket in the device-plugin
// directory.
const kubeletSocket = "kubelet.sock"

// Registration retries: a failed registration (or a socket that could not
// be served) is tried again after retryFirst, doubling up to retryMax; an
// event in the directory tries at once and starts the doubling over. recheck is how often the loop
// looks again when nothing happens, in case an event was missed.
const (
	retryFirst = 100 * time.Millisecond
	retryMax   = 5 * time.Second
	recheck    = 10 * time.Second
)

// Server serves a DevicePlugin on a socket in the kubelet's device-plugin
// directory and keeps it registered.
//
// What the kubelet does, which this follows: a starting kubelet removes
// every socket in the directory, then listens on kubelet.sock, knowing no
// plugin. On Register it connects to the plugin's socket and holds a
// ListAndWatch stream open; when that stream ends it disconnects the
// client, and with the resource's last client the resource itself (every
// device Unhealthy). How it finds "the client" differs by version: v1.37
// keys clients by socket path, and a path registered again before the end
// of its old stream was handled loses both; v1.36 and older key them by
// resource name, so the end of any older stream of ours disconnects the
// newest one. Hence:
//   - every socket has a name no process of ours used before (a process
//     token and a generation), so a restarted agent never races its
//     predecessor's stream on the same path;
//   - an old socket is never stopped while the kubelet it was registered
//     with still runs (a kubelet restart ends its streams anyway), and a
//     socket another agent still serves (a DaemonSet's surge) is its own;
//   - the agent registers exactly once with each kubelet, and again only
//     when its socket is replaced or the kubelet ends the stream of the
//     registration that counts (it dropped us).
type Server struct {
	// Dir is the kubelet's device-plugin directory, where kubelet.sock is.
	Dir string
	// Socket is the plugin's socket file name in Dir; each socket served
	// gets a process token and a generation number before the extension.
	Socket string
	Plugin *DevicePlugin
	Log    *slog.Logger

	// token tells this process's sockets from any earlier process's.
	token string
	// ended carries the endpoint whose ListAndWatch stream ended.
	ended chan streamEnd

	// What readiness is judged by: the registration that counts, and the
	// kubelet.sock it went through.
	mu         sync.Mutex
	regKubelet fileID
	regEP      *endpoint
	regSends   uint64 // regEP.sends before the registration
}

// endpoint is one socket the plugin is served on.
type endpoint struct {
	name string // in Dir
	id   fileID
	srv  *grpc.Server
	// kubelet is the kubelet.sock this endpoint was last registered
	// through (zero: never).
	kubelet fileID
	// streams is how many ListAndWatch streams are open on it, started
	// how many were ever opened, sends the lists sent on them.
	streams, started atomic.Int64
	sends            atomic.Uint64
}

// streamEnd says a stream of ep ended; seq is its place among ep's
// streams (1 for the first).
type streamEnd struct {
	ep  *endpoint
	seq int64
}

// endpointService is the DevicePlugin as served on one endpoint: its
// ListAndWatch streams are counted there.
type endpointService struct {
	*DevicePlugin
	ep    *endpoint
	ended chan<- streamEnd
}

func (e endpointService) ListAndWatch(_ *pluginapi.Empty, s grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	seq := e.ep.started.Add(1)
	e.ep.streams.Add(1)
	defer func() {
		e.ep.streams.Add(-1)
		select {
		case e.ended <- streamEnd{e.ep, seq}:
		default: // the loop is gone or busy; it looks again on its own
		}
	}()
	return e.listAndWatch(s, func() { e.ep.sends.Add(1) })
}

// Run serves and registers until ctx ends, and returns once it has
// stopped serving and removed its sockets.
func (s *Server) Run(ctx context.Context) error {
	if err := validResource(s.Plugin.Resource); err != nil {
		return err
	}
	// Milliseconds, wrapping every two and a half years: short, as a
	// socket path has at most 107 bytes, and unique across restarts.
	s.token = strconv.FormatInt(time.Now().UnixMilli()%78364164096, 36)
	s.ended = make(chan streamEnd, 16)
	w, err := newDirWatch(s.Dir)
	if err != nil {
		return err
	}
	changed := make(chan struct{}, 1)
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		defer close(changed)
		for {
			if _, err := w.Next(); err != nil {
				return
			}
			select {
			case changed <- struct{}{}:
			default:
			}
		}
	}()
	s.removeOwnSockets()
	// The kubelet takes the first list on a registration as the node's
	// truth: an empty one before the agent has looked would withdraw every
	// device, a stale one admit pods on PFs that are not free.
	select {
	case <-ctx.Done():
		w.Close()
		<-watching
		return nil
	case <-s.Plugin.Looked():
	}
	var st registration
	// Stop in order: no more events (nothing serves or registers a socket
	// any more), then the gRPC servers (their streams end; the kubelet
	// drops the paths), then the sockets, once nobody serves them.
	defer func() {
		w.Close()
		<-watching
		s.stopAll(&st)
	}()
	backoff := retryFirst
	for {
		wait := recheck
		if s.converge(ctx, &st) {
			backoff = retryFirst
		} else {
			wait, backoff = backoff, min(2*backoff, retryMax)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case _, ok := <-changed:
			if !ok {
				timer.Stop()
				return errors.New("device-plugin directory watch ended")
			}
			// The directory changed: whatever failed before may work
			// now, and the next failure waits retryFirst again. A
			// restarting kubelet removes and creates files in a burst,
			// and its socket file exists (bind) a moment before it
			// accepts (listen), with no event in between: backoffs
			// doubled by the burst's failed tries left a kubelet that was
			// up without the agent for 5 s.
			backoff = retryFirst
		case e := <-s.ended:
			// The kubelet ended the stream of the registration that
			// counts, while it still runs: it dropped us (a v1.36
			// kubelet does so when an older stream of ours ends).
			// Streams of older registrations, of retired sockets, or of
			// a kubelet that is gone need nothing.
			if e.ep == st.registered && e.seq > st.startedBefore && e.ep.streams.Load() == 0 &&
				inode(filepath.Join(s.Dir, kubeletSocket)) == st.kubelet {
				s.Log.Warn("the kubelet ended our device list stream; registering again", "socket", e.ep.name)
				st.dropped = true
			}
		case <-timer.C:
		}
		timer.Stop()
	}
}

// registration is what the server serves and what the kubelet knows.
type registration struct {
	ep         *endpoint   // the socket served now
	registered *endpoint   // the socket the kubelet was told of
	kubelet    fileID      // the kubelet.sock it was told through
	retired    []*endpoint // sockets replaced, served still
	gen        int         // the next socket's generation
	// startedBefore is how many streams registered had before its
	// registration: a later one that ends is the kubelet's answer to it.
	startedBefore int64
	// dropped: the kubelet ended the registration's stream.
	dropped bool
}

// converge serves a socket if ours is gone and registers it if the kubelet
// does not know it yet (a new socket, a new kubelet, or a kubelet that
// dropped it). It reports false when something failed and is worth trying
// again without an event.
func (s *Server) converge(ctx context.Context, st *registration) bool {
	if st.ep == nil || inode(st.ep.path(s.Dir)) != st.ep.id {
		next, err := s.serve(st.gen)
		st.gen++
		if err != nil {
			s.Log.Error("device plugin", "error", err)
			return false
		}
		if st.ep != nil {
			s.Log.Info("our socket was removed; serving on a new one", "old", st.ep.name, "new", next.name)
			st.retired = append(st.retired, st.ep)
		}
		st.ep = next
	}
	now := inode(filepath.Join(s.Dir, kubeletSocket))
	s.stopRetired(st, now)
	if now == (fileID{}) || (st.ep == st.registered && now == st.kubelet && !st.dropped) {
		return true
	}
	ep := st.ep
	sends, started := ep.sends.Load(), ep.started.Load()
	if err := s.register(ctx, ep.name); err != nil {
		s.Log.Error("device plugin", "error", err)
		return false
	}
	// A kubelet that restarted during the call replaced kubelet.sock: the
	// registration succeeded, so it reached the live one, the new one (a
	// killed kubelet's socket refuses connections).
	if after := inode(filepath.Join(s.Dir, kubeletSocket)); after != (fileID{}) {
		now = after
	}
	s.Log.Info("registered with the kubelet", "resource", s.Plugin.Resource, "socket", ep.path(s.Dir))
	st.registered, st.kubelet, st.startedBefore, st.dropped = ep, now, started, false
	ep.kubelet = now
	s.mu.Lock()
	s.regKubelet, s.regEP, s.regSends = now, ep, sends
	s.mu.Unlock()
	return true
}

// stopRetired stops the replaced sockets whose kubelet is gone: their
// streams died with it. One registered with the kubelet that runs now is
// kept: stopping it would end its stream, and a kubelet of v1.36 or older
// then disconnects our newest registration instead.
func (s *Server) stopRetired(st *registration, kubelet fileID) {
	kept := st.retired[:0]
	for _, e := range st.retired {
		if e.kubelet == kubelet && kubelet != (fileID{}) {
			kept = append(kept, e)
			continue
		}
		e.stop()
		if inode(e.path(s.Dir)) == e.id {
			os.Remove(e.path(s.Dir))
		}
	}
	st.retired = kept
}

// stopAll stops serving when the agent stops, every server first, and
// then removes its sockets: the kubelet must not dial a socket nobody
// serves, and a socket removed while still served would be a path the
// kubelet is connected to but cannot see. Only a socket that is still
// ours is removed.
func (s *Server) stopAll(st *registration) {
	s.mu.Lock()
	s.regKubelet, s.regEP = fileID{}, nil
	s.mu.Unlock()
	eps := st.retired
	if st.ep != nil {
		eps = append(eps, st.ep)
	}
	for _, e := range eps {
		e.stop()
	}
	for _, e := range eps {
		if inode(e.path(s.Dir)) == e.id {
			os.Remove(e.path(s.Dir))
		}
	}
	st.retired, st.ep = nil, nil
}

// socketName is the name of the gen'th socket of this process:
// "<stem>.<token>-<gen><ext>".
func (s *Server) socketName(gen int) string {
	ext := filepath.Ext(s.Socket)
	return fmt.Sprintf("%s.%s-%d%s", strings.TrimSuffix(s.Socket, ext), s.token, gen, ext)
}

// removeOwnSockets removes what an earlier run of the agent left: its
// sockets, under any name it gives them (and the bare name older
// releases used), that no process serves any more.
//
// A socket that accepts a connection is another agent's that still runs:
// in a DaemonSet's surge the old pod serves until the new one is ready,
// and removes its sockets itself when it stops. Removing it would make
// that agent serve and register a new socket, after this one registered.
// A kubelet of v1.36 or older, with one client per resource, then has the
// old agent as its client, and when the old agent stops it marks the
// resource stopped while this agent's stream stays open: the node has no
// device plugin until something registers again, and every pod asking for
// prow/sriov fails admission ("endpoint ... has been stopped").
func (s *Server) removeOwnSockets() {
	ext := filepath.Ext(s.Socket)
	stale, _ := filepath.Glob(filepath.Join(s.Dir, strings.TrimSuffix(s.Socket, ext)+".*"+ext))
	for _, p := range append(stale, filepath.Join(s.Dir, s.Socket)) {
		if served(p) {
			s.Log.Info("leaving a socket another agent still serves", "socket", p)
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.Log.Warn("remove stale socket", "error", err)
		}
	}
}

// served reports whether a process accepts connections on the unix socket
// at path. A socket file whose process is gone refuses them at once.
func served(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// serve listens on the gen'th socket and serves the plugin there.
func (s *Server) serve(gen int) (*endpoint, error) {
	name := s.socketName(gen)
	path := filepath.Join(s.Dir, name)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// The listener must not unlink the path when it closes: by then it
	// may name nothing of ours.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	ep := &endpoint{name: name, id: inode(path), srv: grpc.NewServer()}
	pluginapi.RegisterDevicePluginServer(ep.srv, endpointService{DevicePlugin: s.Plugin, ep: ep, ended: s.ended})
	go ep.srv.Serve(l)
	return ep, nil
}

func (e *endpoint) path(dir string) string { return filepath.Join(dir, e.name) }

// stop ends the endpoint's streams; the kubelet then drops the path.
func (e *endpoint) stop() { e.srv.Stop() }

func (s *Server) register(ctx context.Context, endpoint string) error {
	kubelet := filepath.Join(s.Dir, kubeletSocket)
	conn, err := grpc.NewClient("unix://"+kubelet, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to kubelet: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     endpoint,
		ResourceName: s.Plugin.Resource,
		Options:      &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true},
	})
	if err != nil {
		return fmt.Errorf("register %s (socket %s) with the kubelet at %s: %w", s.Plugin.Resource, endpoint, kubelet, err)
	}
	return nil
}

// fileID tells one socket file from its successor: a file system may give
// a new file the inode number of a removed one, but not the same change
// time as well. Zero when the file does not exist.
type fileID struct {
	ino   uint64
	ctime unix.Timespec
}

func inode(path string) fileID {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}
	}
	return fileID{st.Ino, st.Ctim}
}
