package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestBaselineIsReadFromTheNodeConfig(t *testing.T) {
	node := writeNode(t, `{"sriovBaseline":{"numVFs":"total","pfs":[`+
		`{"pci":"3B:00.1","numVFs":2,"name":"ens1f1"},{"pci":"0000:3b:00.2","name":"ens1f2"}]}}`)
	c, err := Parse([]byte(`{"cniVersion":"1.0.0","name":"n","type":"sriov-passthrough-cni"}`), node)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := NodeConf(node)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []*SRIOVBaseline{c.Baseline, agent.Baseline} {
		for pci, want := range map[string]struct {
			n    int
			name string
		}{"0000:3b:00.0": {7, ""}, "0000:3b:00.1": {2, "ens1f1"}, "0000:3b:00.2": {7, "ens1f2"}} {
			pf, ok := b.For(pci)
			n, err := pf.NumVFs.Resolve(7)
			if !ok || err != nil || n != want.n || pf.Name != want.name || pf.PCI != pci {
				t.Errorf("%s: %+v %v: %d VFs (%v), want %d named %q", pci, pf, ok, n, err, want.n, want.name)
			}
		}
	}
	if _, err := (PFBaseline{NumVFs: c.Baseline.PFs[0].NumVFs}).NumVFs.Resolve(1); err == nil ||
		!strings.Contains(err.Error(), "more than the PF's sriov_totalvfs 1") {
		t.Errorf("2 VFs on a PF with 1: %v", err)
	}
}

// Only the PFs listed have a baseline when the node-wide count is not
// set; without the field none has one (DEL gives back what ADD found).
func TestBaselineOnlyForThePFsListed(t *testing.T) {
	c, err := NodeConf(writeNode(t, `{"sriovBaseline":{"pfs":[{"pci":"0000:3b:00.1","numVFs":0}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Baseline.For("0000:3b:00.0"); ok {
		t.Error("a PF not listed has a baseline")
	}
	if pf, ok := c.Baseline.For("0000:3b:00.1"); !ok || pf.NumVFs.String() != "0" {
		t.Errorf("the PF listed: %+v %v", pf, ok)
	}
	c, err = NodeConf(writeNode(t, `{"requireDeviceID":true}`))
	if err != nil || c.Baseline != nil {
		t.Fatalf("no baseline: %+v %v", c, err)
	}
	if _, ok := c.Baseline.For("0000:3b:00.0"); ok {
		t.Error("a node without sriovBaseline has a baseline")
	}
}

// A bad value is refused, by the plugin and the agent alike, with an
// error that names the field by its path in node.json.
func TestBadBaselineIsRefusedNamingTheField(t *testing.T) {
	for _, tc := range []struct{ json, field, says string }{
		{`{"numVFs":"all"}`, "sriovBaseline.numVFs", `want a whole number or "total", got "all"`},
		{`{"numVFs":-1}`, "sriovBaseline.numVFs", "got -1"},
		{`{"numVFs":1.5}`, "sriovBaseline.numVFs", "got JSON 1.5"},
		{`{"numVFs":true}`, "sriovBaseline.numVFs", "got JSON true"},
		{`{"numVFs":4,"pfs":[{"pci":"eth0"}]}`, "sriovBaseline.pfs[0].pci", "not a PCI address"},
		{`{"numVFs":4,"pfs":[{"pci":"3b:00.0"},{"pci":"0000:3b:00.0"}]}`, "sriovBaseline.pfs[1].pci", "listed in sriovBaseline.pfs[0] already"},
		{`{"pfs":[{"pci":"0000:3b:00.0"}]}`, "sriovBaseline.pfs[0].numVFs", "required when"},
		{`{"numVFs":4,"pfs":[{"pci":"0000:3b:00.0","name":"a/b"}]}`, "sriovBaseline.pfs[0].name", "a/b"},
		{`{"numVFs":4,"pfs":[{"pci":"0000:3b:00.0","numVFs":"8"}]}`, "sriovBaseline.pfs[0].numVFs", `got "8"`},
		{`{"pfs":{"pci":"0000:3b:00.0"}}`, "sriovBaseline.pfs", "want []config.PFBaseline"},
		{`[4]`, "sriovBaseline", "want config.SRIOVBaseline"},
	} {
		node := writeNode(t, `{"sriovBaseline":`+tc.json+`}`)
		_, err := Parse([]byte(`{"name":"n"}`), node)
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Details, `"`+tc.field+`"`) ||
			!strings.Contains(e.Details, tc.says) {
			t.Errorf("%s: Parse: %v, want code 7 naming %s and saying %q", tc.json, err, tc.field, tc.says)
		}
		if _, err := NodeConf(node); err == nil || !strings.Contains(err.Error(), `"`+tc.field+`"`) {
			t.Errorf("%s: NodeConf: %v, want an error naming %s", tc.json, err, tc.field)
		}
	}
}

// A NAD must not declare the node's baseline: it would rewrite the VFs
// of every free PF on the node. DEL, replaying a cached configuration,
// ignores it and uses the node's.
func TestBaselineInTheNetworkConfigIsRefused(t *testing.T) {
	node := writeNode(t, `{"sriovBaseline":{"numVFs":2}}`)
	for _, field := range []string{"sriovBaseline", "SRIOVBaseline"} {
		_, err := Parse([]byte(`{"name":"n","`+field+`":{"numVFs":"total"}}`), node)
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, `"`+field+`" is node-only`) ||
			!strings.Contains(e.Details, "sriovBaseline belong") {
			t.Errorf("%s in the NAD: %v, want code 7, node-only", field, err)
		}
	}
	c, ignored, err := ParseRelease([]byte(`{"name":"n","sriovBaseline":{"numVFs":"total"}}`), node)
	if err != nil || len(ignored) != 1 || ignored[0] != "sriovBaseline" {
		t.Fatalf("DEL: %+v %v %v", c, ignored, err)
	}
	if pf, ok := c.Baseline.For("0000:3b:00.0"); !ok || pf.NumVFs.String() != "2" {
		t.Errorf("DEL uses the node's baseline: %+v", pf)
	}
}

// An older release reads a node.json that declares a baseline: it does
// not know the field and only warns (LoadNodeBytes lists it as unknown).
// This release's view of a node.json from a later one is the same.
func TestBaselineUnknownSubfieldsAreIgnored(t *testing.T) {
	n, err := LoadNodeBytes([]byte(`{"sriovBaseline":{"numVFs":3,"vfDriver":"default"},"laterField":1}`))
	if err != nil || n.SRIOVBaseline == nil || n.SRIOVBaseline.NumVFs.String() != "3" || len(n.Unknown) != 1 || n.Unknown[0] != "laterField" {
		t.Errorf("%+v %v", n, err)
	}
}
