// Package release gives an attachment's devices back to the host: the one
// release path that DEL, GC, ADD's rollback and repair share, with the
// PF's SR-IOV state, and the repair of whatever a killed process, a
// vanished pod or a tampered record left behind. The CNI commands
// (pkg/plugin) and the node agent (pkg/agent) call it with plain values
// and get Go errors back; turning them into CNI errors is pkg/plugin's.
package release

import (
	"log/slog"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// Engine releases the attachments recorded in Store on the node Sys
// describes. One Engine serves one invocation (a CNI command, one
// reconcile of the agent): it keeps what a release learns on the way.
type Engine struct {
	Store state.Store
	Sys   sriov.Sysfs
	// Host is the host netns, where devices come home; the caller opens
	// and closes it.
	Host *netdev.NS
	Log  *slog.Logger
	// LockTimeout bounds the wait for the node-wide state lock.
	LockTimeout time.Duration
	// ProcRoot is where procfs is mounted ("" is /proc): the release looks
	// there for processes holding a VF through vfio.
	ProcRoot string
	// DevRoot is where devtmpfs is mounted ("" is /dev): the restore holds
	// the VFs' vfio groups open there while it writes.
	DevRoot string
	// JudgeNetns, when set, says whether this process can tell that a
	// netns path is gone (see netnsGone); nil for the plugin, which runs in
	// the host's namespaces.
	JudgeNetns func(path string) error
	// ReleaseIPAM releases the IPAM addresses of an attachment released
	// for a runtime that will not DEL it (repair, GC), with the
	// configuration its ADD used. nil leaves them to the runtime, whose
	// DEL (or GC) for the gone pod still comes and runs IPAM where it
	// lives: the agent's choice, whose container has neither the IPAM
	// plugins nor the host files they keep their leases in.
	ReleaseIPAM func(rec *state.Record) error
	// Baseline is the node's declared SR-IOV baseline (nil for none): a
	// PF released is brought to it once its record is gone.
	Baseline *config.SRIOVBaseline
	// NetdevWait bounds the wait for the netdevs a driver registers as it
	// probes (a PF bound again, VFs re-created or rebound); 0 is 10 s.
	NetdevWait time.Duration
	// Mark, when set, ends a named step of the caller's timing (the
	// plugin's debug log of where a command's time went).
	Mark func(step string)

	// lockedMACs holds the VFs (by PCI address) whose PF driver refused to
	// lift a MAC set through the PF: their netdev's MAC cannot be set, and
	// a refusal there is no reason to fail the release.
	lockedMACs map[string]bool
}

func (e *Engine) mark(step string) {
	if e.Mark != nil {
		e.Mark(step)
	}
}

func (e *Engine) macLocked() map[string]bool {
	if e.lockedMACs == nil {
		e.lockedMACs = map[string]bool{}
	}
	return e.lockedMACs
}

// Lock takes the node-wide lock, waiting up to LockTimeout. The error of a
// lock that stayed busy wraps state.ErrLockTimeout.
func (e *Engine) Lock() (unlock func(), err error) {
	return e.Store.Lock(e.LockTimeout)
}

// Reconcile is Repair for a long-running caller, the node agent: under the
// node-wide lock it finishes every release whose devices have come back,
// rolls back what dead processes left, and releases attachments whose
// netns is gone (only those JudgeNetns can see; nil judges all), through
// the same release path as DEL. It returns the records that still hold
// devices, or the error of Lock.
func (e *Engine) Reconcile() ([]*state.Record, error) {
	unlock, err := e.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return e.Repair(), nil
}
