package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// DefaultNodeConfigFile is the node-local configuration that the plugin and
// the node agent both read. The DaemonSet installs it from its ConfigMap.
const DefaultNodeConfigFile = "/etc/sriov-passthrough-cni/node.json"

// Node is the node-local configuration: what a NetworkAttachmentDefinition
// could say about the node's PFs, said once for the plugin and for the
// agent (which has no API token and cannot read NADs). A NAD may repeat a
// field only with the same value.
type Node struct {
	PFNames                []string `json:"pfNames,omitempty"`
	ReservedInterfaces     []string `json:"reservedInterfaces,omitempty"`
	ReservedInterfacesFile *string  `json:"reservedInterfacesFile,omitempty"`
	StateDir               string   `json:"stateDir,omitempty"`
	SysfsRoot              string   `json:"sysfsRoot,omitempty"`
	// RequireDeviceID makes ADD refuse an attachment that carries no
	// deviceID from the kubelet's allocation. Multus passes nothing when a
	// pod did not request the resource, and the plugin would then pick a PF
	// the kubelet may have counted as free: on a node that runs the agent,
	// fail closed instead.
	RequireDeviceID bool `json:"requireDeviceID,omitempty"`
}

// LoadNode reads the node configuration; a missing file (or path "") is no
// node configuration, nil. Unknown fields are errors: a misspelt pool would
// otherwise silently widen it.
func LoadNode(path string) (*Node, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read node configuration: %w", err)
	}
	n, err := LoadNodeBytes(data)
	if err != nil {
		return nil, fmt.Errorf("node configuration %s: %w", path, err)
	}
	return n, nil
}

// LoadNodeBytes decodes a node configuration strictly.
func LoadNodeBytes(data []byte) (*Node, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	n := &Node{}
	if err := dec.Decode(n); err != nil {
		return nil, err
	}
	return n, nil
}

// NodeConf is the configuration a node-wide component (the agent) works
// with: the node file's fields over the defaults, validated as a network
// configuration would be.
func NodeConf(path string) (*NetConf, error) {
	n, err := LoadNode(path)
	if err != nil {
		return nil, err
	}
	c := &NetConf{NodeConfigFile: &path}
	c.Name = "node"
	if n != nil {
		c.PFNames, c.ReservedInterfaces, c.ReservedInterfacesFile = n.PFNames, n.ReservedInterfaces, n.ReservedInterfacesFile
		c.StateDir, c.SysfsRoot, c.RequireDeviceID = n.StateDir, n.SysfsRoot, n.RequireDeviceID
	}
	c.setDefaults()
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("node configuration %s: %w", path, err)
	}
	return c, nil
}

// NodeFile returns the node configuration file to read, "" for none.
func (c *NetConf) NodeFile() string {
	if c.NodeConfigFile == nil {
		return DefaultNodeConfigFile
	}
	return *c.NodeConfigFile
}

// applyNode fills the fields the network configuration left out from the
// node configuration, and refuses a field both set differently: the NAD
// and the node would otherwise disagree about which PFs exist, and the
// agent would advertise PFs the plugin refuses (or the other way round).
func (c *NetConf) applyNode(set map[string]bool) error {
	n, err := LoadNode(c.NodeFile())
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid node configuration", err.Error())
	}
	if n == nil {
		return nil
	}
	var errs []error
	merge := func(field string, nad, node any, equal bool, apply func()) {
		switch {
		case !set[field]:
			apply()
		case !equal:
			errs = append(errs, fmt.Errorf("%q is %v in the network configuration but %v in %s", field, nad, node, c.NodeFile()))
		}
	}
	if n.PFNames != nil {
		merge("pfNames", c.PFNames, n.PFNames, slices.Equal(c.PFNames, n.PFNames), func() { c.PFNames = n.PFNames })
	}
	if n.ReservedInterfaces != nil {
		merge("reservedInterfaces", c.ReservedInterfaces, n.ReservedInterfaces, sameSet(c.ReservedInterfaces, n.ReservedInterfaces),
			func() { c.ReservedInterfaces = n.ReservedInterfaces })
	}
	if n.ReservedInterfacesFile != nil {
		equal := c.ReservedInterfacesFile != nil && *c.ReservedInterfacesFile == *n.ReservedInterfacesFile
		merge("reservedInterfacesFile", deref(c.ReservedInterfacesFile), *n.ReservedInterfacesFile, equal,
			func() { c.ReservedInterfacesFile = n.ReservedInterfacesFile })
	}
	for field, f := range map[string][2]*string{"stateDir": {&c.StateDir, &n.StateDir}, "sysfsRoot": {&c.SysfsRoot, &n.SysfsRoot}} {
		nad, node := f[0], f[1]
		if *node != "" {
			merge(field, *nad, *node, filepath.Clean(*nad) == filepath.Clean(*node), func() { *nad = *node })
		}
	}
	c.RequireDeviceID = n.RequireDeviceID
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "the network configuration disagrees with the node configuration",
			err.Error()+": remove the field from the NetworkAttachmentDefinition or make both agree")
	}
	return nil
}

func sameSet(a, b []string) bool {
	trim := func(s []string) []string {
		out := make([]string, 0, len(s))
		for _, x := range s {
			out = append(out, strings.TrimSpace(x))
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	return slices.Equal(trim(a), trim(b))
}

func deref(p *string) string {
	if p == nil {
		return "(default)"
	}
	return *p
}
