package integration

import (
	"context"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// ADD through libcni, as cnitool and multus run the plugin, with a
// configuration of each CNI version the plugin speaks: multus v3.x and
// the CI cluster's NAD use 0.3.0 to 0.4.0, multus v4 1.x. The result comes
// back in that version and lists each VF, then the PF as net1, all in the
// pod's sandbox: the PF is the last sandboxed interface, the one multus
// v3.x names the attachment after, and the IPAM address points at it. DEL
// then gives everything back.
func TestResultInEveryVersionListsThePFLast(t *testing.T) {
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			w := newWorld(t)
			pf := w.AddPF("ens1f0", 2)
			before := w.hostNames()
			list := w.list(map[string]any{"cniVersion": v, "ipam": map[string]any{
				"type": "host-local", "subnet": "192.0.2.0/28", "dataDir": filepath.Join(t.TempDir(), "ipam"),
			}})
			pod := w.NewPod()
			r := rt(pod, "job1", "net1")
			var res types.Result
			err := w.inHost(func() (err error) { res, err = w.cni().AddNetworkList(context.Background(), list, r); return err })
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			assertResultIn(t, res, v)
			cur, err := current.NewResultFromResult(res)
			if err != nil {
				t.Fatalf("convert the %s result: %v", v, err)
			}
			var sandboxed []string
			for _, i := range cur.Interfaces {
				if i.Sandbox != "" {
					if i.Sandbox != pod.Path() {
						t.Errorf("%s is in sandbox %q, want the pod's %s", i.Name, i.Sandbox, pod.Path())
					}
					sandboxed = append(sandboxed, i.Name)
				}
			}
			if want := []string{pf.VFs[0].Name, pf.VFs[1].Name, "net1"}; !slices.Equal(sandboxed, want) {
				t.Errorf("sandboxed interfaces %v, want %v: the PF last", sandboxed, want)
			}
			last := len(cur.Interfaces) - 1
			if len(cur.IPs) != 1 || cur.IPs[0].Interface == nil || *cur.IPs[0].Interface != last {
				t.Errorf("IPs %s, want one on the PF, interface %d", mustMarshal(t, cur.IPs), last)
			}
			if err := w.del(list, r); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if after := w.hostNames(); !slices.Equal(after, before) {
				t.Errorf("host not restored:\nbefore %v\nafter  %v", before, after)
			}
			if rec, err := (state.Store{Dir: w.StateDir}).Get(state.Key("job1", "net1")); err != nil || rec != nil {
				t.Errorf("record after DEL: %+v %v", rec, err)
			}
		})
	}
}

// assertResultIn checks that libcni parsed the plugin's output as a result
// of version v: the version the plugin printed, and that version's type.
func assertResultIn(t *testing.T, res types.Result, v string) {
	t.Helper()
	if res.Version() != v {
		t.Errorf("result version %s, want %s", res.Version(), v)
	}
	var ok bool
	switch v {
	case "0.3.0", "0.3.1", "0.4.0":
		_, ok = res.(*types040.Result)
	default:
		_, ok = res.(*current.Result)
	}
	if !ok {
		t.Errorf("a %s configuration got a %T result", v, res)
	}
}
