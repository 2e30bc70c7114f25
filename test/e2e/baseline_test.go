//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/agent"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
)

// A node as the bash plugin leaves it, adopted through the node's
// declared sriovBaseline: the PF on the host under the name it had in the
// pod (net1), fewer VFs than the PF has, and a VF on vfio-pci whose
// driver_override was cleared after binding (kubevirtci's
// configure_vf_driver).

// seedBashPluginNode leaves PF f so: 3 VFs of 7, VF 0 on vfio-pci without
// override, the PF down and renamed net1 with no record. Cleanup gives
// the VM back its suite baseline: the PF's name and admin state, every VF
// on igbvf, and the VFs' new MACs learnt.
func seedBashPluginNode(t *testing.T, f pf) {
	t.Helper()
	was := baseline[f.PCI]
	t.Cleanup(func() {
		if l, ok := mustLinks(t, "")[f.PCI]; ok && l.Name != was.Name {
			ipQuiet("link", "set", l.Name, "down")
			ipQuiet("link", "set", l.Name, "name", was.Name)
		}
		if was.Up {
			ipQuiet("link", "set", was.Name, "up")
		}
		if vfs, err := vfPCIs(f.PCI); err == nil && len(vfs) > 0 && vfDriver(vfs[0]) != "igbvf" {
			if err := unbindVFIO(vfs[0]); err != nil {
				t.Errorf("VF 0 back to igbvf: %v", err)
			}
		}
		restoreVFs(t, f)
	})
	if err := setNumVFs(f, 0); err != nil {
		t.Fatal(err)
	}
	if err := setNumVFs(f, 3); err != nil {
		t.Fatal(err)
	}
	vf := vfsOf[f.PCI][0]
	if err := bindVFIO(vf); err != nil {
		t.Fatal(err)
	}
	if err := writeSysfs(filepath.Join(pciDevices, vf, "driver_override"), "\n"); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "link", "set", was.Name, "down")
	run(t, "ip", "link", "set", was.Name, "name", "net1")
	if err := atBaseline(f, was.Name); err == nil {
		t.Fatal("the seeded PF is at the baseline already")
	}
	t.Logf("seeded as the bash plugin leaves a node: %v", mustLinks(t, "")[f.PCI])
}

// atBaseline says how PF f differs from the baseline the tests declare:
// every VF it has, each on igbvf with a netdev and no driver_override,
// sriov_drivers_autoprobe on, and the PF named name on the host.
func atBaseline(f pf, name string) error {
	dev := filepath.Join(pciDevices, f.PCI)
	if n, _ := readSysfs(filepath.Join(dev, "sriov_numvfs")); n != strconv.Itoa(f.TotalVFs) {
		return fmt.Errorf("%s has sriov_numvfs %s, want %d", f.PCI, n, f.TotalVFs)
	}
	if a, _ := readSysfs(filepath.Join(dev, "sriov_drivers_autoprobe")); a != "1" {
		return fmt.Errorf("%s has sriov_drivers_autoprobe %s", f.PCI, a)
	}
	host, _, err := netnsLinks("")
	if err != nil {
		return err
	}
	if l, ok := host[f.PCI]; !ok || l.Name != name {
		return fmt.Errorf("PF %s is %v on the host, want it named %s", f.PCI, l, name)
	}
	vfs, err := vfPCIs(f.PCI)
	if err != nil {
		return err
	}
	for i := 0; i < len(vfs); i++ {
		v := vfs[i]
		override, _ := readSysfs(filepath.Join(pciDevices, v, "driver_override"))
		if _, ok := host[v]; vfDriver(v) != "igbvf" || override != "(null)" || !ok {
			return fmt.Errorf("VF %d (%s) is on %q with driver_override %s, netdev on the host: %v", i, v, vfDriver(v), override, ok)
		}
	}
	return nil
}

// baselineNode declares the baseline for the harness's node: every VF on
// every PF, and PF f named as the suite found it. The pool names the PFs
// as the suite found them: PF f, left as net1, is in it only by the name
// the baseline gives it back.
func baselineNode(h *harness, f pf) {
	var names []string
	for _, p := range pfs {
		names = append(names, baseline[p.PCI].Name)
	}
	h.setNode(map[string]any{"pfNames": names, "sriovBaseline": map[string]any{
		"numVFs": "total",
		"pfs":    []any{map[string]any{"pci": f.PCI, "name": baseline[f.PCI].Name}},
	}})
}

// nodeAgent is the node agent on the harness's node, not running yet,
// and what it last published.
type nodeAgent struct {
	*agent.Agent
	mu   sync.Mutex
	last []agent.PF
}

func newNodeAgent(t *testing.T, h *harness) *nodeAgent {
	t.Helper()
	conf, err := config.NodeConf(h.nodeFile)
	if err != nil {
		t.Fatal(err)
	}
	n := &nodeAgent{}
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug}))
	n.Agent = &agent.Agent{Conf: conf, Resync: 2 * time.Second, Log: log, Publish: func(pfs []agent.PF) {
		n.mu.Lock()
		defer n.mu.Unlock()
		n.last = pfs
	}}
	return n
}

// look is the status command's look at PF pci.
func (n *nodeAgent) look(t *testing.T, pci string) agent.PF {
	t.Helper()
	seen, err := n.Look()
	if err != nil {
		t.Fatal(err)
	}
	return find(seen, pci)
}

// run runs the agent until the test ends.
func (n *nodeAgent) run(t *testing.T) {
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
}

// published is what the agent last published for PF pci.
func (n *nodeAgent) published(pci string) agent.PF {
	n.mu.Lock()
	defer n.mu.Unlock()
	return find(n.last, pci)
}

// waitAdopted waits for the agent to publish PF f free and healthy, at
// the baseline under its suite name.
func (n *nodeAgent) waitAdopted(t *testing.T, f pf) {
	t.Helper()
	if err := poll(60*time.Second, func() error {
		if p := n.published(f.PCI); p.Phase != agent.Free || !p.Healthy() {
			return fmt.Errorf("the agent publishes %+v", p)
		}
		return atBaseline(f, baseline[f.PCI].Name)
	}); err != nil {
		t.Fatal(err)
	}
}

// The node agent adopts the node before its first job: the status look
// shows the PF off the baseline and not advertised, then the agent brings
// it there (name, VF count, VF 0 back on igbvf with no override) and
// advertises it free. The other PFs, at the baseline already, are not
// touched.
func TestAgentBringsABashPluginNodeToTheBaseline(t *testing.T) {
	f := pfs[0]
	h := newHarness(t, nil)
	baselineNode(h, f)
	seedBashPluginNode(t, f)
	others := map[string]string{}
	for _, o := range pfs[1:] {
		others[o.PCI] = fmt.Sprint(mustLinks(t, "")[o.PCI])
	}
	a := newNodeAgent(t, h)
	if p := a.look(t, f.PCI); p.Phase != agent.OffBaseline || p.Advertised() || p.Why == "" {
		t.Fatalf("status before the agent ran: %+v, want %s, not advertised, with why", p, agent.OffBaseline)
	}
	t.Logf("status before the agent ran: %+v", a.look(t, f.PCI))
	a.run(t)
	a.waitAdopted(t, f)
	for _, o := range pfs[1:] {
		if got := fmt.Sprint(mustLinks(t, "")[o.PCI]); got != others[o.PCI] {
			t.Errorf("PF %s at the baseline was touched: %s, was %s", o.PCI, got, others[o.PCI])
		}
	}
	if r := h.records(); len(r) != 0 {
		t.Errorf("records: %v", r)
	}
}

func find(pfs []agent.PF, pci string) agent.PF {
	for _, p := range pfs {
		if p.PCI == pci {
			return p
		}
	}
	return agent.PF{PCI: pci, Phase: "not listed"}
}

// Without the agent, the plugin's first ADD brings the PF it takes to the
// baseline before it records it: the pod gets all 7 VF netdevs. The job
// then re-creates 6 VFs and binds two to vfio-pci; DEL ends at the
// baseline, not at what the bash plugin left.
func TestJobOnABashPluginNodeEndsAtTheBaseline(t *testing.T) {
	f := pfs[0]
	h := newHarness(t, map[string]any{"pciBusID": f.PCI})
	baselineNode(h, f)
	seedBashPluginNode(t, f)
	j := addJob(t, h, f.PCI, 0)
	j.enterKind(t, h)
	j.recreateVFs(t)
	j.end(t, h, clusterDown)
	if err := poll(10*time.Second, func() error { return atBaseline(f, baseline[f.PCI].Name) }); err != nil {
		t.Fatalf("after the job's DEL: %v", err)
	}
	if r := h.records(); len(r) != 0 {
		t.Fatalf("records left: %v", r)
	}
	// A second job, on the node at its baseline, ends there too.
	j = addJob(t, h, f.PCI, 0)
	j.enterKind(t, h)
	j.recreateVFs(t)
	j.end(t, h, forceDeleted)
	if err := poll(10*time.Second, func() error { return atBaseline(f, baseline[f.PCI].Name) }); err != nil {
		t.Fatalf("after the second job's DEL: %v", err)
	}
}
