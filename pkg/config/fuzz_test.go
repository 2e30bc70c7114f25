package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzParse feeds the config loader anything a NetworkAttachmentDefinition
// or a conf file could hold. It must never panic; every error is a CNI
// error; a configuration it accepts has every field the plugin relies on
// valid (absolute paths, a PCI address or nothing, a known log level), and
// its node-only settings from the node file, never from the data.
func FuzzParse(f *testing.F) {
	node := filepath.Join(f.TempDir(), "node.json")
	if err := os.WriteFile(node, []byte(`{"stateDir":"/run/node-state","sysfsRoot":"/host/sys","logLevel":"warn"}`), 0o644); err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		`{"cniVersion":"1.1.0","name":"n","type":"sriov-passthrough-cni"}`,
		`{"cniVersion":"1.1.0","name":"n","type":"t","pciBusID":"0000:3B:00.0","pfNames":["ens1f0"],"reservedInterfaces":["eno1"],` +
			`"reservedInterfacesFile":"","stateDir":"/var/lib/x","sysfsRoot":"/sys","logFile":"/tmp/l","logLevel":"debug","ipam":{"type":"host-local"},` +
			`"capabilities":{"deviceID":true},"runtimeConfig":{"deviceID":"0000:3b:00.0"}}`,
		`{"cniVersion":"1.1.0","name":"n","type":"t","pfNames":["ens1f0"],"logLevel":"debug","deviceID":"3b:00.0"}`,
		`{"name":"n","nodeConfigFile":""}`, `{"name":"n","StateDir":"/tmp"}`,
		`{"name":"n","cni.dev/valid-attachments":[{"containerID":"c","ifname":"net1"}]}`,
		`{"name":"n","cni.dev/attachments":[{"containerID":"c","ifname":"net1"}]}`,
		`{"name":"n","prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0"}]}}`,
		`{"name":"n","pfNames":"ens1f0"}`, `{"name":"n","stateDir":"relative"}`, `[]`, `null`, ``, `{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, node)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("error is %T, not a CNI error: %v", err, err)
			}
			return
		}
		if c.StateDir != "/run/node-state" || c.SysfsRoot != "/host/sys" || c.LogFile != "" {
			t.Fatalf("accepted a configuration whose node settings are not the node file's: %+v", c)
		}
		if c.Name == "" || !filepath.IsAbs(c.StateDir) || !filepath.IsAbs(c.SysfsRoot) {
			t.Fatalf("accepted a configuration without name or with relative paths: %+v", c)
		}
		if p := c.PinnedPCI(); p != "" && !IsPCIAddress(p) {
			t.Fatalf("accepted pinned PCI %q", p)
		}
		if _, err := ParseLogLevel(c.LogLevel); err != nil {
			t.Fatalf("accepted log level %q", c.LogLevel)
		}
		for _, n := range c.PFNames {
			if ValidateLinkName(n) != nil {
				t.Fatalf("accepted pfNames entry %q", n)
			}
		}
	})
}

// FuzzParseReserved: any file content, never a panic; every name it
// returns is one word with no comment in it.
func FuzzParseReserved(f *testing.F) {
	for _, s := range []string{"eno1\n", "# comment\n\neno1 eno2 # more\n\tens1f0\r\n", "", "#", "a#b", strings.Repeat("x", 300)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		names, err := ParseReserved(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, n := range names {
			if n == "" || strings.ContainsAny(n, "# \t\n\r") {
				t.Fatalf("reserved name %q from %q", n, s)
			}
		}
	})
}

// FuzzParseArgs: any CNI_ARGS, never a panic; every error is a CNI error.
func FuzzParseArgs(f *testing.F) {
	for _, s := range []string{
		"", "IgnoreUnknown=1;K8S_POD_NAMESPACE=ci;K8S_POD_NAME=job;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u",
		"K8S_POD_NAME=x", "FOO=bar", "IgnoreUnknown=1;FOO=bar", "=", ";;", "K8S_POD_NAME", "IgnoreUnknown=maybe",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pod, err := ParseArgs(s)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("error is %T, not a CNI error: %v", err, err)
			}
			return
		}
		_ = pod.String()
	})
}
