package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// DefaultNodeConfigFile is the node-local configuration that the plugin and
// the node agent both read. The DaemonSet's agent installs it from its
// ConfigMap, which kustomize generates from deploy/node.json.
const DefaultNodeConfigFile = "/etc/sriov-passthrough-cni/node.json"

// NodeConfigEnv names the environment variable that points the plugin at
// another node configuration file: for tests, cnitool users and nodes that
// keep it elsewhere. Only the node can set it: the runtime (libcni, multus)
// execs a plugin with the runtime's own environment plus the CNI_
// variables, and nothing a NetworkAttachmentDefinition says reaches it.
const NodeConfigEnv = "SRIOVPT_NODE_CONFIG"

// NodeConfigPath is the node configuration file of this process: the
// environment's NodeConfigEnv if set, else DefaultNodeConfigFile.
func NodeConfigPath() string {
	if p := os.Getenv(NodeConfigEnv); p != "" {
		return p
	}
	return DefaultNodeConfigFile
}

// NodeOnlyFields are the settings only the node configuration gives; Parse
// refuses them in a network configuration, which any namespace that can
// create a NetworkAttachmentDefinition writes. There, stateDir would make a
// second lock domain the agent cannot see (one ADD could take a PF whose
// restore is blocked in the other), nodeConfigFile "" would drop
// requireDeviceID, the PF pool and the reservations, sysfsRoot would choose
// what the plugin believes about PFs, logFile would append to any file as
// root, reservedInterfacesFile would un-reserve the node's uplinks, and
// sriovBaseline would rewrite every free PF's VFs.
var NodeOnlyFields = []string{"stateDir", "nodeConfigFile", "sysfsRoot", "logFile", "reservedInterfacesFile", "sriovBaseline"}

// Node is the node-local configuration: what only the node may say about
// its PFs, its state and its logs, said once for the plugin and for the
// agent (which has no API token and cannot read NADs). A NAD may repeat
// pfNames and reservedInterfaces only with the same value.
//
// A field added here is one the previous release does not know. This
// release reads a field it does not know as a warning, not an error
// (LoadNodeBytes), so a rollback after an admin set a new field still
// reads node.json. Releases before it read node.json strictly: the one
// before logFile and logLevel existed refuses a node.json that sets
// either, and deploy's node.json therefore leaves them out.
type Node struct {
	PFNames                []string `json:"pfNames,omitempty"`
	ReservedInterfaces     []string `json:"reservedInterfaces,omitempty"`
	ReservedInterfacesFile *string  `json:"reservedInterfacesFile,omitempty"`
	StateDir               string   `json:"stateDir,omitempty"`
	SysfsRoot              string   `json:"sysfsRoot,omitempty"`
	// LogFile is where the plugin appends its log; "" is stderr, which
	// the runtime shows only on failure.
	LogFile string `json:"logFile,omitempty"`
	// LogLevel is the plugin's default verbosity; a network configuration
	// may choose its own.
	LogLevel string `json:"logLevel,omitempty"`
	// RequireDeviceID makes ADD refuse an attachment that carries no
	// deviceID from the kubelet's allocation. Multus passes nothing when a
	// pod did not request the resource, and the plugin would then pick a PF
	// the kubelet may have counted as free: on a node that runs the agent,
	// fail closed instead.
	RequireDeviceID bool `json:"requireDeviceID,omitempty"`
	// SRIOVBaseline is the SR-IOV state free PFs are kept at; nil when
	// the node declares none.
	SRIOVBaseline *SRIOVBaseline `json:"sriovBaseline,omitempty"`
	// Allocation is how the agent offers the node's PFs to the kubelet:
	// AllocationDevicePlugin (the default) or AllocationDRA. Never both:
	// the scheduler would count every PF twice.
	Allocation string `json:"allocation,omitempty"`
	// AllocationByNode sets Allocation for the nodes it names (the
	// node's name, as the kubelet registered it): one node.json, which
	// the DaemonSet gives every node, switches nodes one at a time.
	AllocationByNode map[string]string `json:"allocationByNode,omitempty"`

	// Unknown lists the file's top-level fields that this release does
	// not know, as spelt there, sorted; they are ignored.
	Unknown []string `json:"-"`
}

// LoadNode reads the node configuration; a missing file (or path "") is no
// node configuration, nil. See LoadNodeBytes for what it refuses.
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

// LoadNodeBytes decodes a node configuration. A known field of the wrong
// type is an error that names the field (Parse and NodeConf validate the
// values). A field this release does not know is not an error but listed
// in Node.Unknown, for the caller to log: node.json may have been written
// for a later release, and after a rollback refusing it would refuse every
// ADD, DEL and GC on the node. The price is that a misspelt field (say
// "pfname", which would have narrowed the pool) only shows in the log.
func LoadNodeBytes(data []byte) (*Node, error) {
	n := &Node{}
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(n); err != nil {
		return nil, nodeDecodeError(err)
	}
	// The decode above succeeded, so the value is an object (or null).
	var keys map[string]json.RawMessage
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(&keys); err != nil {
		return nil, nodeDecodeError(err)
	}
	known := nodeFields()
	for key := range keys {
		// encoding/json matches keys case-insensitively: "PFNames"
		// sets pfNames, so it is known.
		if !slices.ContainsFunc(known, func(f string) bool { return strings.EqualFold(f, key) }) {
			n.Unknown = append(n.Unknown, key)
		}
	}
	slices.Sort(n.Unknown)
	return n, nil
}

// WarnNodeUnknown logs the node configuration's fields that this release
// does not know and ignored (NodeUnknown), if there are any.
func (c *NetConf) WarnNodeUnknown(log *slog.Logger) {
	if len(c.NodeUnknown) == 0 {
		return
	}
	log.Warn("node configuration fields this release does not know are ignored (written for a later release, or misspelt?)",
		"fields", c.NodeUnknown, "nodeConfig", c.NodeConfigFile)
}

// nodeFields are the JSON names of Node's fields.
func nodeFields() []string {
	var names []string
	t := reflect.TypeFor[Node]()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			names = append(names, name)
		}
	}
	return names
}

// nodeDecodeError names the field a wrong type was found in.
func nodeDecodeError(err error) error {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		if typeErr.Field == "" {
			return fmt.Errorf("want a JSON object, got JSON %s", typeErr.Value)
		}
		return fmt.Errorf("field %q: want %s, got JSON %s", typeErr.Field, typeErr.Type, typeErr.Value)
	}
	return fmt.Errorf("not valid JSON: %w", err)
}

// NodeConf is the configuration a node-wide component (the agent) works
// with: the node file's fields over the defaults, validated as a network
// configuration would be.
func NodeConf(path string) (*NetConf, error) {
	c := &NetConf{NodeConfigFile: path}
	c.Name = "node"
	if err := c.applyNode(nil); err != nil {
		return nil, err
	}
	c.setDefaults()
	if c.Allocation == "" {
		c.Allocation = AllocationDevicePlugin
	}
	errs := []error{c.validateNode(), c.validate(), validAllocation(`field "allocation"`, c.Allocation)}
	for _, node := range slices.Sorted(maps.Keys(c.AllocationByNode)) {
		errs = append(errs, validAllocation(fmt.Sprintf(`field "allocationByNode", node %q`, node), c.AllocationByNode[node]))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("node configuration %s: %w", path, err)
	}
	return c, nil
}

// The values of the node configuration's allocation field.
const (
	// AllocationDevicePlugin: the agent is a kubelet device plugin of
	// prow/sriov (the default).
	AllocationDevicePlugin = "devicePlugin"
	// AllocationDRA: the agent is a DRA kubelet plugin publishing the PFs
	// in a ResourceSlice; a DeviceClass maps prow/sriov to it.
	AllocationDRA = "dra"
)

// validAllocation checks an allocation value; where names it. Only
// the agent checks them (NodeConf): the plugin does not act on them, and
// refusing every ADD and DEL on the node for a misspelt value would strand
// the PFs jobs hold.
func validAllocation(where, a string) error {
	if a != AllocationDevicePlugin && a != AllocationDRA {
		return fmt.Errorf("%s: %q is not %q or %q", where, a, AllocationDevicePlugin, AllocationDRA)
	}
	return nil
}

// AllocationOf is how the agent on the node named offers its PFs:
// allocationByNode's value for it, else allocation.
func (c *NetConf) AllocationOf(node string) string {
	if a, ok := c.AllocationByNode[node]; ok && node != "" {
		return a
	}
	return c.Allocation
}

// nodeOnlyIn lists the node-only fields among a configuration's top-level
// keys, as spelt there, sorted. encoding/json matches keys
// case-insensitively, so "StateDir" counts as well: an older release
// applied it.
func nodeOnlyIn(set map[string]bool) []string {
	var found []string
	for key := range set {
		for _, f := range NodeOnlyFields {
			if strings.EqualFold(key, f) {
				found = append(found, key)
			}
		}
	}
	slices.Sort(found)
	return found
}

// refuseNodeOnly refuses a network configuration that sets node-only
// fields, before anything reads the node file.
func refuseNodeOnly(fields []string, nodeFile string) error {
	if len(fields) == 0 {
		return nil
	}
	var found []string
	for _, f := range fields {
		found = append(found, strconv.Quote(f))
	}
	if nodeFile == "" {
		nodeFile = DefaultNodeConfigFile
	}
	return types.NewError(types.ErrInvalidNetworkConfig,
		fmt.Sprintf("field %s is node-only: not allowed in the network configuration", strings.Join(found, ", ")),
		fmt.Sprintf("remove it from the NetworkAttachmentDefinition (or conf file); stateDir, sysfsRoot, logFile, "+
			"reservedInterfacesFile and sriovBaseline belong in the node configuration file %s (installed from the ConfigMap "+
			"made from deploy/node.json), and the node chooses that file itself (%s in the plugin's environment, default %s)",
			nodeFile, NodeConfigEnv, DefaultNodeConfigFile))
}

// applyNode fills the configuration from the node configuration file: the
// node-only fields, and the fields the network configuration left out
// (set holds its top-level keys). It refuses a field both set differently:
// the NAD and the node would otherwise disagree about which PFs exist, and
// the agent would advertise PFs the plugin refuses (or the other way
// round).
func (c *NetConf) applyNode(set map[string]bool) error {
	path := c.NodeConfigFile
	if path != "" && !filepath.IsAbs(path) {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid node configuration",
			fmt.Sprintf("node configuration file %q (%s) is not an absolute path", path, NodeConfigEnv))
	}
	n, err := LoadNode(path)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid node configuration", err.Error())
	}
	if n == nil {
		return nil
	}
	c.NodeUnknown = n.Unknown
	c.ReservedInterfacesFile, c.StateDir, c.SysfsRoot, c.LogFile = n.ReservedInterfacesFile, n.StateDir, n.SysfsRoot, n.LogFile
	c.RequireDeviceID = n.RequireDeviceID
	c.Baseline = n.SRIOVBaseline
	c.Allocation, c.AllocationByNode = n.Allocation, n.AllocationByNode
	if n.LogLevel != "" {
		// Checked here, where the file is known: the same check on the
		// merged config would blame the network configuration.
		if _, err := ParseLogLevel(n.LogLevel); err != nil {
			return types.NewError(types.ErrInvalidNetworkConfig, "invalid node configuration", fmt.Sprintf("%s: %v", path, err))
		}
		if !set["logLevel"] {
			c.LogLevel = n.LogLevel
		}
	}
	var errs []error
	merge := func(field string, nad, node any, equal bool, apply func()) {
		switch {
		case !set[field]:
			apply()
		case !equal:
			errs = append(errs, fmt.Errorf("%q is %v in the network configuration but %v in %s", field, nad, node, path))
		}
	}
	if n.PFNames != nil {
		merge("pfNames", c.PFNames, n.PFNames, slices.Equal(c.PFNames, n.PFNames), func() { c.PFNames = n.PFNames })
	}
	if n.ReservedInterfaces != nil {
		merge("reservedInterfaces", c.ReservedInterfaces, n.ReservedInterfaces, sameSet(c.ReservedInterfaces, n.ReservedInterfaces),
			func() { c.ReservedInterfaces = n.ReservedInterfaces })
	}
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
