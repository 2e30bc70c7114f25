package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// CheckNodeNamespaces checks that this process shares the kubelet's pid
// and network namespaces (hostPID and hostNetwork): the kubelet's are the
// node's, whatever the machine around it (in the project's one-node test
// cluster the node is itself a set of namespaces). Without the pid
// namespace the agent cannot see the processes that may hold a VF through
// vfio, nor judge pods' /proc/<pid>/ns/net paths; without the network
// namespace it watches and restores the wrong links.
//
// The kubelet is found through its registration socket: the kernel gives
// the listener's pid with the connection (SO_PEERCRED), translated into
// this process's pid namespace, and 0 when the kubelet is not visible from
// it. It waits up to wait for the socket to accept (a kubelet restarting).
func CheckNodeNamespaces(ctx context.Context, dir string, wait time.Duration) error {
	pid, err := kubeletPID(ctx, filepath.Join(dir, kubeletSocket), wait)
	if err != nil {
		return err
	}
	if pid == 0 {
		return errors.New("the kubelet is not in this process's pid namespace: run the agent with hostPID: true")
	}
	for _, ns := range []struct{ name, fix string }{{"pid", "hostPID: true"}, {"net", "hostNetwork: true"}} {
		mine, err := os.Readlink("/proc/self/ns/" + ns.name)
		if err != nil {
			return fmt.Errorf("read this process's %s namespace: %w", ns.name, err)
		}
		// Reading another process's namespace links needs ptrace read
		// access to it (CAP_SYS_PTRACE for a fuller-capped kubelet).
		theirs, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns.name))
		if err != nil {
			return fmt.Errorf("read the kubelet's (pid %d) %s namespace: %w", pid, ns.name, err)
		}
		if mine != theirs {
			return fmt.Errorf("not in the kubelet's %s namespace (this process %s, the kubelet %s): run the agent with %s",
				ns.name, mine, theirs, ns.fix)
		}
	}
	return nil
}

// kubeletPID connects to the kubelet's socket and returns the pid of the
// process that listens on it, as this pid namespace sees it.
func kubeletPID(ctx context.Context, sock string, wait time.Duration) (int32, error) {
	deadline := time.Now().Add(wait)
	for {
		pid, err := peerPID(sock)
		if err == nil {
			return pid, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("find the kubelet through %s: %w", sock, err)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func peerPID(sock string) (int32, error) {
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	return cred.Pid, nil
}
