// Package config loads and validates the plugin's network configuration, the
// runtime's CNI_ARGS and the node's reserved-interfaces file.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
)

// Defaults for every optional field.
const (
	DefaultReservedInterfacesFile = "/etc/pfscni-system-reserved-interfaces"
	DefaultStateDir               = "/var/lib/cni/sriov-passthrough"
	DefaultSysfsRoot              = "/sys"
	DefaultLogLevel               = "info"
)

// NetConf is the plugin's configuration: the NetworkAttachmentDefinition's
// spec.config, or a conf file given to cnitool.
type NetConf struct {
	types.PluginConf

	// PCIBusID pins one PF by PCI address (e.g. "0000:3b:00.0").
	PCIBusID string `json:"pciBusID,omitempty"`
	// PFNames restricts the pool to PFs with these host names or altnames.
	PFNames []string `json:"pfNames,omitempty"`
	// ReservedInterfaces are PF (or VF) names or altnames that are never
	// handed out.
	ReservedInterfaces []string `json:"reservedInterfaces,omitempty"`
	// LogLevel is the verbosity of the plugin's log ("debug", "info",
	// "warn", "error"). The node configuration gives the default; a
	// network configuration may choose another, since it changes nothing
	// but how much the plugin says.
	LogLevel string `json:"logLevel,omitempty"`

	// The node-only settings: they come from the node configuration file
	// (see Node), never from the network configuration, which any
	// namespace that can create a NetworkAttachmentDefinition writes.
	// Parse refuses them there (NodeOnlyFields).

	// ReservedInterfacesFile lists more reserved names, one per line. nil
	// means the default path; an explicit "" means no file.
	ReservedInterfacesFile *string `json:"-"`
	StateDir               string  `json:"-"`
	SysfsRoot              string  `json:"-"`
	LogFile                string  `json:"-"`
	// NodeConfigFile is the node configuration file Parse read (or would
	// have read: a missing file is no node configuration), for messages.
	NodeConfigFile string `json:"-"`
	// NodeUnknown lists the fields of the node configuration file that
	// this release does not know and ignored (Node.Unknown), for the
	// caller to log once it has a log.
	NodeUnknown []string `json:"-"`
	// DeviceID is where multus puts the PCI address the kubelet allocated
	// when the plugin does not declare the deviceID capability.
	DeviceID string `json:"deviceID,omitempty"`
	// RequireDeviceID comes from the node configuration only.
	RequireDeviceID bool `json:"-"`
	// Baseline is the node's declared SR-IOV baseline (node.json's
	// sriovBaseline), nil for none.
	Baseline *SRIOVBaseline `json:"-"`
	// Allocation is node.json's allocation ("" when it sets none;
	// NodeConf fills in AllocationDevicePlugin).
	Allocation string `json:"-"`
	// AllocationByNode is node.json's allocationByNode (AllocationOf).
	AllocationByNode map[string]string `json:"-"`

	RuntimeConfig RuntimeConfig `json:"runtimeConfig,omitempty"`

	// HasAttachmentList says the runtime sent a GC valid-attachments list
	// (possibly empty). Without one, GC must not treat every attachment
	// as stale.
	HasAttachmentList bool `json:"-"`
}

// RuntimeConfig holds the capability arguments the runtime (multus) passes.
type RuntimeConfig struct {
	// DeviceID is the PCI address a device plugin allocated to the pod.
	DeviceID string `json:"deviceID,omitempty"`
	// CNIDeviceInfoFile is where the runtime wants the device-info file
	// (the CNIDeviceInfoFile capability of the device-info spec).
	CNIDeviceInfoFile string `json:"CNIDeviceInfoFile,omitempty"`
}

// ReservedFile returns the reserved-interfaces file to read, "" for none.
func (c *NetConf) ReservedFile() string {
	if c.ReservedInterfacesFile == nil {
		return DefaultReservedInterfacesFile
	}
	return *c.ReservedInterfacesFile
}

// PinnedPCI returns the PCI address the attachment must use, "" if any
// free PF will do. The device plugin's deviceID wins over pciBusID only when
// they agree; Parse rejects a conflict.
func (c *NetConf) PinnedPCI() string {
	if id := c.AllocatedPCI(); id != "" {
		return id
	}
	return c.PCIBusID
}

// AllocatedPCI is the PCI address a device plugin allocated to the pod, as
// multus passes it (runtimeConfig.deviceID or a top-level deviceID); ""
// when there is none.
func (c *NetConf) AllocatedPCI() string {
	if c.RuntimeConfig.DeviceID != "" {
		return c.RuntimeConfig.DeviceID
	}
	return c.DeviceID
}

// Parse decodes and validates a network configuration, filling in the node
// configuration read from nodeFile ("" for none; the plugin passes
// NodeConfigPath) and defaults. Unknown fields are ignored: runtimes add
// their own. The node-only fields (NodeOnlyFields) are refused. The
// returned error is a *types.Error with a code from the CNI spec.
func Parse(data []byte, nodeFile string) (*NetConf, error) {
	conf, _, err := parse(data, nodeFile, false)
	return conf, err
}

// ParseRelease is Parse for the commands that give devices back (DEL and
// GC): a node-only field in the network configuration is ignored, not
// refused, and named in ignored; the node's values are used. Multus runs
// DEL with the delegate configuration it cached at ADD, so a NAD written
// for a release that still took those fields would otherwise fail every
// DEL of a pod attached before the upgrade, and its PF would stay in the
// pod. (Where such a NAD named a stateDir of its own, the record is not
// in the node's and DEL finds nothing to release; the refusal at ADD is
// what keeps new attachments out of that state.)
func ParseRelease(data []byte, nodeFile string) (conf *NetConf, ignored []string, err error) {
	return parse(data, nodeFile, true)
}

func parse(data []byte, nodeFile string, release bool) (*NetConf, []string, error) {
	conf := &NetConf{NodeConfigFile: nodeFile}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, nil, decodeError(err)
	}
	set, err := conf.readAttachmentList(data)
	if err != nil {
		return nil, nil, decodeError(err)
	}
	ignored := nodeOnlyIn(set)
	if !release {
		if err := refuseNodeOnly(ignored, nodeFile); err != nil {
			return nil, nil, err
		}
	}
	if err := conf.applyNode(set); err != nil {
		return nil, nil, err
	}
	conf.setDefaults()
	if err := conf.validateNode(); err != nil {
		return nil, nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid node configuration", fmt.Sprintf("%s: %v", nodeFile, err))
	}
	if err := conf.validate(); err != nil {
		return nil, nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration", err.Error())
	}
	return conf, ignored, nil
}

// readAttachmentList notes whether a GC list was sent, and accepts the
// spelling "cni.dev/attachments" that libcni also sends (an early version of
// the spec used it). It returns the top-level keys the configuration sets.
func (c *NetConf) readAttachmentList(data []byte) (map[string]bool, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, err
	}
	set := make(map[string]bool, len(keys))
	for k := range keys {
		set[k] = true
	}
	if _, ok := keys["cni.dev/valid-attachments"]; ok {
		c.HasAttachmentList = true
		return set, nil
	}
	if raw, ok := keys["cni.dev/attachments"]; ok {
		c.HasAttachmentList = true
		return set, json.Unmarshal(raw, &c.ValidAttachments)
	}
	return set, nil
}

func decodeError(err error) error {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		field := typeErr.Field
		if field == "" {
			field = "(top level)"
		}
		return types.NewError(types.ErrDecodingFailure, "invalid network configuration",
			fmt.Sprintf("field %q: expected %s, got JSON %s", field, typeErr.Type, typeErr.Value))
	}
	return types.NewError(types.ErrDecodingFailure, "network configuration is not valid JSON", err.Error())
}

func (c *NetConf) setDefaults() {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.SysfsRoot == "" {
		c.SysfsRoot = DefaultSysfsRoot
	}
	if c.LogLevel == "" {
		c.LogLevel = DefaultLogLevel
	}
	c.PCIBusID = NormalizePCI(c.PCIBusID)
	c.RuntimeConfig.DeviceID = NormalizePCI(c.RuntimeConfig.DeviceID)
	c.DeviceID = NormalizePCI(c.DeviceID)
}

// validate checks what the network configuration may set; validateNode
// what only the node configuration sets.
func (c *NetConf) validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New(`field "name" is required`))
	}
	if c.PCIBusID != "" && !IsPCIAddress(c.PCIBusID) {
		errs = append(errs, fmt.Errorf(`field "pciBusID": %q is not a PCI address like 0000:3b:00.0`, c.PCIBusID))
	}
	if id := c.RuntimeConfig.DeviceID; id != "" && !IsPCIAddress(id) {
		errs = append(errs, fmt.Errorf(`field "runtimeConfig.deviceID": %q is not a PCI address like 0000:3b:00.0`, id))
	}
	if id := c.DeviceID; id != "" && !IsPCIAddress(id) {
		errs = append(errs, fmt.Errorf(`field "deviceID": %q is not a PCI address like 0000:3b:00.0`, id))
	}
	if a, b := c.RuntimeConfig.DeviceID, c.DeviceID; a != "" && b != "" && a != b {
		errs = append(errs, fmt.Errorf(`fields "runtimeConfig.deviceID" (%s) and "deviceID" (%s) name different PFs`, a, b))
	}
	if id := c.AllocatedPCI(); c.PCIBusID != "" && id != "" && c.PCIBusID != id {
		errs = append(errs, fmt.Errorf(`field "pciBusID" (%s) and the device plugin's deviceID (%s) name different PFs`,
			c.PCIBusID, id))
	}
	for i, name := range c.PFNames {
		if err := ValidateLinkName(name); err != nil {
			errs = append(errs, fmt.Errorf(`field "pfNames[%d]": %w`, i, err))
		}
	}
	for i, name := range c.ReservedInterfaces {
		if strings.TrimSpace(name) == "" {
			errs = append(errs, fmt.Errorf(`field "reservedInterfaces[%d]" is empty`, i))
		}
	}
	if f := c.RuntimeConfig.CNIDeviceInfoFile; f != "" && !filepath.IsAbs(f) {
		errs = append(errs, fmt.Errorf(`field "runtimeConfig.CNIDeviceInfoFile": %q is not an absolute path`, f))
	}
	if _, err := ParseLogLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *NetConf) validateNode() error {
	var errs []error
	for _, f := range []struct{ field, path string }{
		{"stateDir", c.StateDir}, {"sysfsRoot", c.SysfsRoot}, {"reservedInterfacesFile", c.ReservedFile()}, {"logFile", c.LogFile},
	} {
		if f.path != "" && !filepath.IsAbs(f.path) {
			errs = append(errs, fmt.Errorf("field %q: %q is not an absolute path", f.field, f.path))
		}
	}
	errs = append(errs, c.Baseline.validate())
	return errors.Join(errs...)
}

var pciRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)

// IsPCIAddress reports whether s is a full PCI address (domain:bus:dev.fn).
func IsPCIAddress(s string) bool { return pciRE.MatchString(s) }

// NormalizePCI lower-cases an address and adds the 0000 domain when the
// short bus:dev.fn form is given, as lspci prints it.
func NormalizePCI(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	if strings.Count(s, ":") == 1 {
		s = "0000:" + s
	}
	return s
}

// ValidateIfName is the plugin's one rule for an interface name, used for
// CNI_IFNAME, pfNames and the names in state records: the runtime's own
// rule (utils.ValidateInterfaceName, which skel applies to CNI_IFNAME and
// which is the kernel's dev_valid_name: 1 to 15 bytes, not "." or "..", no
// '/', ':' or white space), plus valid UTF-8. The kernel takes any bytes,
// but JSON cannot carry them: a record or a result would hold U+FFFD
// instead of the name, and the device could never be matched again. The
// error is a *types.Error with code 4 (invalid environment variables).
func ValidateIfName(name string) error {
	if !utf8.ValidString(name) {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "interface name is not valid UTF-8", fmt.Sprintf("%q", name))
	}
	if err := utils.ValidateInterfaceName(name); err != nil {
		if err.Details == "" {
			err.Details = fmt.Sprintf("%q", name)
		} else {
			err.Details = fmt.Sprintf("%q: %s", name, err.Details)
		}
		return err
	}
	return nil
}

// MaxAltNameLen is the longest altname the kernel takes (ALTIFNAMSIZ 128,
// with the terminating NUL).
const MaxAltNameLen = 127

// ValidateLinkName accepts what can name a host link: an interface name
// (ValidateIfName) or an altname, which may be up to 127 bytes long
// (systemd gives PFs long predictable names this way). A name longer than
// 15 bytes gets the same character rule as ValidateIfName (the runtime's:
// no '/', ':' or white space; valid UTF-8); "", "." and ".." are short.
func ValidateLinkName(name string) error {
	if len(name) <= 15 {
		return ValidateIfName(name)
	}
	if len(name) > MaxAltNameLen {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "interface name is too long",
			fmt.Sprintf("%q: an altname has at most %d bytes", name, MaxAltNameLen))
	}
	if !utf8.ValidString(name) {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "interface name is not valid UTF-8", fmt.Sprintf("%q", name))
	}
	if strings.ContainsFunc(name, func(r rune) bool { return r == '/' || r == ':' || unicode.IsSpace(r) }) {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "interface name contains / or : or whitespace characters", fmt.Sprintf("%q", name))
	}
	return nil
}
