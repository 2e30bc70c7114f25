package config

import (
	"errors"
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
			!strings.Contains(e.Msg, "node-only") || !strings.Contains(e.Details, node) || !strings.Contains(e.Details, "deploy/node-config.yaml") {
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

func TestNodeConfigRejectsUnknownFieldsAndBadPaths(t *testing.T) {
	for _, content := range []string{`{"pfname":["ens1"]}`, `{"stateDir":"relative"}`, `{"logFile":"x.log"}`,
		`{"reservedInterfacesFile":"etc/x"}`, `{"logLevel":"loud"}`, `not json`} {
		node := writeNode(t, content)
		if _, err := NodeConf(node); err == nil {
			t.Errorf("NodeConf(%s) accepted", content)
		}
		_, err := Parse([]byte(`{"name":"n"}`), node)
		if err == nil || code(t, err) != types.ErrInvalidNetworkConfig {
			t.Errorf("Parse with node %s: %v", content, err)
		}
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
