package plugin

import (
	"log/slog"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// Reconcile is repair for a long-running caller, the node agent: under the
// node-wide lock it finishes every release whose devices have come back,
// rolls back what dead processes left, and releases attachments whose
// netns is gone (only those judgeNetns can see; nil judges all), through
// the same release path as DEL. The IPAM addresses of an attachment it
// releases are left to the runtime, whose DEL (or GC) for the gone pod
// still comes and runs IPAM where it lives. It returns the records that still hold
// devices. It must run in the host netns.
func (p *Plugin) Reconcile(conf *config.NetConf, log *slog.Logger, judgeNetns func(path string) error) ([]*state.Record, error) {
	host, err := netdev.Current()
	if err != nil {
		return nil, err
	}
	defer host.Close()
	o := p.newOp(conf, log, host)
	o.judgeNetns, o.ipamToRuntime = judgeNetns, true
	unlock, err := o.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return o.repair(), nil
}
