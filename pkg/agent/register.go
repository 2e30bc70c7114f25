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
	"time"

	"golang.org/x/sys/unix"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// kubeletSocket is the kubelet's registration socket in the device-plugin
// directory.
const kubeletSocket = "kubelet.sock"

// Server serves a DevicePlugin on a socket in the kubelet's device-plugin
// directory and keeps it registered.
type Server struct {
	// Dir is the kubelet's device-plugin directory, where kubelet.sock is.
	Dir string
	// Socket is the plugin's own socket file name in Dir.
	Socket string
	Plugin *DevicePlugin
	Log    *slog.Logger
}

// Run serves and registers until ctx ends. A kubelet that restarts removes
// every plugin socket and re-creates kubelet.sock, forgetting all plugins:
// when either happens the server starts over and registers again.
func (s *Server) Run(ctx context.Context) error {
	if err := validResource(s.Plugin.Resource); err != nil {
		return err
	}
	w, err := newDirWatch(s.Dir)
	if err != nil {
		return err
	}
	defer w.Close()
	events := make(chan string, 16)
	go func() {
		defer close(events)
		for {
			paths, err := w.Next()
			if err != nil {
				return
			}
			for _, p := range paths {
				events <- p
			}
		}
	}()
	kubelet := filepath.Join(s.Dir, kubeletSocket)
	for ctx.Err() == nil {
		before := inode(kubelet)
		if err := s.serveOnce(ctx, events); err != nil {
			s.Log.Error("device plugin", "error", err)
			s.awaitKubelet(ctx, events, kubelet, before)
		}
	}
	return nil
}

// awaitKubelet waits, after a failed registration, for the kubelet's
// socket to be created anew, or a few seconds.
func (s *Server) awaitKubelet(ctx context.Context, events <-chan string, kubelet string, before fileID) {
	timeout := time.After(5 * time.Second)
	for {
		if now := inode(kubelet); now != (fileID{}) && now != before {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-timeout:
			return
		case _, ok := <-events:
			if !ok {
				return
			}
		}
	}
}

// serveOnce serves one socket life: listen, register, and return when
// the kubelet's socket is re-created or ours is removed.
func (s *Server) serveOnce(ctx context.Context, events <-chan string) error {
	sock := filepath.Join(s.Dir, s.Socket)
	if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, s.Plugin)
	go srv.Serve(l)
	defer srv.Stop()
	// The sockets' inodes tell a re-created socket from stale events.
	ours := inode(sock)
	kubelet := filepath.Join(s.Dir, kubeletSocket)
	theirs := inode(kubelet)
	if err := s.register(ctx); err != nil {
		return err
	}
	s.Log.Info("registered with the kubelet", "resource", s.Plugin.Resource, "socket", sock)
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-events:
			if !ok {
				return errors.New("device-plugin directory watch ended")
			}
			if now := inode(kubelet); now != (fileID{}) && now != theirs {
				s.Log.Info("kubelet socket re-created; registering again")
				return nil
			}
			if inode(sock) != ours {
				s.Log.Info("our socket was removed (kubelet restart); serving again")
				return nil
			}
		}
	}
}

func (s *Server) register(ctx context.Context) error {
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
		Endpoint:     s.Socket,
		ResourceName: s.Plugin.Resource,
		Options:      &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true},
	})
	if err != nil {
		return fmt.Errorf("register %s with the kubelet at %s: %w", s.Plugin.Resource, kubelet, err)
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

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
