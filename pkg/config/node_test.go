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
	node := writeNode(t, `{"pfNames":["ens1","ens2"],"reservedInterfaces":["eno1"],"stateDir":"/run/x","sysfsRoot":"/host/sys","requireDeviceID":true}`)
	c, err := Parse([]byte(`{"cniVersion":"1.0.0","name":"n","type":"sriov-passthrough-cni","nodeConfigFile":"` + node + `"}`))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.PFNames, []string{"ens1", "ens2"}) || c.StateDir != "/run/x" || c.SysfsRoot != "/host/sys" || !c.RequireDeviceID ||
		!slices.Equal(c.ReservedInterfaces, []string{"eno1"}) {
		t.Errorf("node fields not applied: %+v", c)
	}
	// The same values in both places are fine.
	if _, err := Parse([]byte(`{"name":"n","pfNames":["ens1","ens2"],"stateDir":"/run/x/","nodeConfigFile":"` + node + `"}`)); err != nil {
		t.Errorf("agreeing fields refused: %v", err)
	}
	agent, err := NodeConf(node)
	if err != nil || agent.StateDir != "/run/x" || !agent.RequireDeviceID || agent.ReservedFile() != DefaultReservedInterfacesFile {
		t.Errorf("NodeConf: %+v, %v", agent, err)
	}
}

func TestNetworkConfigThatDisagreesWithTheNodeIsACNIError(t *testing.T) {
	node := writeNode(t, `{"pfNames":["ens1"],"stateDir":"/run/x","reservedInterfacesFile":"/etc/r"}`)
	for field, value := range map[string]string{
		"pfNames": `["ens2"]`, "stateDir": `"/run/y"`, "reservedInterfacesFile": `""`,
	} {
		_, err := Parse([]byte(`{"name":"n","` + field + `":` + value + `,"nodeConfigFile":"` + node + `"}`))
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Details, `"`+field+`"`) || !strings.Contains(e.Details, node) {
			t.Errorf("%s=%s: got %v, want code 7 naming the field and the node file", field, value, err)
		}
	}
}

func TestNodeConfigRejectsUnknownFieldsAndBadPaths(t *testing.T) {
	for _, content := range []string{`{"pfname":["ens1"]}`, `{"stateDir":"relative"}`, `not json`} {
		node := writeNode(t, content)
		if _, err := NodeConf(node); err == nil {
			t.Errorf("NodeConf(%s) accepted", content)
		}
		if _, err := Parse([]byte(`{"name":"n","nodeConfigFile":"` + node + `"}`)); err == nil && content != `{"stateDir":"relative"}` {
			t.Errorf("Parse with node %s accepted", content)
		}
	}
	// No file: no node configuration, defaults as before.
	c, err := NodeConf(filepath.Join(t.TempDir(), "absent.json"))
	if err != nil || c.StateDir != DefaultStateDir || c.RequireDeviceID {
		t.Errorf("absent node file: %+v %v", c, err)
	}
}

func TestTopLevelDeviceIDPins(t *testing.T) {
	c, err := Parse([]byte(`{"name":"n","deviceID":"3b:00.0","nodeConfigFile":""}`))
	if err != nil || c.PinnedPCI() != "0000:3b:00.0" || c.AllocatedPCI() != "0000:3b:00.0" {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := Parse([]byte(`{"name":"n","deviceID":"0000:3b:00.0","runtimeConfig":{"deviceID":"0000:3c:00.0"},"nodeConfigFile":""}`)); err == nil {
		t.Error("two different deviceIDs accepted")
	}
	if _, err := Parse([]byte(`{"name":"n","deviceID":"0000:3b:00.0","pciBusID":"0000:3c:00.0","nodeConfigFile":""}`)); err == nil {
		t.Error("deviceID and pciBusID naming different PFs accepted")
	}
}
