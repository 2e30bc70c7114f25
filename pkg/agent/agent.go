package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/plugin"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/policy"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/release"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// Agent watches the node and keeps the device list true.
type Agent struct {
	// Conf is the node configuration (config.NodeConf).
	Conf *config.NetConf
	// HostRoot prefixes the reserved-interfaces file's path: the agent
	// reads it through a mount of the host's directory ("" on the host).
	HostRoot string
	// HostNetns is the host netns path; "" is the process's own netns
	// (hostNetwork), a path is for tests.
	HostNetns string
	// NetnsDir, when set, is watched for pods' netns going away.
	NetnsDir string
	// Kernel, set only by tests, stands in for the kernel behind sysfs
	// writes (sriov.Sysfs.Kernel); nil writes sysfs.
	Kernel func(path, value string) error
	// JudgeNetns says whether a record's netns can be judged gone (nil:
	// always, for tests on the host).
	JudgeNetns func(path string) error
	// Resync is the backstop period for a full look; events drive the rest.
	Resync  time.Duration
	Log     *slog.Logger
	Publish func([]PF)
	Metrics *Metrics

	// known maps the PCI address of every PF advertised so far to its name.
	known map[string]string
	last  map[string]PF
	// seen maps the PCI address of every PF seen on the host to its link
	// there, for judging it by its names while a pod holds it.
	seen map[string]policy.Link
	// unjudged holds the records whose netns this process cannot judge,
	// already logged.
	unjudged map[string]bool
	// repairLog is the log the release engine's repair writes to, quiet about
	// repeats.
	repairLog *slog.Logger

	// watchers are the goroutines that turn events into signals; Run
	// returns only once they have stopped.
	watchers sync.WaitGroup

	// tried holds, per record, when repair ran for it within the last
	// repairWindow; backingOff the records whose back-off was logged.
	tried      map[string][]time.Time
	backingOff map[string]bool
	// repairs counts the repairs the agent ran, pfReads its reads of the
	// node's PFs from sysfs (tests count them).
	repairs atomic.Int64
	pfReads atomic.Int64
	// turned is when the loop last turned (Unix nanoseconds).
	turned atomic.Int64

	mu      sync.Mutex
	wake    chan struct{}
	pending bool // a look with repair is owed
	// pfs is the node's PFs as sysfs listed them at the last read, and
	// reread says a look must read them again (see nodePFs).
	pfs    []sriov.PF
	reread bool
	// baselineFailed holds, per PF, why bringing it to the baseline
	// failed and when: it is tried again after repairWindow.
	baselineFailed map[string]baselineFailure

	// awaiting holds the PCI addresses of the devices of every record
	// that repair would act on and that are not home yet: a host link
	// event for one of them asks for repair.
	awaiting map[string]bool
}

// Look gathers the node's PFs as they stand, without taking the lock or
// changing anything: the status view.
func (a *Agent) Look() ([]PF, error) {
	recs, err := state.Store{Dir: a.Conf.StateDir}.Peek()
	if err != nil {
		return nil, err
	}
	return a.judge(recs)
}

// sys is the node's sysfs.
func (a *Agent) sys() sriov.Sysfs { return sriov.Sysfs{Root: a.Conf.SysfsRoot, Kernel: a.Kernel} }

func (a *Agent) judge(recs []*state.Record) ([]PF, error) {
	sys := a.sys()
	pfs, err := a.nodePFs(sys)
	if err != nil {
		return nil, err
	}
	listed := map[string]bool{}
	for _, pf := range pfs {
		listed[pf.PCIAddress] = true
	}
	for _, r := range recs {
		if addr := r.PF().PCIAddress; !listed[addr] {
			if pf, err := sys.PF(addr); err == nil {
				pfs = append(pfs, pf)
				listed[addr] = true
			}
		}
	}
	rules, err := a.rules()
	if err != nil {
		return nil, err
	}
	v := View{PFs: pfs, Rules: rules, Records: recs, Known: a.known, Gone: a.gone,
		Baseline: a.offBaseline, BaselineName: a.baselineName}
	err = a.inHost(func() error {
		host, err := netdev.Current(a.Conf.SysfsRoot)
		if err != nil {
			return err
		}
		defer host.Close()
		v.Host, err = plugin.PolicyHost(host)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("look at the host netns: %w", err)
	}
	a.see(pfs, v.Host)
	v.Seen = a.seen
	return Judge(v), nil
}

// nodePFs lists the node's PFs with their VFs from sysfs, those on the
// host under class/net and those no driver is bound to, or, when
// nothing since the last read can have changed them, as that read found
// them. On a node of 8 PFs x 256 VFs the read is most of a look's CPU
// (a readlink and a directory read per VF): about 80 ms, which a CPU limit
// turns into far more. What changes the list changes a host link with it:
// VFs created or removed (sriov_numvfs), a function bound to another
// driver, a netdev renamed, each is a link event in the host netns (see
// signal). Address and route events, the uplink signs, change nothing
// there (signalUplinkSign). What happens only in another netns (VF
// netdevs of a PF a pod holds) is read again at the next event or resync.
func (a *Agent) nodePFs(sys sriov.Sysfs) ([]sriov.PF, error) {
	a.mu.Lock()
	reuse := !a.reread && a.pfs != nil
	last := a.pfs
	// Cleared before the read: an event during it asks for another.
	a.reread = false
	a.mu.Unlock()
	if reuse {
		return slices.Clone(last), nil
	}
	a.pfReads.Add(1)
	pfs, err := sys.PFs()
	if err == nil {
		var driverless []sriov.PF
		driverless, err = sys.Driverless()
		pfs = append(pfs, driverless...)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.reread = true
		return nil, err
	}
	a.pfs = pfs
	return slices.Clone(pfs), nil
}

// see remembers the host link of every PF on the host now.
func (a *Agent) see(pfs []sriov.PF, host *policy.Host) {
	if a.seen == nil {
		a.seen = map[string]policy.Link{}
	}
	for _, pf := range pfs {
		if l, ok := host.Links[pf.Name]; ok && pf.Name != "" {
			a.seen[pf.PCIAddress] = l
		}
	}
}

func (a *Agent) reservedFile() string {
	if f := a.Conf.ReservedFile(); f != "" {
		return filepath.Join(a.HostRoot, f)
	}
	return ""
}

func (a *Agent) rules() (policy.Rules, error) {
	c := *a.Conf
	f := a.reservedFile()
	c.ReservedInterfacesFile = &f
	reserved, err := c.Reserved()
	if err != nil {
		return policy.Rules{}, err
	}
	return policy.Rules{PFNames: c.PFNames, Reserved: reserved}, nil
}

// gone reports whether an attached record's netns is gone and this
// process can tell.
func (a *Agent) gone(r *state.Record) bool {
	if netdev.Alive(r.Netns, r.NetnsID) {
		return false
	}
	if a.JudgeNetns == nil {
		return true
	}
	err := a.JudgeNetns(r.Netns)
	if err != nil && !a.unjudged[r.Key()] {
		// Once per record: the resync would repeat it every period.
		a.Log.Warn("cannot tell whether the attachment's netns is gone; leaving it alone", "record", r.Key(), "netns", r.Netns, "why", err)
		if a.unjudged == nil {
			a.unjudged = map[string]bool{}
		}
		a.unjudged[r.Key()] = true
	}
	return err == nil
}

func (a *Agent) inHost(f func() error) error {
	if a.HostNetns == "" {
		return f()
	}
	h, err := ns.GetNS(a.HostNetns)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return f() })
}

// needingRepair lists the records Reconcile would act on: a release not
// finished, an ADD that may have died, a pod that is gone.
func (a *Agent) needingRepair(recs []*state.Record) []*state.Record {
	var out []*state.Record
	for _, r := range recs {
		if r.Phase != state.Attached || a.gone(r) {
			out = append(out, r)
		}
	}
	return out
}

// await notes which devices the records that need repair wait for.
func (a *Agent) await(need []*state.Record) {
	awaiting := map[string]bool{}
	for _, r := range need {
		for _, d := range r.Devices {
			if !d.Released {
				awaiting[d.PCIAddress] = true
			}
		}
	}
	a.mu.Lock()
	a.awaiting = awaiting
	a.mu.Unlock()
}

// step takes one look, first finishing what repair would finish when
// asked to. It returns how soon to try repair again (the lock was busy,
// or every record that needs repair backs off), 0 for no retry.
func (a *Agent) step(repair bool) (retry time.Duration) {
	store := state.Store{Dir: a.Conf.StateDir}
	recs, err := store.Peek()
	if err != nil {
		a.Log.Error("read state records", "error", err)
		return 0
	}
	need := a.needingRepair(recs)
	if repair && len(need) > 0 {
		if retry = a.backOff(need, time.Now()); retry == 0 {
			a.repairs.Add(1)
			live, err := a.reconcile(recs)
			switch {
			case errors.Is(err, errLockBusy):
				// Not counted against the records: nothing was tried.
				retry = 100 * time.Millisecond
			case err != nil:
				a.triedNow(need)
				a.Log.Error("finish pending releases", "error", err)
			default:
				a.triedNow(need)
				recs = live
				need = a.needingRepair(recs)
			}
		}
	}
	a.await(need)
	pfs, err := a.judge(recs)
	if err != nil {
		a.Log.Error("look at the node; keeping the previous device list", "error", err)
		return retry
	}
	if changed, wait := a.adopt(pfs); changed || wait > 0 {
		if wait > 0 && (retry == 0 || wait < retry) {
			retry = wait
		}
		a.mu.Lock()
		a.reread = true // adopt wrote sysfs
		a.mu.Unlock()
		if recs, err = store.Peek(); err == nil {
			pfs, err = a.judge(recs)
		}
		if err != nil {
			a.Log.Error("look at the node; keeping the previous device list", "error", err)
			return retry
		}
	}
	a.remember(pfs)
	a.Publish(pfs)
	if a.Metrics != nil {
		a.Metrics.Set(pfs)
	}
	return retry
}

// backOff says how long until repair may run again for any of the records
// that need it, 0 if it may now. Each record gets at most repairsPerWindow
// repairs per repairWindow: a release that keeps failing moves or renames
// its devices, and each change asks for repair again. A record's back-off
// is logged once.
func (a *Agent) backOff(need []*state.Record, now time.Time) time.Duration {
	if a.tried == nil {
		a.tried, a.backingOff = map[string][]time.Time{}, map[string]bool{}
	}
	keys := map[string]bool{}
	wait := time.Duration(-1)
	for _, r := range need {
		k := r.Key()
		keys[k] = true
		recent := slices.DeleteFunc(a.tried[k], func(t time.Time) bool { return now.Sub(t) >= repairWindow })
		a.tried[k] = recent
		if len(recent) < repairsPerWindow {
			wait = 0
			continue
		}
		if !a.backingOff[k] {
			a.backingOff[k] = true
			a.Log.Warn("repair backs off for this attachment: its release keeps failing", "record", k,
				"repairs", len(recent), "within", repairWindow)
		}
		if w := max(recent[0].Add(repairWindow).Sub(now), time.Millisecond); wait < 0 || w < wait {
			wait = w
		}
	}
	for k := range a.tried {
		if !keys[k] {
			delete(a.tried, k)
			delete(a.backingOff, k)
		}
	}
	return max(wait, 0)
}

// triedNow counts one repair against each record that needed it.
func (a *Agent) triedNow(need []*state.Record) {
	now := time.Now()
	for _, r := range need {
		a.tried[r.Key()] = append(a.tried[r.Key()], now)
	}
}

var errLockBusy = errors.New("state lock busy")

// nodeEngine is the release engine for the node conf describes, as the
// agent runs it: it does not wait for the lock (LockTimeout 0), judges a
// netns gone only through judgeNetns, and leaves the IPAM addresses of
// what it releases to the runtime (no ReleaseIPAM), whose DEL (or GC) for
// the gone pod still comes and runs IPAM where it lives.
func nodeEngine(conf *config.NetConf, host *netdev.NS, log *slog.Logger, judgeNetns func(path string) error) *release.Engine {
	return &release.Engine{
		Store: state.Store{Dir: conf.StateDir}, Sys: sriov.Sysfs{Root: conf.SysfsRoot},
		Host: host, Log: log, JudgeNetns: judgeNetns, Baseline: conf.Baseline,
	}
}

// engine is this agent's nodeEngine, writing sysfs through a.Kernel.
func (a *Agent) engine(host *netdev.NS, log *slog.Logger) *release.Engine {
	e := nodeEngine(a.Conf, host, log, a.JudgeNetns)
	e.Sys = a.sys()
	return e
}

// reconcile runs the release engine's repair under the node lock, without
// waiting for it: a busy lock means an ADD, DEL or GC is at work, and the
// agent tries again shortly.
func (a *Agent) reconcile(before []*state.Record) ([]*state.Record, error) {
	if a.repairLog == nil {
		a.repairLog = slog.New(newQuietRepeats(a.Log.Handler(), repeatWindow)).With("cmd", "reconcile")
	}
	start := time.Now()
	var live []*state.Record
	err := a.inHost(func() error {
		host, err := netdev.Current(a.Conf.SysfsRoot)
		if err != nil {
			return err
		}
		defer host.Close()
		live, err = a.engine(host, a.repairLog).Reconcile()
		return err
	})
	if errors.Is(err, state.ErrLockTimeout) {
		return nil, errLockBusy
	}
	if err != nil {
		return nil, err
	}
	if finished := len(before) - len(live); finished > 0 {
		took := time.Since(start)
		a.Log.Info("finished releases", "count", finished, "took", took)
		if a.Metrics != nil {
			a.Metrics.Released(finished, took)
		}
	}
	return live, nil
}

// remember logs every PF whose standing changed, with the reason, and
// keeps the set of PFs ever advertised.
func (a *Agent) remember(pfs []PF) {
	if a.known == nil {
		a.known, a.last = map[string]string{}, map[string]PF{}
	}
	for _, p := range pfs {
		switch {
		case p.Phase == Ineligible:
			delete(a.known, p.PCI)
		case p.Phase != Missing:
			a.known[p.PCI] = p.Name
		}
		if old, ok := a.last[p.PCI]; !ok || old.Phase != p.Phase || old.Why != p.Why {
			a.Log.Info("PF", "pci", p.PCI, "name", p.Name, "phase", p.Phase, "healthy", p.Healthy(), "advertised", p.Advertised(), "why", p.Why)
		}
		a.last[p.PCI] = p
	}
}

// Run watches the node until ctx ends: netlink link events in the host
// netns (a device coming home, a PF renamed, moved or gone), address and
// route events (a PF turning into an uplink), changes in
// the state dir, the reserved file's directory and the netns directory,
// and a slow resync as a backstop.
func (a *Agent) Run(ctx context.Context) error {
	a.wake = make(chan struct{}, 1)
	if err := os.MkdirAll(a.Conf.StateDir, 0o700); err != nil {
		return err
	}
	// The watchers stop with ctx: on every return, ours included.
	ctx, stop := context.WithCancel(ctx)
	defer a.watchers.Wait()
	defer stop()
	if err := a.watchLinks(ctx); err != nil {
		return err
	}
	if err := a.watchUplinkSigns(ctx); err != nil {
		return err
	}
	if err := a.watchDirs(ctx); err != nil {
		return err
	}
	a.signal(true)
	resync := time.NewTicker(a.Resync)
	defer resync.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	// The loop turns at least this often, idle or not: liveness is
	// judged by it.
	heartbeat := time.NewTicker(turnEvery)
	defer heartbeat.Stop()
	var lastRepair time.Time
	for {
		a.turned.Store(time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return nil
		case <-heartbeat.C:
			continue
		case <-resync.C:
			a.signal(true)
			continue
		case <-retry.C:
			a.signal(true)
			continue
		case <-a.wake:
			// Events come in bursts (a pod's veth, a release's renames):
			// let a burst finish and take one look for all of it.
			time.Sleep(burstWindow)
		}
		a.mu.Lock()
		repair := a.pending
		a.pending = false
		a.mu.Unlock()
		// A release that keeps failing changes links each time, and each
		// change asks for repair again: space repairs out, look meanwhile.
		if wait := minRepairGap - time.Since(lastRepair); repair && wait > 0 {
			repair = false
			retry.Reset(wait)
		}
		if repair {
			lastRepair = time.Now()
		}
		if wait := a.step(repair); wait > 0 {
			retry.Reset(wait)
		}
	}
}

// LastTurn is when the agent's loop last turned (zero before it ran).
func (a *Agent) LastTurn() time.Time {
	if n := a.turned.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// turnEvery is how often the loop turns when nothing happens.
const turnEvery = 10 * time.Second

// repeatWindow is how long the same warning from repair is said only once.
const repeatWindow = 10 * time.Minute

// burstWindow is how long the agent lets events gather before it looks.
const burstWindow = 20 * time.Millisecond

// minRepairGap is the least time between two repairs by the agent.
const minRepairGap = 50 * time.Millisecond

// repairsPerWindow repairs per repairWindow is the most the agent runs
// for one record; after that it waits for the window to pass.
const (
	repairsPerWindow = 6
	repairWindow     = time.Minute
)

// signal asks for a look (with repair when a device may have come home).
func (a *Agent) signal(repair bool) {
	a.mu.Lock()
	a.pending = a.pending || repair
	a.reread = true
	a.mu.Unlock()
	a.wakeUp()
}

// signalUplinkSign asks for a look after an address or route event: a
// PF may have turned into an uplink, or back. Such an event changes no
// PF's functions or netdevs, so the look reuses the last sysfs read.
func (a *Agent) signalUplinkSign() { a.wakeUp() }

func (a *Agent) wakeUp() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}
