package plugin

import (
	"bytes"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// At logLevel debug, ADD and DEL each end with one line that times their
// steps in order: what an engineer reads to see where a slow ADD spent its
// time, and what make bench-vm's profile prints.
func TestDebugLogTimesEachStep(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 2)
	pod := e.NewPod()
	conf := e.Conf(map[string]any{"logLevel": "debug"})
	line := regexp.MustCompile(`msg=steps .* ok=true total=([0-9.]+)ms steps="([^"]*)"`)
	for _, c := range []struct {
		cmd   string
		steps []string
	}{
		{"ADD", []string{"config", "lock", "repair", "choose", "baseline", "plan", "record-adding", "move", "up", "result", "record-attached"}},
		{"DEL", []string{"config", "lock", "vet", "record-releasing", "move", "host-state", "sriov", "record-removed"}},
	} {
		var out, logs bytes.Buffer
		p := &Plugin{NodeConfigFile: e.NodeFile, LockTimeout: 10 * time.Second, SettleTimeout: 200 * time.Millisecond,
			ProcRoot: e.ProcRoot, Stdout: &out, Stderr: &logs}
		f := map[string]func() error{
			"ADD": func() error { return p.Add(args(pod, "c1", "net1", conf)) },
			"DEL": func() error { return p.Del(args(pod, "c1", "net1", conf)) },
		}[c.cmd]
		t.Setenv("CNI_COMMAND", c.cmd)
		if err := e.Host.Do(func(ns.NetNS) error { return f() }); err != nil {
			t.Fatalf("%s: %v\n%s", c.cmd, err, logs.String())
		}
		m := line.FindStringSubmatch(logs.String())
		if m == nil {
			t.Fatalf("%s logged no steps line:\n%s", c.cmd, logs.String())
		}
		var names []string
		for _, kv := range strings.Fields(m[2]) {
			name, v, _ := strings.Cut(kv, "=")
			if _, err := time.ParseDuration(v); err != nil {
				t.Errorf("%s step %q: %v", c.cmd, kv, err)
			}
			names = append(names, name)
		}
		if !slices.Equal(names, c.steps) {
			t.Errorf("%s steps %v, want %v", c.cmd, names, c.steps)
		}
	}
	assertHostIntact(t, e)
}
