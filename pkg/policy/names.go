package policy

import (
	"fmt"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
)

// PodNames gives each VF the netdev name it will have in the pod: its host
// name, unless the pod already has a link by that name (or the PF takes
// it as ifName), then <ifName>v<index>. Keeping the host name spares the
// VF a rename, and so a trip through transit. podHas lists the pod's
// links; VFs without a netdev are skipped. The result is keyed by VF index.
func PodNames(ifName string, vfs []sriov.VF, podHas map[string]bool) (map[int]string, error) {
	taken := map[string]bool{ifName: true}
	for name := range podHas {
		taken[name] = true
	}
	names := map[int]string{}
	for _, vf := range vfs {
		if vf.Name == "" {
			continue
		}
		name := vf.Name
		if taken[name] {
			name = fmt.Sprintf("%sv%d", ifName, vf.Index)
			if config.ValidateIfName(name) != nil || taken[name] {
				return nil, fmt.Errorf("no free name in the pod for VF %d (%s): %q is taken there", vf.Index, vf.Name, vf.Name)
			}
		}
		taken[name] = true
		names[vf.Index] = name
	}
	return names, nil
}
