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
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// kubeletSocket is the kubelet's registration socket in the device-plugin
// directory.
const kubeletSocket = "kubelet.sock"

// retryRegistration is how long a failed registration (or a socket that
// could not be served) waits for the directory to change before it is
// tried again.
const retryRegistration = 5 * time.Second

// Server serves a DevicePlugin on a socket in the kubelet's device-plugin
// directory and keeps it registered.
//
// What the kubelet does, which this follows: a starting kubelet removes
// every socket in the directory, then listens on kubelet.sock, knowing no
// plugin. It knows a plugin by its resource and socket path, refuses a
// registration for a path it is still connected to ("device plugin
// already connected"), and when the ListAndWatch stream on a path ends it
// disconnects that path, and with the resource's last path the resource
// itself (every device Unhealthy). So the agent registers exactly once
// with each kubelet, serves every new socket under a name it has not used
// before, and stops serving an old socket only once the new one is
// registered.
type Server struct {
	// Dir is the kubelet's device-plugin directory, where kubelet.sock is.
	Dir string
	// Socket is the plugin's socket file name in Dir; later sockets get
	// a generation number before the extension.
	Socket string
	Plugin *DevicePlugin
	Log    *slog.Logger

	// The registration readiness is judged by: the kubelet.sock it went
	// through, and how many lists the plugin had sent before it.
	mu         sync.Mutex
	regKubelet fileID
	regSends   uint64
}

// endpoint is one socket the plugin is served on.
type endpoint struct {
	name string // in Dir
	id   fileID
	srv  *grpc.Server
}

// Run serves and registers until ctx ends, and returns once it has
// stopped serving and removed its socket.
func (s *Server) Run(ctx context.Context) error {
	if err := validResource(s.Plugin.Resource); err != nil {
		return err
	}
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
	// drops the paths), then the socket, once nobody serves it.
	defer func() {
		w.Close()
		<-watching
		s.stopAll(&st)
	}()
	for {
		var retry <-chan time.Time
		if !s.converge(ctx, &st) {
			retry = time.After(retryRegistration)
		}
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-changed:
			if !ok {
				return errors.New("device-plugin directory watch ended")
			}
		case <-retry:
		}
	}
}

// registration is what the server serves and what the kubelet knows.
type registration struct {
	ep         *endpoint   // the socket served now
	registered *endpoint   // the socket the kubelet was told of
	kubelet    fileID      // the kubelet.sock it was told through
	retired    []*endpoint // served still, until ep is registered
	gen        int         // the next socket's generation
}

// converge serves a socket if ours is gone and registers it if the kubelet
// does not know it yet (a new socket, or a new kubelet). It reports false
// when something failed and is worth trying again without an event.
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
	if now == (fileID{}) || (st.ep == st.registered && now == st.kubelet) {
		return true
	}
	sends := s.Plugin.sends.Load()
	if err := s.register(ctx, st.ep.name); err != nil {
		s.Log.Error("device plugin", "error", err)
		return false
	}
	s.Log.Info("registered with the kubelet", "resource", s.Plugin.Resource, "socket", st.ep.path(s.Dir))
	st.registered, st.kubelet = st.ep, now
	s.mu.Lock()
	s.regKubelet, s.regSends = now, sends
	s.mu.Unlock()
	for _, e := range st.retired {
		e.stop()
	}
	st.retired = nil
	return true
}

// stopAll stops serving when the agent stops, every server first, and
// then removes its socket: the kubelet must not dial a socket nobody
// serves, and a socket removed while still served would be a path the
// kubelet is connected to but cannot see. Only a socket that is still
// ours is removed (a new agent may already serve under the same name).
func (s *Server) stopAll(st *registration) {
	for _, e := range st.retired {
		e.stop()
	}
	st.retired = nil
	s.mu.Lock()
	s.regKubelet = fileID{}
	s.mu.Unlock()
	if st.ep == nil {
		return
	}
	st.ep.stop()
	if inode(st.ep.path(s.Dir)) == st.ep.id {
		os.Remove(st.ep.path(s.Dir))
	}
	st.ep = nil
}

// socketName is the name of the gen'th socket: Socket itself first, then
// "<stem>.<gen><ext>".
func (s *Server) socketName(gen int) string {
	if gen == 0 {
		return s.Socket
	}
	ext := filepath.Ext(s.Socket)
	return fmt.Sprintf("%s.%d%s", strings.TrimSuffix(s.Socket, ext), gen, ext)
}

// removeOwnSockets removes what an earlier run of the agent left: its
// sockets, under any generation.
func (s *Server) removeOwnSockets() {
	ext := filepath.Ext(s.Socket)
	stale, _ := filepath.Glob(filepath.Join(s.Dir, strings.TrimSuffix(s.Socket, ext)+".*"+ext))
	for _, p := range append(stale, filepath.Join(s.Dir, s.Socket)) {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.Log.Warn("remove stale socket", "error", err)
		}
	}
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
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, s.Plugin)
	go srv.Serve(l)
	return &endpoint{name: name, id: inode(path), srv: srv}, nil
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
