package agent

import (
	"strings"
	"testing"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/policy"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

func record(pci, name string, phase state.Phase, released bool) *state.Record {
	return &state.Record{ContainerID: "c-" + name, IfName: "net1", Netns: "/var/run/netns/" + name, Phase: phase,
		Pod:     config.Pod{Namespace: "ci", Name: "job-" + name},
		Devices: []state.Device{{PCIAddress: pci, OriginalName: name, PodName: "net1", VFIndex: -1, Released: released}}}
}

// sriovBlocked is a record whose devices are all home and whose PF's
// SR-IOV state waits for a VF held through vfio.
func sriovBlocked(r *state.Record) *state.Record {
	r.SRIOV = &state.SRIOV{NumVFs: 1, Blocked: "VF 0000:4a:00.0 is held through vfio by pid 42"}
	return r
}

func TestJudgeUsesThePluginsRulesAndTheRecords(t *testing.T) {
	host := &policy.Host{Links: map[string]policy.Link{}, DefaultRoute: map[int]bool{2: true}, GlobalAddr: map[int]string{}}
	for i, n := range []string{"eno1", "ens1", "ens2", "ens6", "ens7"} {
		host.Links[n] = policy.Link{Index: i + 2, Name: n}
	}
	v := View{
		PFs: []sriov.PF{
			{PCIAddress: "0000:01:00.0", Name: "eno1"}, // default route: the uplink
			{PCIAddress: "0000:02:00.0", Name: "ens1", NumVFs: 4},
			{PCIAddress: "0000:03:00.0", Name: "ens2"}, // reserved
			{PCIAddress: "0000:04:00.0"},               // in a pod, held
			{PCIAddress: "0000:05:00.0"},               // release pending
			{PCIAddress: "0000:06:00.0", Name: "ens6"}, // held, but its pod is gone
			{PCIAddress: "0000:07:00.0", Name: "ens7"}, // outside pfNames
			{PCIAddress: "0000:08:00.0"},               // adding
			{PCIAddress: "0000:0a:00.0"},               // home, SR-IOV restore waits
			{PCIAddress: "0000:0b:00.0"},               // held by a job without prow/sriov
		},
		Host:  host,
		Rules: policy.Rules{PFNames: []string{"eno1", "ens1", "ens2", "ens4", "ens5", "ens6", "ens8", "ens10"}, Reserved: map[string]bool{"ens2": true}},
		Records: []*state.Record{
			record("0000:04:00.0", "ens4", state.Attached, false),
			record("0000:05:00.0", "ens5", state.Releasing, false),
			record("0000:06:00.0", "ens6", state.Attached, false),
			record("0000:08:00.0", "ens8", state.Adding, false),
			sriovBlocked(record("0000:0a:00.0", "ens10", state.Releasing, true)),
			unpinned(record("0000:0b:00.0", "ens11", state.Attached, false)),
		},
		Known: map[string]string{"0000:09:00.0": "ens9", "0000:02:00.0": "ens1"},
		Gone:  func(r *state.Record) bool { return r.Devices[0].OriginalName == "ens6" },
	}
	want := map[string]struct {
		phase   Phase
		healthy bool
	}{
		"0000:01:00.0": {Ineligible, false}, "0000:02:00.0": {Free, true}, "0000:03:00.0": {Ineligible, false},
		"0000:04:00.0": {Attached, true}, "0000:05:00.0": {Releasing, false}, "0000:06:00.0": {Releasing, false},
		"0000:07:00.0": {Ineligible, false}, "0000:08:00.0": {Adding, true}, "0000:09:00.0": {Missing, false},
		"0000:0a:00.0": {Releasing, false}, "0000:0b:00.0": {Attached, false},
	}
	got := Judge(v)
	if len(got) != len(want) {
		t.Fatalf("got %d PFs, want %d: %+v", len(got), len(want), got)
	}
	for i, p := range got {
		w := want[p.PCI]
		if p.Phase != w.phase || p.Healthy() != w.healthy {
			t.Errorf("%s (%s): phase %s healthy %v why %q; want %s healthy %v", p.PCI, p.Name, p.Phase, p.Healthy(), p.Why, w.phase, w.healthy)
		}
		if i > 0 && got[i-1].PCI >= p.PCI {
			t.Errorf("not in PCI order: %s after %s", p.PCI, got[i-1].PCI)
		}
		if !p.Healthy() && p.Why == "" {
			t.Errorf("%s unavailable without a reason", p.PCI)
		}
	}
	if why := got[9].Why; !strings.Contains(why, "SR-IOV restore waits: VF 0000:4a:00.0 is held through vfio by pid 42") {
		t.Errorf("SR-IOV restore pending: %q", why)
	}
	if p := got[10]; !p.Unpinned || p.Holder == nil || !strings.Contains(p.Why, "no deviceID") {
		t.Errorf("PF held without the kubelet's allocation: %+v", p)
	}
	if h := got[3].Holder; h == nil || h.Pod != "ci/job-ens4" || got[3].Name != "ens4" {
		t.Errorf("held PF: %+v holder %+v", got[3], h)
	}
}

// A PF a job holds has its netdev in the pod's netns, so the host look
// does not have it: the pool (pfNames, here the PF's altname, as systemd
// names PFs) and the reservations are judged by the names the PF had on
// the host, not against a host without it. Withdrawing it from the kubelet
// while the job runs would be a lie about a healthy, allocated device.
func TestAHeldPFIsJudgedByItsHostNames(t *testing.T) {
	const pci = "0000:3b:00.0"
	host := &policy.Host{Links: map[string]policy.Link{"eno1": {Index: 2, Name: "eno1"}}}
	onHost := policy.Link{Index: 7, Name: "ens1f0", AltNames: []string{"enp59s0f0"}}
	view := func(rules policy.Rules, seen map[string]policy.Link) View {
		return View{PFs: []sriov.PF{{PCIAddress: pci}}, Host: host, Rules: rules,
			Records: []*state.Record{record(pci, "ens1f0", state.Attached, false)},
			Seen:    seen, Gone: func(*state.Record) bool { return false }}
	}
	pool := policy.Rules{PFNames: []string{"enp59s0f0"}}
	for _, c := range []struct {
		what  string
		v     View
		phase Phase
	}{
		{"pool by altname, seen on the host before", view(pool, map[string]policy.Link{pci: onHost}), Attached},
		// The agent restarted while the job held the PF: it never saw the
		// altnames. The plugin took the PF under the pool's rules; a miss
		// by the recorded name alone proves nothing.
		{"pool by altname, never seen", view(pool, nil), Attached},
		{"pool by recorded name", view(policy.Rules{PFNames: []string{"ens1f0"}}, nil), Attached},
		{"reserved by altname while held", view(policy.Rules{Reserved: map[string]bool{"enp59s0f0": true}}, map[string]policy.Link{pci: onHost}), Ineligible},
		{"reserved by recorded name while held", view(policy.Rules{Reserved: map[string]bool{"ens1f0": true}}, nil), Ineligible},
		{"outside the pool by every name it had", view(policy.Rules{PFNames: []string{"ens9"}}, map[string]policy.Link{pci: onHost}), Ineligible},
	} {
		got := Judge(c.v)
		if len(got) != 1 || got[0].Phase != c.phase {
			t.Errorf("%s: %+v, want phase %s", c.what, got, c.phase)
			continue
		}
		if c.phase == Attached && (!got[0].Healthy() || !got[0].Advertised() || got[0].Holder == nil) {
			t.Errorf("%s: %+v: want advertised, healthy, with its holder", c.what, got[0])
		}
	}
}

// unpinned marks r as made by an ADD that carried no deviceID.
func unpinned(r *state.Record) *state.Record { r.Unpinned = true; return r }

// A free PF off the node's sriovBaseline is neither advertised nor
// healthy until it is brought there, and says why; the baseline is never
// asked about a PF that is held, reserved or an uplink.
func TestJudgeKeepsAPFOffTheBaselineOut(t *testing.T) {
	host := &policy.Host{Links: map[string]policy.Link{}, DefaultRoute: map[int]bool{2: true}, GlobalAddr: map[int]string{}}
	for i, n := range []string{"eno1", "net1", "ens2", "ens3"} {
		host.Links[n] = policy.Link{Index: i + 2, Name: n}
	}
	asked := map[string]bool{}
	v := View{
		PFs: []sriov.PF{
			{PCIAddress: "0000:01:00.0", Name: "eno1"}, // the uplink
			{PCIAddress: "0000:02:00.0", Name: "net1"}, // as the bash plugin left it
			{PCIAddress: "0000:03:00.0", Name: "ens2"}, // reserved
			{PCIAddress: "0000:04:00.0", Name: "ens3"}, // at the baseline
			{PCIAddress: "0000:05:00.0"},               // held
		},
		Host:    host,
		Rules:   policy.Rules{Reserved: map[string]bool{"ens2": true}},
		Records: []*state.Record{record("0000:05:00.0", "ens5", state.Attached, false)},
		Gone:    func(*state.Record) bool { return false },
		Baseline: func(pf sriov.PF) string {
			asked[pf.PCIAddress] = true
			if pf.Name == "net1" {
				return "not at the node's sriovBaseline: sriov_numvfs 2, want 7"
			}
			return ""
		},
	}
	got := map[string]PF{}
	for _, p := range Judge(v) {
		got[p.PCI] = p
	}
	if p := got["0000:02:00.0"]; p.Phase != OffBaseline || p.Advertised() || p.Healthy() || !strings.Contains(p.Why, "sriov_numvfs 2, want 7") {
		t.Errorf("the PF off the baseline: %+v", p)
	}
	if p := got["0000:04:00.0"]; p.Phase != Free || !p.Advertised() || !p.Healthy() {
		t.Errorf("the PF at the baseline: %+v", p)
	}
	for pci, ok := range asked {
		if ok && pci != "0000:02:00.0" && pci != "0000:04:00.0" {
			t.Errorf("the baseline was asked about %s, which is not free", pci)
		}
	}
}

// A PF no driver is bound to has no netdev: it is listed all the same,
// never advertised as free, and says why. Under a baseline that applies
// it is off it (the agent binds its driver); without one it is left, as
// missing if it was advertised before, else ineligible; judged by the
// names it is known by, it may be reserved or outside the pool, and with
// a pool but no name known it is not taken for in it.
func TestJudgeAPFWithoutDriver(t *testing.T) {
	const pci = "0000:3b:00.0"
	driverless := sriov.PF{PCIAddress: pci, TotalVFs: 7, Driverless: true}
	offBaseline := func(sriov.PF) string {
		return "not at the node's sriovBaseline: the PF has no driver (its own driver was unbound), so no netdev; its VFs are judged once its default driver is bound"
	}
	noBaseline := func(sriov.PF) string { return "" }
	for _, c := range []struct {
		name      string
		rules     policy.Rules
		baseline  func(sriov.PF) string
		baseName  string
		seen      map[string]policy.Link
		known     map[string]string
		want      Phase
		wantWhy   []string
		advertise bool
	}{
		{name: "under a baseline", baseline: offBaseline, want: OffBaseline,
			wantWhy: []string{"the PF has no driver", "its VFs are judged once"}},
		{name: "without a baseline", baseline: noBaseline, want: Ineligible,
			wantWhy: []string{"no driver is bound to it", "declares no sriovBaseline for it", "echo " + pci + " > /sys/bus/pci/drivers_probe"}},
		{name: "without a baseline, advertised before", baseline: noBaseline, known: map[string]string{pci: "ens1f0"},
			want: Missing, wantWhy: []string{"no driver is bound to it"}, advertise: true},
		{name: "reserved by the name it was seen under", baseline: offBaseline, rules: policy.Rules{Reserved: map[string]bool{"ens1f0": true}},
			seen: map[string]policy.Link{pci: {Name: "ens1f0"}}, want: Ineligible, wantWhy: []string{"ens1f0 is reserved"}},
		{name: "a pool and no name", baseline: offBaseline, rules: policy.Rules{PFNames: []string{"ens1f0"}},
			want: Ineligible, wantWhy: []string{"pfNames cannot judge it without a name"}},
		{name: "a pool and the baseline's name", baseline: offBaseline, rules: policy.Rules{PFNames: []string{"ens1f0"}},
			baseName: "ens1f0", want: OffBaseline},
	} {
		v := View{PFs: []sriov.PF{driverless}, Host: &policy.Host{Links: map[string]policy.Link{}}, Rules: c.rules,
			Gone: func(*state.Record) bool { return false }, Baseline: c.baseline, Seen: c.seen, Known: c.known,
			BaselineName: func(string) string { return c.baseName }}
		got := Judge(v)
		if len(got) != 1 {
			t.Fatalf("%s: judged %+v, want the one PF", c.name, got)
		}
		p := got[0]
		if p.Phase != c.want || p.Healthy() || p.Advertised() != c.advertise || p.Name != c.known[pci] {
			t.Errorf("%s: %+v, want phase %s, advertised %v, never healthy, named as advertised before (%q)", c.name, p, c.want, c.advertise, c.known[pci])
		}
		for _, w := range c.wantWhy {
			if !strings.Contains(p.Why, w) {
				t.Errorf("%s: why %q does not say %q", c.name, p.Why, w)
			}
		}
	}
}
