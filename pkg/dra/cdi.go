package dra

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/agent"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// CDIKind is the kind of the CDI devices the driver defines: the kubelet
// passes "<kind>=<name>" to the runtime, which applies the device's edits
// from the spec file in Dir.
const CDIKind = DriverName + "/pf"

// cdiVersion is the spec version the files declare: environment edits
// alone need no more, and every runtime with CDI reads it.
const cdiVersion = "0.5.0"

// CDI writes the CDI spec file of each prepared claim, so that the
// container gets PCIDEVICE_PROW_SRIOV as the device plugin's Allocate gives
// it. One file per claim, named by its UID, never reused: a runtime may
// cache specs.
type CDI struct {
	// Dir is where the runtime reads CDI specs (/var/run/cdi).
	Dir string
}

// cdiSpec is the part of the CDI spec format the driver writes.
type cdiSpec struct {
	Version string      `json:"cdiVersion"`
	Kind    string      `json:"kind"`
	Devices []cdiDevice `json:"devices"`
}

type cdiDevice struct {
	Name  string   `json:"name"`
	Edits cdiEdits `json:"containerEdits"`
}

type cdiEdits struct {
	Env []string `json:"env"`
}

// devicesFor is the PrepareResult of a claim and the CDI spec behind it.
// Each request gets one CDI device that sets the variable to its PFs' PCI
// addresses, comma-separated, as Allocate does per container; it is
// attached to the request's first PF only, so a container sees the
// variable once.
func (c CDI) devicesFor(uid string, byRequest map[string][]string, resource, pool string) (kubeletplugin.PrepareResult, cdiSpec) {
	spec := cdiSpec{Version: cdiVersion, Kind: CDIKind}
	var res kubeletplugin.PrepareResult
	for _, req := range slices.Sorted(maps.Keys(byRequest)) {
		pfs := slices.Sorted(slices.Values(byRequest[req]))
		name := uid + "-" + req
		spec.Devices = append(spec.Devices, cdiDevice{Name: name,
			Edits: cdiEdits{Env: []string{agent.EnvName(resource) + "=" + strings.Join(pfs, ",")}}})
		for i, pci := range pfs {
			d := kubeletplugin.Device{Requests: []string{req}, PoolName: pool, DeviceName: DeviceName(pci)}
			if i == 0 {
				d.CDIDeviceIDs = []string{CDIKind + "=" + name}
			}
			res.Devices = append(res.Devices, d)
		}
	}
	return res, spec
}

func (c CDI) file(uid string) string {
	return filepath.Join(c.Dir, DriverName+"_"+uid+".json")
}

// write puts the claim's spec in place atomically: a runtime reading the
// directory sees the whole file or none.
func (c CDI) write(uid string, spec cdiSpec) error {
	data, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return fmt.Errorf("encode CDI spec of claim %s: %w", uid, err)
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return fmt.Errorf("CDI spec dir: %w", err)
	}
	if err := state.WriteAtomic(c.Dir, filepath.Base(c.file(uid)), data); err != nil {
		return fmt.Errorf("CDI spec of claim %s: %w", uid, err)
	}
	return nil
}

func (c CDI) remove(uid string) error {
	if err := os.Remove(c.file(uid)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove CDI spec of claim %s: %w", uid, err)
	}
	return nil
}
