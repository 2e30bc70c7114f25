//go:build k8s

// Package k8s holds the test that run.sh leaves the machine as it found it
// when a run is interrupted or fails; the scenarios are in ./scenarios.
package k8s

import (
	"bufio"
	"cmp"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// hostView is what a run must not change on the host.
type hostView struct {
	links, sysctls []string
	hostname       string
}

func look(t *testing.T) hostView {
	t.Helper()
	var v hostView
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifs {
		v.links = append(v.links, i.Name)
	}
	for _, k := range []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
		"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward"} {
		b, _ := os.ReadFile("/proc/sys/" + k)
		v.sysctls = append(v.sysctls, k+"="+strings.TrimSpace(string(b)))
	}
	v.hostname, _ = os.Hostname()
	return v
}

// runID is what the test learns of its run while it goes: the work dir's
// name, which run.sh gives the kubelet's cgroup root in every hierarchy,
// and the node's pid namespace (run.sh writes its init's pid to init.pid).
// What is left is looked for by these, so a run of the suite beside this
// one (another engineer's, or one still going when CI starts) is not taken
// for this run's leftovers; test/hostcheck still finds every sriovpt cgroup
// left on the machine at the end of make test.
type runID struct{ name, pidns string }

// learn fills in what the work dir shows so far.
func (r *runID) learn(base string) {
	if r.pidns != "" {
		return
	}
	dirs, _ := filepath.Glob(filepath.Join(base, "sriovpt-k8s.*"))
	if len(dirs) != 1 {
		return
	}
	r.name = filepath.Base(dirs[0])
	b, err := os.ReadFile(filepath.Join(dirs[0], "init.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if own, _ := os.Readlink("/proc/self/ns/pid"); err == nil && ns != own {
		r.pidns = ns
	}
}

// leftovers is what the run left: its cgroups (each with the tasks in it),
// mounts under its base dir and processes of its node.
func leftovers(base string, r runID) (cgroups, mounts, procs []string) {
	cgroups, _ = filepath.Glob("/sys/fs/cgroup/*/" + r.name)
	cgroups = withTasks(cgroups)
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, base) {
			mounts = append(mounts, l)
		}
	}
	nss, _ := filepath.Glob("/proc/[0-9]*/ns/pid")
	for _, ns := range nss {
		if link, err := os.Readlink(ns); err == nil && link == r.pidns {
			procs = append(procs, task(strings.Split(ns, "/")[2]))
		}
	}
	return cgroups, mounts, procs
}

// task names a process: its pid and its name.
func task(pid string) string {
	comm, _ := os.ReadFile("/proc/" + pid + "/comm")
	return pid + "(" + strings.TrimSpace(string(comm)) + ")"
}

// oldKubelet is the kubelet of make k8s-e2e's second pass (the Makefile's
// K8S_OLD_KUBELET passes it on; this is the same default).
var oldKubelet = cmp.Or(os.Getenv("K8S_OLD_KUBELET"), "v1.34.4")

// TestTeardown interrupts runs at six points, one of them with the older
// kubelet, one on a DRA node, one by closing the output, and checks that the
// host is as before each: same links, sysctls and hostname; no cgroup,
// mount, process or file of the run left.
func TestTeardown(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root and CI=true")
		}
		t.Skip("needs root")
	}
	cases := []struct {
		name   string
		env    []string
		signal syscall.Signal
		after  string // run.sh output line (substring) to interrupt at
		// closeOutput: at that line, close the output instead of
		// signalling (the reader went away: go test killed, a pipe
		// closed); whatever writes next, the node or run.sh, finds no
		// reader.
		closeOutput bool
	}{
		{name: "SIGTERM while a job holds a PF", env: []string{"K8S_E2E_RUN=TestReadmeProwJobs"}, signal: syscall.SIGTERM, after: "Running with"},
		{name: "output closed while a job holds a PF", env: []string{"K8S_E2E_RUN=TestReadmeProwJobs"}, closeOutput: true, after: "Running with"},
		{name: "SIGINT during bring-up", signal: syscall.SIGINT, after: "control plane: etcd and kube-apiserver ready"},
		{name: "failure after deploy", env: []string{"K8S_E2E_FAIL_AFTER=deploy"}},
		// make k8s-e2e's second pass: the node's kubelet three minors
		// older, with its own ways of making cgroups and sockets.
		{name: "SIGTERM while a job holds a PF on kubelet " + oldKubelet, env: []string{"K8S_E2E_RUN=TestReadmeProwJobs", "K8S_KUBELET_VERSION=" + oldKubelet}, signal: syscall.SIGTERM, after: "Running with"},
		// make k8s-e2e's DRA pass: containerd v2, its shims and the
		// claims the kubelet prepared.
		{name: "SIGTERM while a DRA job holds a PF", env: []string{"K8S_E2E_RUN=TestDRAReadmeProwJobs", "K8S_DRA=1"}, signal: syscall.SIGTERM, after: "Running with"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			before := look(t)
			cmd := exec.Command("bash", "run.sh")
			cmd.Env = append(append(ownEnv(), "K8S_E2E_TMP="+base), c.env...)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = cmd.Stdout
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			seen := false
			var run runID
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				t.Log(sc.Text())
				run.learn(base)
				if c.after != "" && !seen && strings.Contains(sc.Text(), c.after) {
					seen = true
					if c.closeOutput {
						_ = out.Close()
						break
					}
					_ = cmd.Process.Signal(c.signal)
				}
			}
			err = cmd.Wait()
			if c.after != "" && !seen {
				t.Fatalf("run.sh never printed %q", c.after)
			}
			if err == nil {
				t.Fatal("run.sh exited 0 after an interruption or failure")
			}
			t.Logf("run.sh: %v", err)
			if run.pidns == "" {
				t.Fatalf("never saw the node's pid namespace (%s/sriovpt-k8s.*/init.pid): nothing to look for", base)
			}
			time.Sleep(time.Second) // anything asynchronous would show by now
			after := look(t)
			cgroups, mounts, procs := leftovers(base, run)
			entries, _ := os.ReadDir(base)
			switch {
			case len(entries) != 0:
				t.Errorf("files left in %s: %v", base, entries)
			case !slices.Equal(before.links, after.links):
				t.Errorf("host links %v, before %v", after.links, before.links)
			case !slices.Equal(before.sysctls, after.sysctls):
				t.Errorf("host sysctls %v, before %v", after.sysctls, before.sysctls)
			case before.hostname != after.hostname:
				t.Errorf("hostname %q, before %q", after.hostname, before.hostname)
			case len(cgroups)+len(mounts)+len(procs) != 0:
				t.Errorf("left behind: cgroups %v, mounts %v, processes of the node %v", cgroups, mounts, procs)
			}
		})
	}
}

// ownEnv is this process's environment without the knobs a person may have
// set for a run of their own (K8S_E2E_SHELL would park every case's cluster
// until the test times out; K8S_E2E_RUN, K8S_KUBELET_VERSION and the others
// change what a case runs): each case sets the ones it needs.
func ownEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "K8S_E2E_") && !strings.HasPrefix(kv, "K8S_KUBELET_VERSION=") {
			env = append(env, kv)
		}
	}
	return env
}

// withTasks names, for each cgroup, the tasks in it and below it (pid and
// name), or none: whether a process still holds a left cgroup or the cgroup
// was made again by one that is gone is the first thing to know.
func withTasks(cgroups []string) []string {
	var out []string
	for _, cg := range cgroups {
		var tasks []string
		_ = filepath.WalkDir(cg, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(path)
			for _, pid := range strings.Fields(string(b)) {
				tasks = append(tasks, task(pid))
			}
			return nil
		})
		if len(tasks) == 0 {
			tasks = []string{"no task"}
		}
		out = append(out, cg+" ["+strings.Join(tasks, " ")+"]")
	}
	return out
}
