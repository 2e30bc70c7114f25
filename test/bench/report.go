package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// stat is the median and interquartile range of a set of durations, in ms.
type stat struct{ med, lo, hi float64 }

func statOf(ds []time.Duration) stat {
	if len(ds) == 0 {
		return stat{}
	}
	ms := make([]float64, len(ds))
	for i, d := range ds {
		ms[i] = float64(d) / float64(time.Millisecond)
	}
	slices.Sort(ms)
	return stat{med: quantile(ms, 0.5), lo: quantile(ms, 0.25), hi: quantile(ms, 0.75)}
}

// quantile of sorted xs, linear between neighbours.
func quantile(xs []float64, q float64) float64 {
	pos := q * float64(len(xs)-1)
	i := int(pos)
	if i+1 >= len(xs) {
		return xs[len(xs)-1]
	}
	return xs[i] + (pos-float64(i))*(xs[i+1]-xs[i])
}

func (s stat) String() string { return fmt.Sprintf("%.1f [%.1f–%.1f]", s.med, s.lo, s.hi) }

// pick selects one duration of each sample.
func pick(ss []sample, f func(sample) time.Duration) []time.Duration {
	out := make([]time.Duration, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}

func total(s sample) time.Duration { return s.add + s.del }
func addOf(s sample) time.Duration { return s.add }
func delOf(s sample) time.Duration { return s.del }

// row is one line of the table: medians of ADD+DEL per cycle.
type row struct {
	vfs                 int
	plugin, floor, hd   stat
	vsFloor, vsHD       float64
	rssKiB              int64
	pluginAdd, pluginDl stat
	floorAdd, floorDel  stat
	hdAdd, hdDel        stat
	n, nHD              int
}

func rows(res *results) []row {
	var out []row
	for _, p := range res.points {
		pl, fl, hd := p.samples["plugin"], p.samples["floor"], p.samples["host-device"]
		r := row{vfs: p.vfs, n: len(pl), nHD: len(hd),
			plugin: statOf(pick(pl, total)), floor: statOf(pick(fl, total)), hd: statOf(pick(hd, total)),
			pluginAdd: statOf(pick(pl, addOf)), pluginDl: statOf(pick(pl, delOf)),
			floorAdd: statOf(pick(fl, addOf)), floorDel: statOf(pick(fl, delOf)),
			hdAdd: statOf(pick(hd, addOf)), hdDel: statOf(pick(hd, delOf))}
		for _, s := range pl {
			r.rssKiB = max(r.rssKiB, s.rss)
		}
		if r.floor.med > 0 {
			r.vsFloor = r.plugin.med / r.floor.med
		}
		if r.plugin.med > 0 {
			r.vsHD = r.hd.med / r.plugin.med
		}
		out = append(out, r)
	}
	return out
}

// table writes the main table, in Markdown so that the terminal and
// docs/bench.md show the same thing.
func table(w io.Writer, rs []row) {
	fmt.Fprintln(w, "| VFs | plugin ms | floor ms | host-device ms | plugin/floor | host-device/plugin | plugin peak RSS |")
	fmt.Fprintln(w, "|----:|----------:|---------:|---------------:|-------------:|-------------------:|----------------:|")
	for _, r := range rs {
		hd, vsHD := "–", "–"
		if r.nHD > 0 {
			hd, vsHD = fmt.Sprintf("%.1f", r.hd.med), fmt.Sprintf("%.1f", r.vsHD)
		}
		fmt.Fprintf(w, "| %d | %.1f | %.1f | %s | %.2f | %s | %.1f MiB |\n",
			r.vfs, r.plugin.med, r.floor.med, hd, r.vsFloor, vsHD, float64(r.rssKiB)/1024)
	}
}

// detail writes ADD and DEL apart, with their spread.
func detail(w io.Writer, rs []row) {
	fmt.Fprintln(w, "| VFs | runs (host-device) | plugin ADD | plugin DEL | floor ADD | floor DEL | host-device ADD | host-device DEL |")
	fmt.Fprintln(w, "|----:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rs {
		fmt.Fprintf(w, "| %d | %d (%d) | %s | %s | %s | %s | %s | %s |\n", r.vfs, r.n, r.nHD,
			r.pluginAdd, r.pluginDl, r.floorAdd, r.floorDel, r.hdAdd, r.hdDel)
	}
}

// extras writes the optional methods (-compare, -inproc), ADD+DEL medians
// and their ratio to the plugin's in the same run.
func extras(w io.Writer, res *results) {
	for _, name := range []string{"plugin-compare", "floor-transit", "plugin-inproc"} {
		for _, p := range res.points {
			ss := p.samples[name]
			if len(ss) == 0 {
				continue
			}
			t, pl := statOf(pick(ss, total)), statOf(pick(p.samples["plugin"], total))
			fmt.Fprintf(w, "%s, %d VFs: ADD+DEL %.1f ms (ADD %s, DEL %s); plugin %.1f ms; %s/plugin %.2f\n",
				name, p.vfs, t.med, statOf(pick(ss, addOf)), statOf(pick(ss, delOf)), pl.med, name, t.med/pl.med)
		}
	}
}

// fit is a least-squares line through the plugin's medians: ms = a + b*VFs.
type fit struct{ a, b, r2 float64 }

func linear(rs []row, f func(row) float64) fit {
	var n, sx, sy, sxx, sxy float64
	for _, r := range rs {
		x, y := float64(r.vfs), f(r)
		n, sx, sy, sxx, sxy = n+1, sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	d := n*sxx - sx*sx
	if n < 2 || d == 0 {
		return fit{}
	}
	b := (n*sxy - sx*sy) / d
	a := (sy - b*sx) / n
	var ssr, sst float64
	for _, r := range rs {
		x, y := float64(r.vfs), f(r)
		e := y - (a + b*x)
		ssr += e * e
		sst += (y - sy/n) * (y - sy/n)
	}
	r2 := 1.0
	if sst > 0 {
		r2 = 1 - ssr/sst
	}
	return fit{a: a, b: b, r2: r2}
}

// targets writes the verdict on each of issue 6's targets.
func targets(w io.Writer, rs []row) {
	verdict := func(ok bool) string {
		if ok {
			return "holds"
		}
		return "MISSED"
	}
	for _, r := range rs {
		switch r.vfs {
		case 0:
			// The kernel alone needs two netns moves per call here (PF to
			// transit and on), so the plugin's own share is what it costs
			// above the floor.
			overAdd, overDel := r.pluginAdd.med-r.floorAdd.med, r.pluginDl.med-r.floorDel.med
			fmt.Fprintf(w, "- fixed per-call overhead (0 VFs) ≤ 5 ms, read as the plugin's cost above the floor: ADD %+.1f ms, DEL %+.1f ms: %s\n",
				overAdd, overDel, verdict(max(overAdd, overDel) <= 5))
			fmt.Fprintf(w, "  (absolute: ADD %.1f ms, DEL %.1f ms, of which the floor, the kernel's moves, is %.1f and %.1f ms: %s read absolutely)\n",
				r.pluginAdd.med, r.pluginDl.med, r.floorAdd.med, r.floorDel.med, verdict(max(r.pluginAdd.med, r.pluginDl.med) <= 5))
		case 128:
			fmt.Fprintf(w, "- plugin/floor ≤ 1.3 at 128 VFs: %.2f: %s\n", r.vsFloor, verdict(r.vsFloor <= 1.3))
			if r.nHD > 0 {
				fmt.Fprintf(w, "- host-device/plugin ≥ 5 at 128 VFs: %.1f: %s\n", r.vsHD, verdict(r.vsHD >= 5))
			}
		}
	}
	f := linear(rs, func(r row) float64 { return r.plugin.med })
	fl := linear(rs, func(r row) float64 { return r.floor.med })
	// Linear: the straight line explains the medians and no point strays
	// more than 15% from it (noise at the small end is a few ms).
	var steps []string
	for i := 1; i < len(rs); i++ {
		if dv := rs[i].vfs - rs[i-1].vfs; dv > 0 {
			steps = append(steps, fmt.Sprintf("%d→%d: %.1f", rs[i-1].vfs, rs[i].vfs, (rs[i].plugin.med-rs[i-1].plugin.med)/float64(dv)))
		}
	}
	fmt.Fprintf(w, "- cost linear in VFs: plugin ADD+DEL ≈ %.1f ms + %.1f ms/VF (R² %.4f; floor %.1f ms + %.1f ms/VF); ms per added VF %s: %s\n",
		f.a, f.b, f.r2, fl.a, fl.b, strings.Join(steps, ", "), verdict(f.r2 >= 0.99))
}

func report(w io.Writer, res *results) {
	rs := rows(res)
	fmt.Fprintf(w, "\nADD+DEL per cycle, median over the runs (kernel %s, %d CPUs):\n\n", res.kernel, res.cpus)
	table(w, rs)
	fmt.Fprintln(w, "\nADD and DEL apart, ms, median [interquartile range]:")
	fmt.Fprintln(w)
	detail(w, rs)
	extras(w, res)
	fmt.Fprintf(w, "plugin process start (exec to exit of a VERSION call): %s ms\n", statOf(res.start))
	fmt.Fprintln(w, "\nTargets (issue 6):")
	targets(w, rs)
	fmt.Fprintln(w)
}

// summary is the last line `make bench` prints.
func summary(res *results, vfs int) string {
	for _, r := range rows(res) {
		if r.vfs == vfs {
			return fmt.Sprintf("bench: vfs=%d plugin_ms=%.1f floor_ms=%.1f hostdevice_ms=%.1f vs_floor=%.2f vs_hostdevice=%.1f",
				r.vfs, r.plugin.med, r.floor.med, r.hd.med, r.vsFloor, r.vsHD)
		}
	}
	return fmt.Sprintf("bench: vfs=%d not measured", vfs)
}

// keptBegin and keptEnd enclose the part of bench.md a person writes: the
// summary, and bench-vm's numbers, which make bench does not measure.
// writeDocs keeps it from the bench.md it replaces.
const (
	keptBegin = "<!-- written by hand: make bench keeps this part -->"
	keptEnd   = "<!-- end of the part written by hand -->"
)

// keptPart returns the hand-written part of an earlier bench.md, markers
// included, or "" when it has none.
func keptPart(old string) string {
	i := strings.Index(old, keptBegin)
	j := strings.Index(old, keptEnd)
	if i < 0 || j < i {
		return ""
	}
	return old[i : j+len(keptEnd)]
}

// writeDocs writes bench.md and bench.png into dir, keeping the
// hand-written part of the bench.md there.
func writeDocs(dir string, res *results) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := plotPNG(filepath.Join(dir, "bench.png"), rows(res)); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	old, err := os.ReadFile(filepath.Join(dir, "bench.md"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var b bytes.Buffer
	writeMarkdown(&b, res, keptPart(string(old)))
	if err := os.WriteFile(filepath.Join(dir, "bench.md"), b.Bytes(), 0o644); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(toRaw(res), "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "bench.json"), append(raw, '\n'), 0o644)
}

// rawRun is bench.json: every sample of a run, in ms, so the table and the
// plot can be made again (-replot) or checked by hand.
type rawRun struct {
	When   time.Time `json:"when"`
	Kernel string    `json:"kernel"`
	CPUs   int       `json:"cpus"`
	// StartMs is the plugin's bare process start, per VERSION call.
	StartMs []float64  `json:"startMs"`
	Points  []rawPoint `json:"points"`
}

type rawPoint struct {
	VFs     int                    `json:"vfs"`
	Samples map[string][]rawSample `json:"samples"`
}

type rawSample struct {
	AddMs  float64 `json:"addMs"`
	DelMs  float64 `json:"delMs"`
	RSSKiB int64   `json:"rssKiB,omitempty"`
}

func toRaw(res *results) rawRun {
	r := rawRun{When: res.when, Kernel: res.kernel, CPUs: res.cpus}
	for _, d := range res.start {
		r.StartMs = append(r.StartMs, ms(d))
	}
	for _, p := range res.points {
		rp := rawPoint{VFs: p.vfs, Samples: map[string][]rawSample{}}
		for m, ss := range p.samples {
			for _, s := range ss {
				rp.Samples[m] = append(rp.Samples[m], rawSample{AddMs: ms(s.add), DelMs: ms(s.del), RSSKiB: s.rss})
			}
		}
		r.Points = append(r.Points, rp)
	}
	return r
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func load(path string) (*results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r rawRun
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	res := &results{when: r.When, kernel: r.Kernel, cpus: r.CPUs}
	for _, v := range r.StartMs {
		res.start = append(res.start, fromMs(v))
	}
	for _, rp := range r.Points {
		p := point{vfs: rp.VFs, samples: map[string][]sample{}}
		for m, ss := range rp.Samples {
			for _, s := range ss {
				p.samples[m] = append(p.samples[m], sample{add: fromMs(s.AddMs), del: fromMs(s.DelMs), rss: s.RSSKiB})
			}
		}
		res.points = append(res.points, p)
	}
	return res, nil
}

func fromMs(v float64) time.Duration { return time.Duration(math.Round(v * float64(time.Millisecond))) }

// plotPNG draws time against VF count on linear axes: a straight line is
// the claim to check.
func plotPNG(path string, rs []row) error {
	p := plot.New()
	p.Title.Text = "ADD+DEL of one PF and its VFs (median per cycle)"
	p.X.Label.Text = "VFs on the PF"
	p.Y.Label.Text = "ms"
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	series := []struct {
		name  string
		f     func(row) stat
		color color.RGBA
		shape draw.GlyphDrawer
	}{
		{"host-device, one exec per device", func(r row) stat { return r.hd }, color.RGBA{R: 200, G: 60, B: 40, A: 255}, draw.TriangleGlyph{}},
		{"sriov-passthrough-cni", func(r row) stat { return r.plugin }, color.RGBA{R: 30, G: 90, B: 200, A: 255}, draw.CircleGlyph{}},
		{"floor: netlink moves and renames only", func(r row) stat { return r.floor }, color.RGBA{R: 60, G: 150, B: 60, A: 255}, draw.SquareGlyph{}},
	}
	for _, s := range series {
		var xys plotter.XYs
		for _, r := range rs {
			if v := s.f(r).med; v > 0 {
				xys = append(xys, plotter.XY{X: float64(r.vfs), Y: v})
			}
		}
		if len(xys) == 0 {
			continue
		}
		l, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		l.Color, pts.Color, pts.Shape = s.color, s.color, s.shape
		l.Width = vg.Points(1.5)
		p.Add(l, pts)
		p.Legend.Add(s.name, l, pts)
	}
	p.Legend.Top, p.Legend.Left = true, true
	return p.Save(7*vg.Inch, 4.5*vg.Inch, path)
}

func writeMarkdown(w io.Writer, res *results, kept string) {
	rs := rows(res)
	fmt.Fprintln(w, "# Benchmark: ADD+DEL against VF count")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Written by `make bench` (test/bench); rerun it to refresh this file and bench.png.")
	fmt.Fprintf(w, "Measured %s on kernel %s, %d CPUs.\n", res.when.Format("2006-01-02 15:04 UTC"), res.kernel, res.cpus)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "![ADD+DEL time against VF count](bench.png)")
	fmt.Fprintln(w)
	if kept != "" {
		fmt.Fprintln(w, kept)
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, strings.TrimSpace(methodText))
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## ADD+DEL per cycle (medians)")
	fmt.Fprintln(w)
	table(w, rs)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## ADD and DEL apart, ms: median [interquartile range]")
	fmt.Fprintln(w)
	detail(w, rs)
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Plugin process start alone (exec to exit of a VERSION call): %s ms.\n\n", statOf(res.start))
	fmt.Fprintln(w, "## Targets (issue 6)")
	fmt.Fprintln(w)
	targets(w, rs)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "```")
	fmt.Fprintln(w, summary(res, 128))
	fmt.Fprintln(w, "```")
	fmt.Fprintln(w)
	fmt.Fprintln(w, strings.TrimSpace(whereText))
}

// whereText is the profile behind the numbers, taken by hand (perf, strace)
// when the bench was written; rerun those commands to check it still holds.
const whereText = `
## Where the time goes

- **The kernel's netns move.** Each move of a netdev to another netns costs
  about 20 ms here (6.18 kernel, 2 vCPUs under Firecracker), almost all of
  it asleep in rcu_barrier() inside __dev_change_net_namespace, with the
  RTNL held (perf record -e sched:sched_switch -g: 19.1 ms in
  wait_for_completion < rcu_barrier < __dev_change_net_namespace for one
  move; the two synchronize_rcu_expedited() calls take 0.05 ms each).
  A rename, a link set up or an altname is about 1 ms through ip(8), and a
  link dump of 257 links well under that. So the cost of ADD+DEL is the
  number of moves times ~20 ms, and moves serialise on the RTNL: no
  parallelism helps.
- **The plugin's levers are the moves.** The plugin used to send every
  device host -> transit -> pod and back the same way: 4 moves per VF per
  cycle. Devices that keep their name (every VF, as a rule) need no rename,
  so no transit: they now go straight to the pod and straight home, 2 moves
  per VF per cycle, the minimum. Only the PF (renamed to CNI_IFNAME) and a
  VF whose name the pod has go through transit. The floor does the same.
- **The rest is small.** A fresh plugin process costs ~4 ms to exec and
  start (Go runtime, 7 MB static binary); the state record is written
  twice per ADD and once per DEL with fsync (a few ms on this disk, see
  BenchmarkStoreSaveGet); discovery of a PF with 256 VFs takes ~15 ms on
  the fake sysfs (BenchmarkSysfsPF), most of it filepath.EvalSymlinks per
  virtfn link; one readlink per link would cut it to ~4 ms.
- **host-device** pays the same ~20 ms moves, twice as many of them (it
  sends every device through a temporary netns: 4 moves per device per
  cycle), plus one process per device per command (~10-15 ms each with its
  temporary netns, see its 0-VF row). Against the plugin's 2 moves per VF,
  host-device/plugin is about 2 + (its per-call cost / the cost of a move)
  ≈ 3 on this machine, whatever the plugin does; ≥ 5 needs a kernel whose
  netns move costs well under a third of a process start, as on machines
  where the RCU barrier is short.

Profile it yourself:

    make bench BENCH_FLAGS='-vfs 8 -runs 1 -host-device "" -out "" -wrap "strace -f -c -o /tmp/plugin.strace"'
    make bench BENCH_FLAGS='-vfs 0,8 -runs 9 -host-device "" -out "" -inproc'   # plugin without exec
    make bench BENCH_FLAGS='-vfs 32 -runs 5 -host-device "" -out "" -compare old-build/sriov-passthrough-cni'
    go -C test/bench test -run XXX -bench . -cpuprofile /tmp/cpu.out
`

const methodText = `
## What is measured

For each VF count the bench makes a throwaway "host" netns with one PF and
its VFs as ifb links, and a fake sysfs tree that describes them (as the
kernel tests do). Then, in rounds, each method hands all the devices to a
fresh pod netns and takes them back; the order of the methods rotates from
round to round, and every cycle is checked (all devices in the pod after
ADD, all back on the host under their names after DEL). Only ADD and DEL
are timed.

- **plugin**: one exec of bin/sriov-passthrough-cni for ADD and one for DEL,
  with the CNI env and the config on stdin, as a runtime does. Wall time from
  fork to exit; peak RSS from the child's rusage.
- **host-device**: containernetworking/plugins v1.10.0 host-device, one exec
  per device for ADD (the PF as net1, each VF under its own name) and one per
  device for DEL: what a user would script without this plugin.
- **floor**: in-process Go doing only the kernel work the plugin does: one
  link dump, a fresh transit netns, and per device either one move straight
  to the other side (a device that keeps its name: every VF here) or a move
  into transit, the rename there and a move on (the PF, net1 in the pod);
  the PF is set up in the pod. No process start, no config, no sysfs, no
  state files, no tags. That is the least the kernel can be asked to do
  without renaming on the host.

ADD+DEL of one cycle is the unit; ratios are of medians from the same run.
The state directory is on the machine's disk, as /var/lib/cni is on a node.

Reproduce (as root; about three to five minutes on 2 cores):

    sudo make bench

It writes docs/bench.md (this page; the part written by hand is kept),
docs/bench.png and docs/bench.json; its last line is
` + "`bench: vfs=128 plugin_ms=... floor_ms=... hostdevice_ms=... vs_floor=... vs_hostdevice=...`" + `.
` + "`_output/bench/bench -h`" + ` (built by make bench) lists the knobs (VF counts, runs per count);
` + "`make bench BENCH_FLAGS='...'`" + ` passes flags to it.
`
