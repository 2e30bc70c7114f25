package plugin

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

func TestParseKernelRelease(t *testing.T) {
	for release, want := range map[string]KernelVersion{
		"5.10.0-32-amd64":     {5, 10},
		"6.12.95+deb12-amd64": {6, 12},
		"6.1.0-57-amd64":      {6, 1},
		"6.18":                {6, 18},
		"6.4-rc1":             {6, 4},
		"4.19.0-27-amd64":     {4, 19},
		"5.9.16":              {5, 9},
	} {
		got, err := ParseKernelRelease(release)
		if err != nil || got != want {
			t.Errorf("ParseKernelRelease(%q) = %v, %v; want %v", release, got, err, want)
		}
	}
	for _, bad := range []string{"", "6", "x.y", "-1.5", "6.x"} {
		if v, err := ParseKernelRelease(bad); err == nil {
			t.Errorf("ParseKernelRelease(%q) = %v, want an error", bad, v)
		}
	}
}

// Minor numbers compare as numbers: 5.9 is older than 5.10, 6.1 newer.
func TestKernelVersionLess(t *testing.T) {
	for _, c := range []struct {
		a, b KernelVersion
		less bool
	}{
		{KernelVersion{5, 9}, KernelVersion{5, 10}, true},
		{KernelVersion{4, 19}, KernelVersion{5, 10}, true},
		{KernelVersion{5, 10}, KernelVersion{5, 10}, false},
		{KernelVersion{6, 1}, KernelVersion{5, 10}, false},
		{KernelVersion{5, 11}, KernelVersion{5, 10}, false},
	} {
		if got := c.a.Less(c.b); got != c.less {
			t.Errorf("%v.Less(%v) = %v, want %v", c.a, c.b, got, c.less)
		}
	}
}

func TestCheckKernel(t *testing.T) {
	for release, refused := range map[string]bool{
		"4.19.0-27-amd64": true, "5.9.16": true, "5.4.0-216-generic": true, "garbage": true,
		"5.10.0-32-amd64": false, "6.1.0-57-amd64": false, "6.12.95+deb12-amd64": false,
	} {
		err := (&Plugin{KernelRelease: release}).checkKernel()
		if !refused {
			if err != nil {
				t.Errorf("kernel %s refused: %v", release, err)
			}
			continue
		}
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrPluginNotAvailable {
			t.Errorf("kernel %s: %v, want CNI error code 50", release, err)
			continue
		}
		if release != "garbage" && (!strings.Contains(e.Msg, release) || !strings.Contains(e.Msg, "5.10")) {
			t.Errorf("kernel %s: message %q does not name the kernel found and the minimum", release, e.Msg)
		}
	}
}

// On a kernel older than the minimum, ADD is refused before anything
// changes, STATUS says so, and DEL and GC still release what an ADD on a
// supported kernel (or an older release of the plugin) took.
func TestOldKernelRefusesAddButReleases(t *testing.T) {
	e := kerneltest.New(t)
	e.AddPF("ens1f0", 1)
	e.AddPF("ens2f0", 1) // free: only the kernel check refuses the second ADD
	conf := e.Conf(nil)
	pod := e.NewPod()
	add(t, e, pod, "c1", "net1", conf)

	old := func(cmd string, a func(*Plugin) error) error {
		var out, logs bytes.Buffer
		p := &Plugin{NodeConfigFile: e.NodeFile, LockTimeout: 10 * time.Second, SettleTimeout: 200 * time.Millisecond,
			KernelRelease: "4.19.0-27-amd64", Stdout: &out, Stderr: &logs}
		t.Setenv("CNI_COMMAND", cmd)
		err := e.Host.Do(func(ns.NetNS) error { return a(p) })
		t.Logf("%s on 4.19: err=%v\n%s", cmd, err, logs.String())
		return err
	}
	other := e.NewPod()
	err := old("ADD", func(p *Plugin) error { return p.Add(args(other, "c2", "net1", conf)) })
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != types.ErrPluginNotAvailable || !strings.Contains(ce.Msg, "4.19.0-27-amd64") {
		t.Fatalf("ADD on 4.19: %v, want code 50 naming the kernel", err)
	}
	if got := kerneltest.Links(t, other); len(got) != 0 {
		t.Errorf("a refused ADD moved %v", names(got))
	}
	if err := old("STATUS", func(p *Plugin) error { return p.Status(args(nil, "", "", conf)) }); !errors.As(err, &ce) || ce.Code != types.ErrPluginNotAvailable {
		t.Errorf("STATUS on 4.19: %v, want code 50", err)
	}
	if err := old("DEL", func(p *Plugin) error { return p.Del(args(pod, "c1", "net1", conf)) }); err != nil {
		t.Fatalf("DEL on 4.19: %v", err)
	}
	assertHostIntact(t, e)
}
