package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/policy"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// largeSysfs is a node with pfs PFs of vfs VFs each, plus as many plain
// netdevs as a busy node's veths, so discovery walks a realistic class/net.
func largeSysfs(b *testing.B, pfs, vfs, plain int) string {
	b.Helper()
	root := b.TempDir()
	for i := range pfs {
		if err := writeSysfs(root, 0x10+i, fmt.Sprintf("ens%df0", i), vfs, nil); err != nil {
			b.Fatal(err)
		}
	}
	for i := range plain {
		// A virtual netdev: class/net entry with no PCI device behind it.
		dir := filepath.Join(root, "devices", "virtual", "net", fmt.Sprintf("veth%d", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.Symlink(dir, filepath.Join(root, "class", "net", fmt.Sprintf("veth%d", i))); err != nil {
			b.Fatal(err)
		}
	}
	return root
}

// BenchmarkSysfsPFs is discovery as ADD runs it with no pinned PF: every
// PF on a node with 4 PFs of 256 VFs and 200 veths.
func BenchmarkSysfsPFs(b *testing.B) {
	s := sriov.Sysfs{Root: largeSysfs(b, 4, 256, 200)}
	for b.Loop() {
		pfs, err := s.PFs()
		if err != nil || len(pfs) != 4 || len(pfs[3].VFs) != 256 {
			b.Fatalf("PFs: %d, %v", len(pfs), err)
		}
	}
}

// BenchmarkSysfsChooseFirst is discovery as an unpinned ADD runs it on a
// node of 8 PFs of 256 VFs and 200 veths when the first PF is free: the
// PFs listed, and only the first read with its VFs.
func BenchmarkSysfsChooseFirst(b *testing.B) {
	s := sriov.Sysfs{Root: largeSysfs(b, 8, 256, 200)}
	for b.Loop() {
		refs, err := s.PFRefs()
		if err != nil || len(refs) != 8 {
			b.Fatalf("PFRefs: %d, %v", len(refs), err)
		}
		if pf, err := s.Read(refs[0]); err != nil || len(pf.VFs) != 256 {
			b.Fatalf("Read: %v", err)
		}
	}
}

// BenchmarkSysfsPFsNode is every PF of that node read with its VFs, as an
// unpinned ADD did before it read them one at a time.
func BenchmarkSysfsPFsNode(b *testing.B) {
	s := sriov.Sysfs{Root: largeSysfs(b, 8, 256, 200)}
	for b.Loop() {
		if pfs, err := s.PFs(); err != nil || len(pfs) != 8 {
			b.Fatalf("PFs: %d, %v", len(pfs), err)
		}
	}
}

// BenchmarkSysfsPF is discovery of one pinned PF with 256 VFs (DEL's vet,
// a deviceID from multus).
func BenchmarkSysfsPF(b *testing.B) {
	s := sriov.Sysfs{Root: largeSysfs(b, 1, 256, 0)}
	for b.Loop() {
		pf, err := s.PF("0000:10:00.0")
		if err != nil || len(pf.VFs) != 256 {
			b.Fatalf("PF: %v", err)
		}
	}
}

// BenchmarkPolicyJudge is the PF policy judging the first PF of a node of
// 8 PFs of 256 VFs each, with 200 pod veths: ADD asks it for the PF and
// each of its VFs whether it carries the node's traffic.
func BenchmarkPolicyJudge(b *testing.B) {
	host := &policy.Host{Links: map[string]policy.Link{}, DefaultRoute: map[int]bool{}, GlobalAddr: map[int]string{}}
	index := 1
	add := func(name, kind string) {
		index++
		host.Links[name] = policy.Link{Index: index, Name: name, Kind: kind}
	}
	add("eno1", "device")
	host.DefaultRoute[index] = true
	var first sriov.PF
	for p := range 8 {
		pf := sriov.PF{PCIAddress: fmt.Sprintf("0000:%02x:00.0", 0x3b+p), Name: fmt.Sprintf("ens%df0", p), TotalVFs: 256, NumVFs: 256}
		add(pf.Name, "device")
		for v := range 256 {
			vf := sriov.VF{Index: v, PCIAddress: fmt.Sprintf("0000:%02x:%02x.%d", 0x7b+p, v/8, v%8), Name: fmt.Sprintf("ens%df0v%d", p, v)}
			add(vf.Name, "device")
			pf.VFs = append(pf.VFs, vf)
		}
		if p == 0 {
			first = pf
		}
	}
	for i := range 200 {
		add(fmt.Sprintf("veth%d", i), "veth")
	}
	for b.Loop() {
		if v := (policy.Rules{}).Judge(first, host); !v.OK() {
			b.Fatal(v.Reason)
		}
	}
}

// record is an attachment of a PF with vfs VFs, as ADD saves it.
func record(vfs int) *state.Record {
	r := &state.Record{Version: state.Version, ContainerID: strings.Repeat("c0ffee", 10) + "abcd", IfName: "net1",
		Netns: "/var/run/netns/cni-5f0b7c2e-1d2a-4c4b-9a7e-0123456789ab", NetnsID: netdev.ID{Dev: 4, Ino: 4026532999},
		Pod:   config.Pod{Namespace: "kubevirt-prow-jobs", Name: "pull-kubevirt-e2e-sig-network-sriov-1234", UID: "5f0b7c2e-1d2a-4c4b-9a7e-0123456789ab"},
		Phase: state.Attached, Created: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)}
	r.Devices = append(r.Devices, state.Device{PCIAddress: "0000:3b:00.0", OriginalName: "ens1f0", PodName: "net1",
		MAC: "52:54:00:12:34:56", MTU: 9000, Up: true, VFIndex: -1})
	for i := range vfs {
		r.Devices = append(r.Devices, state.Device{PCIAddress: fmt.Sprintf("0000:7b:%02x.%d", i/8, i%8),
			OriginalName: fmt.Sprintf("ens1f0v%d", i), PodName: fmt.Sprintf("ens1f0v%d", i),
			MAC: fmt.Sprintf("52:54:00:00:%02x:%02x", i/256, i%256), MTU: 1500, VFIndex: i})
	}
	r.Result = json.RawMessage(`{"cniVersion":"1.1.0","interfaces":[]}`)
	return r
}

// BenchmarkRecordEncode is the encoding Store.Save does, for 256 VFs.
func BenchmarkRecordEncode(b *testing.B) {
	r := record(256)
	for b.Loop() {
		if _, err := json.MarshalIndent(r, "", "  "); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRecordDecode is state.Decode (parse and validate), for 256 VFs.
func BenchmarkRecordDecode(b *testing.B) {
	data, err := json.MarshalIndent(record(256), "", "  ")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := state.Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStoreSaveGet is a record to disk and back: temp file, fsync,
// rename, directory fsync, read, decode. ADD saves twice, DEL once.
func BenchmarkStoreSaveGet(b *testing.B) {
	s := state.Store{Dir: b.TempDir()}
	r := record(256)
	for b.Loop() {
		if err := s.Save(r); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Get(r.Key()); err != nil {
			b.Fatal(err)
		}
	}
}

// TestHarness runs every method of the bench once on a PF with 0 and with
// 3 VFs, so a broken harness shows in go test, not first in make bench.
// It builds both binaries; a few seconds with a warm build cache.
func TestHarness(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the bench harness test needs root and CI=true: run CI as root")
		}
		t.Skip("skipped: needs root to create network namespaces and links")
	}
	dir := t.TempDir()
	build := func(out, pkg string) string {
		path := filepath.Join(dir, out)
		cmd := exec.Command("go", "build", "-o", path, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, b)
		}
		return path
	}
	cfg := benchConfig{
		plugin:     build("sriov-passthrough-cni", "github.com/kubevirt/sriov-passthrough-cni/cmd/sriov-passthrough-cni"),
		hostDevice: build("host-device", "github.com/containernetworking/plugins/plugins/main/host-device"),
		vfs:        []int{0, 3}, runs: map[int]int{0: 1, 3: 1}, hdRuns: map[int]int{0: 1, 3: 1}, inProc: true,
		node: nodeSpec{pfs: 3, vfs: 2, runs: 2, hdRuns: 1, agentEvents: 2},
	}
	var log strings.Builder
	res, err := run(cfg, &log)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if len(res.points) != 3 || res.points[2].pfs != 3 || len(res.points[2].agent) != 2 {
		t.Fatalf("want the points of 0 and 3 VFs and the node of 3 PFs with 2 agent events, got %d points", len(res.points))
	}
	for _, p := range res.points {
		want := map[string]int{"plugin": 1, "floor": 1, "host-device": 1, "plugin-inproc": 1}
		if p.pfs > 1 {
			want["plugin"], want["floor"], want["plugin-inproc"] = 2, 2, 2
		}
		for m, n := range want {
			if got := len(p.samples[m]); got != n {
				t.Errorf("%d VFs, %d PFs: %d samples of %s, want %d", p.vfs, p.pfs, got, m, n)
			}
		}
		if s := p.samples["plugin"][0]; s.cpu <= 0 || s.rss <= 0 {
			t.Errorf("%d VFs: plugin sample without CPU time or RSS: %+v", p.vfs, s)
		}
	}
	var out strings.Builder
	report(&out, res)
	if !strings.Contains(out.String(), "| 3 |") {
		t.Errorf("table has no row for 3 VFs:\n%s", out.String())
	}
	dir = t.TempDir()
	if err := writeDocs(dir, res); err != nil {
		t.Fatal(err)
	}
	again, err := load(filepath.Join(dir, "bench.json"))
	if err != nil {
		t.Fatal(err)
	}
	if a, b := summary(res, 3), summary(again, 3); a != b {
		t.Errorf("bench.json does not give the same summary back:\n%s\n%s", a, b)
	}
	if s := summary(res, 3); !strings.HasPrefix(s, "bench: vfs=3 plugin_ms=") {
		t.Errorf("summary line %q", s)
	}
	if a, b := nodeSummary(res), nodeSummary(again); a != b || !strings.HasPrefix(a, "bench: node=3x2 rounds=2 ") {
		t.Errorf("node summary %q, from bench.json %q", a, b)
	}
}

// TestPairedRatio checks the ratio and its interval on rounds whose
// ratios are known, and the rounds it asks for at that spread.
func TestPairedRatio(t *testing.T) {
	ms := func(v float64) sample { return sample{add: time.Duration(v * float64(time.Millisecond))} }
	var num, den []sample
	// Per-round ratios 1.02 and 1.06, alternating: geometric mean ≈ 1.04.
	for i := range 10 {
		den = append(den, ms(float64(1000+100*i)))
		num = append(num, ms(float64(1000+100*i)*[]float64{1.02, 1.06}[i%2]))
	}
	r := pairedRatio(num, den)
	if r.n != 10 || math.Abs(r.est-math.Sqrt(1.02*1.06)) > 1e-4 {
		t.Fatalf("ratio %+v, want 10 rounds and %.4f", r, math.Sqrt(1.02*1.06))
	}
	// sd of the logs ≈ 0.0203; t(9) = 2.262: half width ≈ 1.45%.
	if h := r.halfWidth(); h < 0.013 || h > 0.016 || r.lo >= r.est || r.hi <= r.est {
		t.Errorf("interval %s, half width %.4f", r, h)
	}
	if n := r.roundsFor(0.025); n < 4 || n > 6 {
		t.Errorf("rounds for ±2.5%%: %d, want 4 to 6 at this spread", n)
	}
	if one := pairedRatio(num[:1], den[:1]); one.String() != "1.02 [one round]" {
		t.Errorf("one round: %q", one.String())
	}
	if none := pairedRatio(nil, den); none.String() != "–" {
		t.Errorf("no rounds: %q", none.String())
	}
}
