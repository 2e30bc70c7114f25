package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
)

// host builds a host view from "name:index" links; routes and addresses
// are set by the caller.
func host(links ...Link) *Host {
	h := &Host{Links: map[string]Link{}, DefaultRoute: map[int]bool{}, GlobalAddr: map[int]string{}}
	for _, l := range links {
		h.Links[l.Name] = l
	}
	return h
}

func pf(addr, name string, vfs ...string) sriov.PF {
	p := sriov.PF{PCIAddress: addr, Name: name, TotalVFs: 7, NumVFs: len(vfs)}
	for i, v := range vfs {
		p.VFs = append(p.VFs, sriov.VF{Index: i, PCIAddress: addr[:len(addr)-1] + string(rune('1'+i)), Name: v})
	}
	return p
}

func TestJudge(t *testing.T) {
	h := host(Link{Index: 2, Name: "ens1"}, Link{Index: 3, Name: "ens1v0"}, Link{Index: 4, Name: "ens2"},
		Link{Index: 5, Name: "ens3", MasterIndex: 9}, Link{Index: 6, Name: "ens4"}, Link{Index: 7, Name: "ens4v0"},
		Link{Index: 8, Name: "ens5"}, Link{Index: 9, Name: "bond0", Kind: "bond"})
	h.DefaultRoute[4] = true
	h.GlobalAddr[7] = "2001:db8::5"
	h.GlobalAddr[8] = "192.0.2.1"
	rules := Rules{
		Reserved: map[string]bool{"ens1v0": true, "resv": true},
		Holders:  map[string]string{"0000:09:00.0": "pod ci/job-1 (container c1, net1, attached)"},
	}
	for _, c := range []struct {
		pf    sriov.PF
		want  string
		fixed bool
	}{
		{pf("0000:01:00.0", "ens1", "ens1v0"), "its VF ens1v0 is reserved", true},
		{pf("0000:02:00.0", "ens2"), "uplink: ens2 carries a default route", true},
		{pf("0000:03:00.0", "ens3"), "uplink: ens3 is a port of bond bond0", true},
		{pf("0000:04:00.0", "ens4", "ens4v0"), "uplink: its VF ens4v0 has global address 2001:db8::5", true},
		{pf("0000:05:00.0", "ens5"), "uplink: ens5 has global address 192.0.2.1", true},
		{pf("0000:06:00.0", "resv"), "resv is reserved", true},
		{pf("0000:07:00.0", "gone"), "its netdev is not in the host netns", false},
		{pf("0000:08:00.0", ""), "its netdev is not in the host netns", false},
		{pf("0000:09:00.0", "ens1"), "in use by pod ci/job-1 (container c1, net1, attached)", false},
	} {
		v := rules.Judge(c.pf, h)
		if v.Reason != c.want || v.Fixed != c.fixed || v.OK() {
			t.Errorf("%s (%s): got %+v, want %q fixed=%v", c.pf.PCIAddress, c.pf.Name, v, c.want, c.fixed)
		}
	}
	// A VF without a netdev on the host is no uplink and no reservation.
	if v := rules.Judge(pf("0000:0a:00.0", "ens6", ""), host(Link{Index: 10, Name: "ens6"})); !v.OK() {
		t.Errorf("free PF refused: %+v", v)
	}
}

func TestPFNamesRestrictPool(t *testing.T) {
	h := host(Link{Index: 2, Name: "ens1"}, Link{Index: 3, Name: "ens2"})
	rules := Rules{PFNames: []string{"ens2"}}
	if v := rules.Judge(pf("0000:01:00.0", "ens1"), h); v.Reason != "ens1 is not in pfNames" || !v.Fixed {
		t.Errorf("ens1: %+v", v)
	}
	if v := rules.Judge(pf("0000:02:00.0", "ens2"), h); !v.OK() {
		t.Errorf("ens2: %+v", v)
	}
}

func TestChooseTakesFirstFreeAndExplainsTheRest(t *testing.T) {
	h := host(Link{Index: 2, Name: "ens1"}, Link{Index: 3, Name: "ens2"}, Link{Index: 4, Name: "ens3"})
	h.DefaultRoute[2] = true
	pfs := []sriov.PF{pf("0000:01:00.0", "ens1"), pf("0000:02:00.0", "ens2"), pf("0000:03:00.0", "ens3")}
	got, passed, ok := Rules{}.Choose(pfs, h)
	if !ok || got.Name != "ens2" {
		t.Fatalf("chose %+v ok=%v, want ens2", got, ok)
	}
	if len(passed) != 1 || !strings.Contains(passed[0], "0000:01:00.0 (ens1): uplink") {
		t.Errorf("passed over: %q", passed)
	}
	_, passed, ok = Rules{Reserved: map[string]bool{"ens2": true, "ens3": true}}.Choose(pfs, h)
	if ok || len(passed) != 3 || !strings.HasSuffix(passed[2], "ens3 is reserved") {
		t.Errorf("ok=%v passed over: %q", ok, passed)
	}
	_, passed, _ = Rules{}.Choose([]sriov.PF{pf("0000:04:00.0", "")}, h)
	if len(passed) != 1 || !strings.HasPrefix(passed[0], "0000:04:00.0 (no netdev)") {
		t.Errorf("passed over: %q", passed)
	}
}

// TestChooseFromReadsUpToTheChosen checks that ADD reads the VFs of no PF
// after the one it takes, and that a failed read ends the choice.
func TestChooseFromReadsUpToTheChosen(t *testing.T) {
	h := host(Link{Index: 2, Name: "ens1"}, Link{Index: 3, Name: "ens2"}, Link{Index: 4, Name: "ens3"})
	h.DefaultRoute[2] = true
	pfs := []sriov.PF{pf("0000:01:00.0", "ens1"), pf("0000:02:00.0", "ens2"), pf("0000:03:00.0", "ens3")}
	var read []int
	got, passed, ok, err := Rules{}.ChooseFrom(len(pfs), func(i int) (sriov.PF, error) {
		read = append(read, i)
		return pfs[i], nil
	}, h)
	if err != nil || !ok || got.Name != "ens2" || len(passed) != 1 {
		t.Fatalf("chose %+v ok=%v err=%v passed over %q, want ens2 past ens1", got, ok, err, passed)
	}
	if fmt.Sprint(read) != "[0 1]" {
		t.Errorf("read PFs %v, want [0 1]: none after the chosen one", read)
	}
	boom := errors.New("sysfs read failed")
	_, _, ok, err = Rules{}.ChooseFrom(len(pfs), func(i int) (sriov.PF, error) {
		if i == 1 {
			return sriov.PF{}, boom
		}
		return pfs[i], nil
	}, h)
	if ok || !errors.Is(err, boom) {
		t.Errorf("ok=%v err=%v, want the read's error", ok, err)
	}
}

func TestPodNames(t *testing.T) {
	vfs := []sriov.VF{{Index: 0, Name: "eth3"}, {Index: 1, Name: "net1"}, {Index: 2, Name: "eth0"}, {Index: 3}}
	got, err := PodNames("net1", vfs, map[string]bool{"eth0": true, "lo": true})
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]string{0: "eth3", 1: "net1v1", 2: "net1v2"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i, n := range want {
		if got[i] != n {
			t.Errorf("VF %d: got %q, want %q", i, got[i], n)
		}
	}
	// The fallback name is taken too, or too long for the kernel.
	if _, err := PodNames("net1", []sriov.VF{{Index: 4, Name: "eth0"}}, map[string]bool{"eth0": true, "net1v4": true}); err == nil {
		t.Error("taken fallback accepted")
	}
	if _, err := PodNames("verylongname012", []sriov.VF{{Index: 4, Name: "eth0"}}, map[string]bool{"eth0": true}); err == nil {
		t.Error("16-byte fallback name accepted")
	}
}

// A PF the bash plugin left renamed net1 is judged by the name the node's
// baseline gives it back as well: in the pool under either name, refused
// when either is reserved, and still refused as an uplink or while held.
func TestJudgeAsTheBaselineName(t *testing.T) {
	h := host(Link{Index: 2, Name: "net1"}, Link{Index: 3, Name: "dev4"}, Link{Index: 4, Name: "eth0"})
	h.DefaultRoute[3] = true
	pool := Rules{PFNames: []string{"ens1f0", "ens1f1"}}
	if v := pool.Judge(pf("0000:01:00.0", "net1"), h); v.OK() {
		t.Fatal("net1 is in a pool that does not name it")
	}
	if v := pool.JudgeAs(pf("0000:01:00.0", "net1"), h, "ens1f0"); !v.OK() {
		t.Errorf("net1, to be named ens1f0, in pool [ens1f0 ens1f1]: %+v", v)
	}
	if v := pool.JudgeAs(pf("0000:01:00.0", "net1"), h, "ens2f0"); v.OK() || !strings.Contains(v.Reason, "net1 is not in pfNames") {
		t.Errorf("net1, to be named ens2f0: %+v", v)
	}
	reserved := Rules{Reserved: map[string]bool{"ens1f0": true}}
	if v := reserved.JudgeAs(pf("0000:01:00.0", "net1"), h, "ens1f0"); v.OK() || !v.Fixed || !strings.Contains(v.Reason, "to be named ens1f0, is reserved") {
		t.Errorf("net1, to be named the reserved ens1f0: %+v", v)
	}
	if v := (Rules{}).JudgeAs(pf("0000:02:00.0", "dev4"), h, "ens1f1"); v.OK() || !strings.HasPrefix(v.Reason, "uplink: ") {
		t.Errorf("dev4, an uplink, to be named ens1f1: %+v", v)
	}
	held := Rules{Holders: map[string]string{"0000:01:00.0": "pod ci/job"}}
	if v := held.JudgeAs(pf("0000:01:00.0", "net1"), h, "ens1f0"); v.OK() {
		t.Errorf("a held PF: %+v", v)
	}
	// The name taken by another link on the host changes nothing of how
	// that link is judged.
	if v := (Rules{}).JudgeAs(pf("0000:01:00.0", "net1"), h, "eth0"); !v.OK() {
		t.Errorf("net1, to be named eth0 (taken): %+v", v)
	}
}

// A PF without a driver has no name on the host: it is judged by the
// names it is known by. Reserved under any refuses it; in the pool under
// any admits it; no name known passes the reservations (they name
// netdevs; the PF is judged in full once it has one) but not a pool.
func TestAdmitsDriverless(t *testing.T) {
	const pci = "0000:3b:00.0"
	seen := Link{Name: "net1", AltNames: []string{"enp59s0f0"}}
	for _, c := range []struct {
		name  string
		rules Rules
		known []Link
		want  string // "" admits
	}{
		{"no rules, no name", Rules{}, nil, ""},
		{"reservations, no name", Rules{Reserved: map[string]bool{"eno1": true}}, nil, ""},
		{"pool, no name", Rules{PFNames: []string{"ens1f0"}}, nil, "pfNames cannot judge it without a name"},
		{"pool by the baseline's name", Rules{PFNames: []string{"ens1f0"}}, []Link{{Name: "ens1f0"}}, ""},
		{"pool by an altname seen", Rules{PFNames: []string{"enp59s0f0"}}, []Link{seen, {Name: "ens1f0"}}, ""},
		{"outside the pool", Rules{PFNames: []string{"ens2f0"}}, []Link{seen, {Name: "ens1f0"}}, "known as net1, ens1f0, it is not in pfNames"},
		{"reserved by the baseline's name", Rules{Reserved: map[string]bool{"ens1f0": true}}, []Link{seen, {Name: "ens1f0"}}, "ens1f0 is reserved"},
		{"reserved by an altname seen", Rules{PFNames: []string{"ens1f0"}, Reserved: map[string]bool{"enp59s0f0": true}}, []Link{seen, {Name: "ens1f0"}}, "net1 (altname enp59s0f0) is reserved"},
	} {
		v := c.rules.AdmitsDriverless(pci, c.known)
		if c.want == "" && !v.OK() || c.want != "" && (v.OK() || !v.Fixed || !strings.Contains(v.Reason, c.want)) {
			t.Errorf("%s: %+v, want %q", c.name, v, c.want)
		}
	}
}
