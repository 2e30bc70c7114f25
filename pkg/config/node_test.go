package config

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func writeNode(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "node.json")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestNodeConfigFillsTheNetworkConfig(t *testing.T) {
	node := writeNode(t, `{"pfNames":["ens1","ens2"],"reservedInterfaces":["eno1"],"stateDir":"/run/x","sysfsRoot":"/host/sys",`+
		`"logFile":"/var/log/sriovpt.log","logLevel":"warn","requireDeviceID":true}`)
	c, err := Parse([]byte(`{"cniVersion":"1.0.0","name":"n","type":"sriov-passthrough-cni"}`), node)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.PFNames, []string{"ens1", "ens2"}) || c.StateDir != "/run/x" || c.SysfsRoot != "/host/sys" || !c.RequireDeviceID ||
		!slices.Equal(c.ReservedInterfaces, []string{"eno1"}) || c.LogFile != "/var/log/sriovpt.log" || c.LogLevel != "warn" ||
		c.NodeConfigFile != node {
		t.Errorf("node fields not applied: %+v", c)
	}
	// The same values in both places are fine; a NAD may choose its own
	// log level.
	c, err = Parse([]byte(`{"name":"n","pfNames":["ens1","ens2"],"reservedInterfaces":["eno1"],"logLevel":"debug"}`), node)
	if err != nil || c.LogLevel != "debug" {
		t.Errorf("agreeing fields: %+v %v", c, err)
	}
	agent, err := NodeConf(node)
	if err != nil || agent.StateDir != "/run/x" || !agent.RequireDeviceID || agent.ReservedFile() != DefaultReservedInterfacesFile ||
		agent.LogFile != "/var/log/sriovpt.log" {
		t.Errorf("NodeConf: %+v, %v", agent, err)
	}
}

// Any namespace that can create a NAD writes the network configuration: it
// must not choose the node's state dir, sysfs, log file, reservations or
// node file. The refusal comes before the node file is read (here it is
// not even JSON), so nothing on the node has been touched.
func TestNodeOnlyFieldsInTheNetworkConfigAreRefused(t *testing.T) {
	node := writeNode(t, `not json`)
	for field, value := range map[string]string{
		"stateDir": `"/tmp/x"`, "nodeConfigFile": `""`, "sysfsRoot": `"/sys"`, "logFile": `"/etc/shadow"`,
		"reservedInterfacesFile": `""`, "StateDir": `"/tmp/x"`, "logfile": `5`,
	} {
		_, err := Parse([]byte(`{"name":"n","pfNames":["ens1"],"`+field+`":`+value+`}`), node)
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, `"`+field+`"`) ||
			!strings.Contains(e.Msg, "node-only") || !strings.Contains(e.Details, node) || !strings.Contains(e.Details, "deploy/node.json") {
			t.Errorf("%s=%s: got %#v, want code 7 naming the field and the node file", field, value, err)
		}
	}
	_, err := Parse([]byte(`{"name":"n","stateDir":"/a","logFile":"/b"}`), "")
	if err == nil || !strings.Contains(err.Error(), `"logFile", "stateDir"`) || !strings.Contains(err.Error(), DefaultNodeConfigFile) {
		t.Errorf("two node-only fields, no node file: %v", err)
	}
}

func TestNodeConfigPathComesFromTheEnvironment(t *testing.T) {
	t.Setenv(NodeConfigEnv, "")
	if got := NodeConfigPath(); got != DefaultNodeConfigFile {
		t.Errorf("unset: %s", got)
	}
	node := writeNode(t, `{"stateDir":"/run/from-env","logFile":"/run/from-env.log"}`)
	t.Setenv(NodeConfigEnv, node)
	c, err := Parse([]byte(`{"name":"n"}`), NodeConfigPath())
	if err != nil || c.StateDir != "/run/from-env" || c.LogFile != "/run/from-env.log" || c.NodeConfigFile != node {
		t.Errorf("node file from %s: %+v %v", NodeConfigEnv, c, err)
	}
	t.Setenv(NodeConfigEnv, "relative/node.json")
	if _, err := Parse([]byte(`{"name":"n"}`), NodeConfigPath()); err == nil || code(t, err) != types.ErrInvalidNetworkConfig {
		t.Errorf("a relative node file: %v", err)
	}
}

func TestNetworkConfigThatDisagreesWithTheNodeIsACNIError(t *testing.T) {
	node := writeNode(t, `{"pfNames":["ens1"],"reservedInterfaces":["eno1"]}`)
	for field, value := range map[string]string{"pfNames": `["ens2"]`, "reservedInterfaces": `["eno2"]`} {
		_, err := Parse([]byte(`{"name":"n","`+field+`":`+value+`}`), node)
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Details, `"`+field+`"`) || !strings.Contains(e.Details, node) {
			t.Errorf("%s=%s: got %v, want code 7 naming the field and the node file", field, value, err)
		}
	}
}

// A node.json written for a later release (an admin set a field this one
// does not know) is still read after a rollback: the unknown fields are
// named for the log, not refused, for ADD (Parse), DEL and GC
// (ParseRelease) and the agent (NodeConf). The fields it knows apply,
// spelt in any case as encoding/json matches them.
func TestNodeConfigUnknownFieldsAreNamedNotRefused(t *testing.T) {
	node := writeNode(t, `{"pfNames":["ens1"],"vfBaseline":{"numVFs":4},"RequireDeviceID":true,"zFlag":true}`)
	want := []string{"vfBaseline", "zFlag"}
	n, err := LoadNode(node)
	if err != nil || !slices.Equal(n.Unknown, want) || !n.RequireDeviceID || !slices.Equal(n.PFNames, []string{"ens1"}) {
		t.Fatalf("LoadNode: %+v %v; want unknown %v and the known fields applied", n, err, want)
	}
	nad := []byte(`{"name":"n"}`)
	c, err := Parse(nad, node)
	if err != nil || !slices.Equal(c.NodeUnknown, want) || !c.RequireDeviceID || !slices.Equal(c.PFNames, []string{"ens1"}) {
		t.Errorf("Parse: %+v %v", c, err)
	}
	c, _, err = ParseRelease(nad, node)
	if err != nil || !slices.Equal(c.NodeUnknown, want) {
		t.Errorf("ParseRelease: %+v %v", c, err)
	}
	agent, err := NodeConf(node)
	if err != nil || !slices.Equal(agent.NodeUnknown, want) || !agent.RequireDeviceID {
		t.Fatalf("NodeConf: %+v %v", agent, err)
	}
	var logs bytes.Buffer
	agent.WarnNodeUnknown(slog.New(slog.NewTextHandler(&logs, nil)))
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "fields=\"[vfBaseline zFlag]\"") ||
		!strings.Contains(logs.String(), node) {
		t.Errorf("warning %q: want the fields and the file named", logs.String())
	}
	// Without unknown fields, nothing is logged.
	logs.Reset()
	known, err := NodeConf(writeNode(t, `{"pfNames":["ens1"]}`))
	if err != nil || known.NodeUnknown != nil {
		t.Fatalf("NodeConf: %+v %v", known, err)
	}
	known.WarnNodeUnknown(slog.New(slog.NewTextHandler(&logs, nil)))
	if logs.Len() != 0 {
		t.Errorf("warned without unknown fields: %s", logs.String())
	}
	// The network configuration stays strict about node-only fields.
	_, err = Parse([]byte(`{"name":"n","stateDir":"/tmp/x"}`), node)
	if err == nil || code(t, err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), `"stateDir"`) {
		t.Errorf("a node-only field in the NAD next to a node.json with unknown fields: %v", err)
	}
}

// A field the release knows is still checked: a wrong type is refused
// naming the field, a wrong value as before, by every reader.
func TestNodeConfigRejectsWrongTypesAndBadValues(t *testing.T) {
	for content, want := range map[string]string{
		`{"pfNames":"ens1"}`:                 `field "pfNames": want []string, got JSON string`,
		`{"requireDeviceID":"yes"}`:          `field "requireDeviceID": want bool, got JSON string`,
		`{"stateDir":5,"futureField":1}`:     `field "stateDir": want string, got JSON number`,
		`["ens1"]`:                           `want a JSON object, got JSON array`,
		`not json`:                           `not valid JSON`,
		`{"stateDir":"relative"}`:            `field "stateDir": "relative" is not an absolute path`,
		`{"logFile":"x.log"}`:                `field "logFile": "x.log" is not an absolute path`,
		`{"reservedInterfacesFile":"etc/x"}`: `field "reservedInterfacesFile": "etc/x" is not an absolute path`,
		`{"logLevel":"loud"}`:                `loud`,
		`{"pfNames":["a/b"]}`:                `"a/b"`,
	} {
		node := writeNode(t, content)
		if _, err := NodeConf(node); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NodeConf(%s): %v, want an error saying %s", content, err, want)
		}
		for name, parse := range map[string]func([]byte, string) (*NetConf, error){
			"Parse": Parse,
			"ParseRelease": func(b []byte, f string) (*NetConf, error) {
				c, _, err := ParseRelease(b, f)
				return c, err
			},
		} {
			_, err := parse([]byte(`{"name":"n"}`), node)
			if err == nil || code(t, err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), want) {
				t.Errorf("%s with node %s: %v, want code 7 saying %s", name, content, err, want)
			}
		}
	}
	// A bad logLevel in the node file is blamed on that file, not on the
	// network configuration the engineer would then search in vain.
	node := writeNode(t, `{"logLevel":"loud"}`)
	if _, err := Parse([]byte(`{"name":"n"}`), node); err == nil || !strings.Contains(err.Error(), node) ||
		!strings.Contains(err.Error(), "invalid node configuration") {
		t.Errorf("node logLevel \"loud\": %v, want an invalid node configuration naming %s", err, node)
	}
	// No file: no node configuration, defaults as before.
	c, err := NodeConf(filepath.Join(t.TempDir(), "absent.json"))
	if err != nil || c.StateDir != DefaultStateDir || c.RequireDeviceID {
		t.Errorf("absent node file: %+v %v", c, err)
	}
}

func TestTopLevelDeviceIDPins(t *testing.T) {
	c, err := Parse([]byte(`{"name":"n","deviceID":"3b:00.0"}`), "")
	if err != nil || c.PinnedPCI() != "0000:3b:00.0" || c.AllocatedPCI() != "0000:3b:00.0" {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := Parse([]byte(`{"name":"n","deviceID":"0000:3b:00.0","runtimeConfig":{"deviceID":"0000:3c:00.0"}}`), ""); err == nil {
		t.Error("two different deviceIDs accepted")
	}
	if _, err := Parse([]byte(`{"name":"n","deviceID":"0000:3b:00.0","pciBusID":"0000:3c:00.0"}`), ""); err == nil {
		t.Error("deviceID and pciBusID naming different PFs accepted")
	}
}

// DEL and GC parse with ParseRelease: node-only fields are named, not
// refused, and the node's values are used.
func TestParseReleaseIgnoresNodeOnlyFields(t *testing.T) {
	node := writeNode(t, `{"stateDir":"/var/lib/node-state"}`)
	conf, ignored, err := ParseRelease([]byte(`{"name":"n","stateDir":"/tmp/nad","logFile":"/etc/shadow"}`), node)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ignored, []string{"logFile", "stateDir"}) || conf.StateDir != "/var/lib/node-state" || conf.LogFile != "" {
		t.Errorf("ParseRelease: ignored %v, stateDir %q, logFile %q; want both ignored and the node's state dir", ignored, conf.StateDir, conf.LogFile)
	}
}

// The agent is a device plugin unless node.json says dra; any other value
// keeps the agent from starting, naming the field and both values. The
// plugin does not act on the field and does not refuse it: a misspelt
// value must not stop the DELs that give jobs' PFs back.
func TestNodeAllocation(t *testing.T) {
	for content, want := range map[string]string{`{}`: AllocationDevicePlugin, `{"allocation":"devicePlugin"}`: AllocationDevicePlugin,
		`{"allocation":"dra"}`: AllocationDRA} {
		c, err := NodeConf(writeNode(t, content))
		if err != nil || c.Allocation != want {
			t.Errorf("%s: %q %v, want %q", content, c.Allocation, err, want)
		}
	}
	for _, bad := range []string{`"DRA"`, `"both"`, `"device-plugin"`} {
		node := writeNode(t, `{"allocation":`+bad+`}`)
		_, err := NodeConf(node)
		if err == nil || !strings.Contains(err.Error(), `field "allocation"`) || !strings.Contains(err.Error(), `"devicePlugin" or "dra"`) ||
			!strings.Contains(err.Error(), node) {
			t.Errorf("allocation %s: %v", bad, err)
		}
		if _, err := Parse([]byte(`{"cniVersion":"1.0.0","name":"n","type":"sriov-passthrough-cni"}`), node); err != nil {
			t.Errorf("the plugin refused allocation %s: %v", bad, err)
		}
	}
	if _, err := NodeConf(writeNode(t, `{"allocation":1}`)); err == nil || !strings.Contains(err.Error(), `"allocation"`) {
		t.Errorf("allocation of the wrong type: %v", err)
	}
}

// allocationByNode switches the nodes it names; the others follow
// allocation. A bad value for any node keeps the agent from starting,
// naming the node; the plugin does not refuse it.
func TestNodeAllocationByNode(t *testing.T) {
	c, err := NodeConf(writeNode(t, `{"allocationByNode":{"node-a":"dra","node-b":"devicePlugin"}}`))
	if err != nil {
		t.Fatal(err)
	}
	for node, want := range map[string]string{"node-a": AllocationDRA, "node-b": AllocationDevicePlugin,
		"node-c": AllocationDevicePlugin, "": AllocationDevicePlugin} {
		if got := c.AllocationOf(node); got != want {
			t.Errorf("AllocationOf(%q) = %q, want %q", node, got, want)
		}
	}
	c, err = NodeConf(writeNode(t, `{"allocation":"dra","allocationByNode":{"node-b":"devicePlugin"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.AllocationOf("node-a") != AllocationDRA || c.AllocationOf("node-b") != AllocationDevicePlugin {
		t.Errorf("allocation dra, node-b devicePlugin: node-a %q, node-b %q", c.AllocationOf("node-a"), c.AllocationOf("node-b"))
	}
	node := writeNode(t, `{"allocationByNode":{"node-a":"dra","node-b":"DRA"}}`)
	if _, err := NodeConf(node); err == nil || !strings.Contains(err.Error(), `field "allocationByNode", node "node-b": "DRA" is not "devicePlugin" or "dra"`) {
		t.Errorf("a bad value for node-b: %v", err)
	}
	if _, err := Parse([]byte(`{"cniVersion":"1.0.0","name":"n","type":"sriov-passthrough-cni"}`), node); err != nil {
		t.Errorf("the plugin refused a bad allocationByNode: %v", err)
	}
}
