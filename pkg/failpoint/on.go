//go:build failpoints

package failpoint

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

var (
	mu     sync.Mutex
	target string
	nth    int
	hits   int
)

// trace, when SRIOVPT_FAILPOINT_TRACE names a file descriptor, receives
// the name of every failpoint passed: tests learn from one run how often
// each is hit.
var trace *os.File

func init() {
	target, nth = parse(os.Getenv(Env))
	if fd, err := strconv.Atoi(os.Getenv(TraceEnv)); err == nil {
		trace = os.NewFile(uintptr(fd), "failpoint-trace")
	}
}

// parse splits "name@N"; N defaults to 1, and a bad N disables the point
// rather than killing at a step the test did not ask for.
func parse(v string) (string, int) {
	name, n, found := strings.Cut(v, "@")
	if !found {
		return name, 1
	}
	i, err := strconv.Atoi(n)
	if err != nil || i < 1 {
		return "", 0
	}
	return name, i
}

// Hit kills the process if SRIOVPT_FAILPOINT selects this hit of step.
func Hit(step Step) {
	name := string(step)
	if trace != nil {
		_, _ = trace.WriteString(name + "\n")
	}
	if target == "" || name != target {
		return
	}
	mu.Lock()
	hits++
	n := hits
	mu.Unlock()
	if n != nth {
		return
	}
	die(name)
}

func die(name string) {
	if fd, err := strconv.Atoi(os.Getenv(NotifyEnv)); err == nil {
		f := os.NewFile(uintptr(fd), "failpoint-notify")
		_, _ = f.WriteString(name + "\n")
		_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is not deliverable late, but never return regardless
}
