package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
)

var procNetns = regexp.MustCompile(`^/proc/[0-9]+/ns/net$`)

// CanSeeNetns says whether this process can tell that the netns at path is
// gone, nil when it can. A container sees a pod's netns only through the
// host's pid namespace (/proc/<pid>/ns/net paths) or a mount of the host's
// netns directory that receives the runtime's later bind mounts
// (HostToContainer propagation). Without them every live pod's netns looks
// absent, and releasing on that basis would take running jobs' PFs.
func CanSeeNetns(path string) error {
	// Only "no such file" means gone. Opening or even stat'ing another
	// process's /proc/<pid>/ns/net needs ptrace access to it (a container
	// without CAP_SYS_PTRACE is refused for processes with more
	// capabilities than its own): a refusal says nothing about the netns.
	if _, err := os.Stat(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cannot look at %s: %w", path, err)
	}
	if procNetns.MatchString(path) {
		if sriov.SeesEveryProcess("/proc") != nil {
			return errors.New("not in the host's pid namespace (hostPID), so /proc/<pid> paths name other processes")
		}
		return nil
	}
	return mountPropagatesFromHost(filepath.Dir(path))
}

// mountPropagatesFromHost checks that dir lies on a mount (other than the
// root file system) that is shared with, or a slave of, another mount
// namespace: the marks the kernel gives a HostToContainer (rslave) or
// Bidirectional hostPath volume and the host's own shared mounts.
func mountPropagatesFromHost(dir string) error {
	m, err := coveringMount(dir)
	if err != nil {
		return err
	}
	if m.point == "/" {
		return fmt.Errorf("%s is not a mount of its own (it is part of the root file system): mount the host's netns directory there", dir)
	}
	if !m.propagates {
		return fmt.Errorf("%s (mounted at %s) does not receive the host's mounts: mount it with HostToContainer propagation", dir, m.point)
	}
	return nil
}

type mount struct {
	point      string
	propagates bool
}

// coveringMount finds the mount that holds dir in /proc/self/mountinfo:
// the last listed mount whose mount point is dir or a parent of it (later
// mounts stack over earlier ones).
func coveringMount(dir string) (mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return mount{}, err
	}
	defer f.Close()
	dir = filepath.Clean(dir)
	if resolved, err := filepath.EvalSymlinks(dir); err == nil {
		dir = resolved
	}
	var best mount
	found := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options optional... - fstype ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 7 {
			continue
		}
		point := unescapeMount(fields[4])
		if point != dir && point != "/" && !strings.HasPrefix(dir, point+"/") {
			continue
		}
		if found && len(point) < len(best.point) {
			continue
		}
		m := mount{point: point}
		for _, opt := range fields[6:] {
			if opt == "-" {
				break
			}
			if strings.HasPrefix(opt, "shared:") || strings.HasPrefix(opt, "master:") {
				m.propagates = true
			}
		}
		best, found = m, true
	}
	if err := sc.Err(); err != nil {
		return mount{}, err
	}
	if !found {
		return mount{}, fmt.Errorf("no mount holds %s", dir)
	}
	return best, nil
}

// unescapeMount undoes mountinfo's octal escapes of space, tab, newline
// and backslash.
func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}
