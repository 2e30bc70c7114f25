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

func code(t *testing.T, err error) uint {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("want *types.Error, got %T: %v", err, err)
	}
	return e.Code
}

func TestParseDefaults(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"sriov-passthrough-cni","type":"sriov-passthrough-cni","someRuntimeField":{"x":1}}`), "")
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != DefaultStateDir || c.SysfsRoot != DefaultSysfsRoot || c.LogLevel != "info" ||
		c.ReservedFile() != DefaultReservedInterfacesFile || c.PinnedPCI() != "" {
		t.Errorf("defaults not applied: %+v", c)
	}
}

func TestParseFullExample(t *testing.T) {
	node := writeNode(t, `{"reservedInterfacesFile":"","stateDir":"/run/x","sysfsRoot":"/sys","logFile":"/var/log/x.log"}`)
	c, err := Parse([]byte(`{ "cniVersion": "1.1.0", "name": "sriov-passthrough-cni", "type": "sriov-passthrough-cni",
	  "pciBusID": "", "pfNames": ["ens1f0"], "reservedInterfaces": ["eno1"], "logLevel": "debug", "ipam": {},
	  "capabilities": { "deviceID": true }, "runtimeConfig": {"deviceID": "3B:00.1"} }`), node)
	if err != nil {
		t.Fatal(err)
	}
	if c.PinnedPCI() != "0000:3b:00.1" || c.ReservedFile() != "" || !slices.Equal(c.PFNames, []string{"ens1f0"}) ||
		c.LogFile != "/var/log/x.log" || c.StateDir != "/run/x" || c.LogLevel != "debug" {
		t.Errorf("parsed %+v", c)
	}
}

func TestParseRejectsWithFieldName(t *testing.T) {
	for _, tc := range []struct {
		conf, field string
		code        uint
	}{
		{`{"name":"n","pfNames":"ens1f0"}`, `"pfNames"`, types.ErrDecodingFailure},
		{`{"name":"n","pciBusID":"eth0"}`, `"pciBusID"`, types.ErrInvalidNetworkConfig},
		{`{"name":"n","runtimeConfig":{"deviceID":"zz:00.0"}}`, `"runtimeConfig.deviceID"`, types.ErrInvalidNetworkConfig},
		{`{"name":"n","pciBusID":"0000:3b:00.0","runtimeConfig":{"deviceID":"0000:3c:00.0"}}`, "name different PFs", types.ErrInvalidNetworkConfig},
		{`{"name":"n","pfNames":["has space"]}`, `"pfNames[0]"`, types.ErrInvalidNetworkConfig},
		{`{"name":"n","logLevel":"loud"}`, `"logLevel"`, types.ErrInvalidNetworkConfig},
		{`{"name":"n","runtimeConfig":{"CNIDeviceInfoFile":"x.json"}}`, `"runtimeConfig.CNIDeviceInfoFile"`, types.ErrInvalidNetworkConfig},
		{`{"type":"x"}`, `"name"`, types.ErrInvalidNetworkConfig},
		{`{"name":`, "not valid JSON", types.ErrDecodingFailure},
	} {
		_, err := Parse([]byte(tc.conf), "")
		if err == nil {
			t.Errorf("%s: accepted", tc.conf)
			continue
		}
		if got := code(t, err); got != tc.code || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: code %d %q, want code %d naming %s", tc.conf, got, err, tc.code, tc.field)
		}
	}
}

func TestValidateIfName(t *testing.T) {
	for name, ok := range map[string]bool{"net1": true, "a": true, "fifteen-chars-x": true, "sixteen-chars-xx": false,
		"": false, ".": false, "..": false, "a/b": false, "a:b": false, "a b": false, "a\tb": false,
		"n\u00e9t1":    true,  // UTF-8 the kernel and JSON both carry
		"net\u00a01":   false, // no-break space: white space to the runtime's rule
		"net\xff":      false, // not UTF-8: JSON would turn it into U+FFFD
		"net\xc3":      false, // a truncated sequence
		"\xed\xa0\x80": false, // an encoded surrogate
	} {
		err := ValidateIfName(name)
		if (err == nil) != ok {
			t.Errorf("ValidateIfName(%q) = %v, want ok=%v", name, err, ok)
		}
		if err != nil && code(t, err) != types.ErrInvalidEnvironmentVariables {
			t.Errorf("ValidateIfName(%q): code %d, want 4", name, code(t, err))
		}
	}
}

// pfNames take altnames, which may be up to 127 bytes.
func TestValidateLinkName(t *testing.T) {
	for name, ok := range map[string]bool{"net1": true, "enp59s0f0np0": true, strings.Repeat("a", 127): true,
		strings.Repeat("a", 128): false, "a-long-altname-with space": false, "a-long-altname/with-slash": false,
		"a-long-altname-\xff-not-utf8": false, "": false, ".": false, "sixteen-chars-xx": true} {
		if err := ValidateLinkName(name); (err == nil) != ok {
			t.Errorf("ValidateLinkName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
	long := strings.Repeat("p", 100)
	if c, err := Parse([]byte(`{"name":"n","pfNames":["`+long+`"],"reservedInterfaces":["`+long+`"]}`), ""); err != nil || c.PFNames[0] != long {
		t.Errorf("a 100-byte altname in pfNames and reservedInterfaces: %v", err)
	}
}

func TestParseReserved(t *testing.T) {
	got, err := ParseReserved(strings.NewReader("# reserved NICs\n\neno1\n  eno2   # storage\nbond0 bond1\n#eno9\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"eno1", "eno2", "bond0", "bond1"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestLoadReservedMissingFileReservesNothing(t *testing.T) {
	got, err := LoadReserved(filepath.Join(t.TempDir(), "absent"))
	if err != nil || len(got) != 0 {
		t.Fatalf("missing file: %v %v", got, err)
	}
	dir := t.TempDir()
	if _, err := LoadReserved(dir); err == nil {
		t.Errorf("a directory as reserved file should be an error, not 'nothing reserved'")
	}
}

func TestReservedMergesConfigAndFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "reserved")
	if err := os.WriteFile(f, []byte("eno2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := &NetConf{ReservedInterfaces: []string{"eno1"}, ReservedInterfacesFile: &f}
	set, err := c.Reserved()
	if err != nil || !set["eno1"] || !set["eno2"] || len(set) != 2 {
		t.Fatalf("reserved %v %v", set, err)
	}
}

func TestParseArgs(t *testing.T) {
	pod, err := ParseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=kubevirt-prow-jobs;K8S_POD_NAME=job-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;OTHER=x")
	if err != nil {
		t.Fatal(err)
	}
	if pod.String() != "kubevirt-prow-jobs/job-1" || pod.UID != "u-1" || pod.InfraContainerID != "abc" {
		t.Errorf("pod %+v", pod)
	}
	if _, err := ParseArgs("OTHER=x"); err == nil || code(t, err) != types.ErrInvalidEnvironmentVariables {
		t.Errorf("unknown key without IgnoreUnknown: want code 4, got %v", err)
	}
	if p, err := ParseArgs(""); err != nil || p.String() != "unknown pod" {
		t.Errorf("empty CNI_ARGS: %v %v", p, err)
	}
}
