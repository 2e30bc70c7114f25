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

func total(s sample) time.Duration       { return s.add + s.del }
func cpuOfSample(s sample) time.Duration { return s.cpu }
func addOf(s sample) time.Duration       { return s.add }
func delOf(s sample) time.Duration       { return s.del }

// row is one line of the table: medians of ADD+DEL per cycle.
type row struct {
	vfs, pfs            int
	plugin, floor, hd   stat
	vsFloor, vsHD       ratio
	rssKiB              int64
	pluginAdd, pluginDl stat
	floorAdd, floorDel  stat
	hdAdd, hdDel        stat
	pluginCPU, floorCPU stat
	n, nHD              int
}

// label names the row: its VF count, and the node's PFs when there are
// several.
func (r row) label() string {
	if r.pfs > 1 {
		return fmt.Sprintf("%d (node of %d PFs)", r.vfs, r.pfs)
	}
	return fmt.Sprint(r.vfs)
}

func rows(res *results) []row {
	var out []row
	for _, p := range res.points {
		pl, fl, hd := p.samples["plugin"], p.samples["floor"], p.samples["host-device"]
		r := row{vfs: p.vfs, pfs: max(p.pfs, 1), n: len(pl), nHD: len(hd),
			plugin: statOf(pick(pl, total)), floor: statOf(pick(fl, total)), hd: statOf(pick(hd, total)),
			pluginAdd: statOf(pick(pl, addOf)), pluginDl: statOf(pick(pl, delOf)),
			floorAdd: statOf(pick(fl, addOf)), floorDel: statOf(pick(fl, delOf)),
			hdAdd: statOf(pick(hd, addOf)), hdDel: statOf(pick(hd, delOf)),
			pluginCPU: statOf(pick(pl, cpuOfSample)), floorCPU: statOf(pick(fl, cpuOfSample)),
			vsFloor: pairedRatio(pl, fl), vsHD: pairedRatio(hd, pl)}
		for _, s := range pl {
			r.rssKiB = max(r.rssKiB, s.rss)
		}
		out = append(out, r)
	}
	return out
}

// singlePF is the rows of one PF alone on the node, the VF-count series.
func singlePF(rs []row) []row {
	var out []row
	for _, r := range rs {
		if r.pfs <= 1 {
			out = append(out, r)
		}
	}
	return out
}

// ratio is num/den of ADD+DEL, paired by round: sample i of both methods
// is from round i, so the machine's drift between rounds cancels. est is
// the geometric mean of the per-round ratios, lo and hi its 95% interval
// (Student's t on the logarithms), sd the standard deviation of the log
// ratios (≈ the relative spread of one round's ratio), n the rounds.
type ratio struct {
	est, lo, hi, sd float64
	n               int
}

func pairedRatio(num, den []sample) ratio {
	n := min(len(num), len(den))
	var logs []float64
	for i := range n {
		a, b := total(num[i]), total(den[i])
		if a > 0 && b > 0 {
			logs = append(logs, math.Log(float64(a)/float64(b)))
		}
	}
	if len(logs) == 0 {
		return ratio{}
	}
	var mean, ss float64
	for _, l := range logs {
		mean += l
	}
	mean /= float64(len(logs))
	for _, l := range logs {
		ss += (l - mean) * (l - mean)
	}
	r := ratio{est: math.Exp(mean), n: len(logs)}
	if r.n < 2 {
		return r
	}
	r.sd = math.Sqrt(ss / float64(r.n-1))
	h := t975(r.n-1) * r.sd / math.Sqrt(float64(r.n))
	r.lo, r.hi = math.Exp(mean-h), math.Exp(mean+h)
	return r
}

// halfWidth is the interval's half width relative to the estimate (0.025
// is ±2.5%), or +Inf without an interval.
func (r ratio) halfWidth() float64 {
	if r.n < 2 {
		return math.Inf(1)
	}
	return (r.hi - r.lo) / 2 / r.est
}

// roundsFor is the fewest rounds that would give an interval of ±rel at
// this spread: where a 5% difference (±2.5%) stands above the noise.
func (r ratio) roundsFor(rel float64) int {
	if r.n < 2 {
		return 0
	}
	for n := 2; ; n++ {
		if t975(n-1)*r.sd/math.Sqrt(float64(n)) <= math.Log1p(rel) || n >= 1000 {
			return n
		}
	}
}

// String is "1.04 [1.02–1.06]", or the estimate alone from one round.
func (r ratio) String() string {
	switch {
	case r.n == 0:
		return "–"
	case r.n == 1:
		return fmt.Sprintf("%.2f [one round]", r.est)
	}
	return fmt.Sprintf("%.2f [%.2f–%.2f]", r.est, r.lo, r.hi)
}

// short is the ratio for the summary line, with its interval when there
// is one: "1.031[1.012-1.050]" (no spaces: the line is key=value).
func (r ratio) short(digits int) string {
	if r.n < 2 {
		return fmt.Sprintf("%.*f", digits, r.est)
	}
	return fmt.Sprintf("%.*f[%.*f-%.*f]", digits, r.est, digits, r.lo, digits, r.hi)
}

// t975 is the 97.5% quantile of Student's t with df degrees of freedom.
func t975(df int) float64 {
	table := []float64{12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
		2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
		2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042}
	switch {
	case df < 1:
		return math.Inf(1)
	case df <= len(table):
		return table[df-1]
	case df <= 60:
		return 2.000
	case df <= 120:
		return 1.980
	}
	return 1.960
}

// table writes the main table, in Markdown so that the terminal and
// docs/bench.md show the same thing.
func table(w io.Writer, rs []row) {
	fmt.Fprintln(w, "| VFs | plugin ms | floor ms | host-device ms | plugin/floor [95%] | host-device/plugin [95%] | plugin peak RSS |")
	fmt.Fprintln(w, "|----:|----------:|---------:|---------------:|-------------------:|-------------------------:|----------------:|")
	for _, r := range rs {
		hd := "–"
		if r.nHD > 0 {
			hd = fmt.Sprintf("%.1f", r.hd.med)
		}
		fmt.Fprintf(w, "| %s | %.1f | %.1f | %s | %s | %s | %.1f MiB |\n",
			r.label(), r.plugin.med, r.floor.med, hd, r.vsFloor, r.vsHD, float64(r.rssKiB)/1024)
	}
}

// noise writes, per row, the spread of the paired ratios and how many
// rounds an interval of ±2.5% needs at that spread: the check that the
// run's rounds were enough to see a 5% difference.
func noise(w io.Writer, rs []row) {
	fmt.Fprintln(w, "| VFs | rounds (host-device) | spread of plugin/floor per round | its 95% interval | rounds for ±2.5% | spread of host-device/plugin | its 95% interval |")
	fmt.Fprintln(w, "|----:|---:|---:|---:|---:|---:|---:|")
	pct := func(r ratio, f float64) string {
		if r.n < 2 {
			return "–"
		}
		return fmt.Sprintf("%.1f%%", 100*f)
	}
	for _, r := range rs {
		fmt.Fprintf(w, "| %s | %d (%d) | %s | ±%s | %d | %s | ±%s |\n", r.label(), r.n, r.nHD,
			pct(r.vsFloor, r.vsFloor.sd), pct(r.vsFloor, r.vsFloor.halfWidth()), r.vsFloor.roundsFor(0.025),
			pct(r.vsHD, r.vsHD.sd), pct(r.vsHD, r.vsHD.halfWidth()))
	}
}

// detail writes ADD and DEL apart, with their spread.
func detail(w io.Writer, rs []row) {
	fmt.Fprintln(w, "| VFs | runs (host-device) | plugin ADD | plugin DEL | floor ADD | floor DEL | host-device ADD | host-device DEL | plugin CPU, ADD+DEL | floor CPU, ADD+DEL |")
	fmt.Fprintln(w, "|----:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rs {
		fmt.Fprintf(w, "| %s | %d (%d) | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.label(), r.n, r.nHD,
			r.pluginAdd, r.pluginDl, r.floorAdd, r.floorDel, r.hdAdd, r.hdDel, r.pluginCPU, r.floorCPU)
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
			fmt.Fprintf(w, "%s, %d VFs, %d PFs: ADD+DEL %.1f ms (ADD %s, DEL %s); plugin %.1f ms; %s/plugin %s; CPU %s ms, plugin's %s ms\n",
				name, p.vfs, max(p.pfs, 1), t.med, statOf(pick(ss, addOf)), statOf(pick(ss, delOf)), pl.med, name, pairedRatio(ss, p.samples["plugin"]),
				statOf(pick(ss, cpuOfSample)), statOf(pick(p.samples["plugin"], cpuOfSample)))
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

// targets writes the verdict on each of issue 6's targets, and on issue
// 20's host target.
func targets(w io.Writer, rs []row) {
	verdict := func(ok bool) string {
		if ok {
			return "holds"
		}
		return "MISSED"
	}
	all := rs
	rs = singlePF(rs)
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
			fmt.Fprintf(w, "- plugin/floor ≤ 1.3 at 128 VFs: %s: %s\n", r.vsFloor, verdict(r.vsFloor.est <= 1.3))
			if r.nHD > 0 {
				fmt.Fprintf(w, "- host-device/plugin ≥ 5 at 128 VFs: %s: %s\n", r.vsHD, verdict(r.vsHD.est >= 5))
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
	if len(rs) > 1 {
		fmt.Fprintf(w, "- cost linear in VFs: plugin ADD+DEL ≈ %.1f ms + %.1f ms/VF (R² %.4f; floor %.1f ms + %.1f ms/VF); ms per added VF %s: %s\n",
			f.a, f.b, f.r2, fl.a, fl.b, strings.Join(steps, ", "), verdict(f.r2 >= 0.99))
	}
	// Issue 20: at 256 VFs, within 5% of the floor. The interval says
	// whether the run can tell.
	for _, r := range all {
		if r.vfs != 256 || r.vsFloor.n == 0 {
			continue
		}
		v := verdict(r.vsFloor.est <= 1.05)
		switch {
		case r.vsFloor.n >= 2 && r.vsFloor.hi <= 1.05:
			v = "holds, the whole interval below 1.05"
		case r.vsFloor.n >= 2 && r.vsFloor.lo > 1.05:
			v = "MISSED, the whole interval above 1.05"
		case r.vsFloor.n >= 2:
			v += ", but the interval straddles 1.05"
		}
		fmt.Fprintf(w, "- issue 20, host: plugin/floor ≤ 1.05 at %s VFs: %s: %s\n", r.label(), r.vsFloor, v)
	}
}

func report(w io.Writer, res *results) {
	rs := rows(res)
	fmt.Fprintf(w, "\nADD+DEL per cycle, median over the runs; ratios paired by round, geometric mean [95%% interval] (kernel %s, %d CPUs):\n\n", res.kernel, res.cpus)
	table(w, rs)
	fmt.Fprintln(w, "\nADD and DEL apart, and CPU time (user+system: the plugin process's, the floor's thread's), ms, median [interquartile range]:")
	fmt.Fprintln(w)
	detail(w, rs)
	fmt.Fprintln(w, "\nNoise: spread of the per-round ratios (sd of their logs) and the rounds it takes for ±2.5%:")
	fmt.Fprintln(w)
	noise(w, rs)
	extras(w, res)
	fmt.Fprintf(w, "plugin process start (exec to exit of a VERSION call): %s ms\n", statOf(res.start))
	agentLine(w, res)
	fmt.Fprintln(w, "\nTargets (issues 6 and 20):")
	targets(w, rs)
	fmt.Fprintln(w)
}

// agentLine writes the node agent's cost per event, and issue 20's target
// for it, when the run measured it.
func agentLine(w io.Writer, res *results) {
	for _, p := range res.points {
		if len(p.agent) == 0 {
			continue
		}
		st := statOf(p.agent)
		fmt.Fprintf(w, "Node agent, %d PFs x %d VFs: netlink event (an address on a PF, on or off) to the device plugin's Update showing it: %s ms over %d events (issue 20: ≤ 100 ms: %s).\n",
			p.pfs, p.vfs, st, len(p.agent), map[bool]string{true: "holds", false: "MISSED"}[st.med <= 100])
	}
}

// summary is the line `make bench` prints for one VF count of a single
// PF; nodeSummary the one for the node of several PFs.
func summary(res *results, vfs int) string {
	for _, r := range rows(res) {
		if r.vfs == vfs && r.pfs <= 1 {
			return fmt.Sprintf("bench: vfs=%d plugin_ms=%.1f floor_ms=%.1f hostdevice_ms=%.1f vs_floor=%.2f vs_hostdevice=%.1f",
				r.vfs, r.plugin.med, r.floor.med, r.hd.med, r.vsFloor.est, r.vsHD.est)
		}
	}
	return fmt.Sprintf("bench: vfs=%d not measured", vfs)
}

func nodeSummary(res *results) string {
	for _, r := range rows(res) {
		if r.pfs > 1 {
			agent := ""
			for _, p := range res.points {
				if p.pfs == r.pfs && len(p.agent) > 0 {
					agent = fmt.Sprintf(" agent_event_ms=%.1f", statOf(p.agent).med)
				}
			}
			return fmt.Sprintf("bench: node=%dx%d rounds=%d plugin_ms=%.1f floor_ms=%.1f hostdevice_ms=%.1f vs_floor=%s vs_hostdevice=%s%s",
				r.pfs, r.vfs, r.n, r.plugin.med, r.floor.med, r.hd.med, r.vsFloor.short(3), r.vsHD.short(2), agent)
		}
	}
	return ""
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
	VFs int `json:"vfs"`
	// PFs is the node's PFs, one PF handed out; absent for 1.
	PFs int `json:"pfs,omitempty"`
	// AgentMs is the node agent's time per event (agentEvents).
	AgentMs []float64              `json:"agentMs,omitempty"`
	Samples map[string][]rawSample `json:"samples"`
}

type rawSample struct {
	AddMs  float64 `json:"addMs"`
	DelMs  float64 `json:"delMs"`
	RSSKiB int64   `json:"rssKiB,omitempty"`
	// CPUMs is the CPU time of ADD and DEL (user and system).
	CPUMs float64 `json:"cpuMs,omitempty"`
}

func toRaw(res *results) rawRun {
	r := rawRun{When: res.when, Kernel: res.kernel, CPUs: res.cpus}
	for _, d := range res.start {
		r.StartMs = append(r.StartMs, ms(d))
	}
	for _, p := range res.points {
		rp := rawPoint{VFs: p.vfs, Samples: map[string][]rawSample{}}
		if p.pfs > 1 {
			rp.PFs = p.pfs
		}
		for _, d := range p.agent {
			rp.AgentMs = append(rp.AgentMs, ms(d))
		}
		for m, ss := range p.samples {
			for _, s := range ss {
				rp.Samples[m] = append(rp.Samples[m], rawSample{AddMs: ms(s.add), DelMs: ms(s.del), RSSKiB: s.rss, CPUMs: ms(s.cpu)})
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
		p := point{vfs: rp.VFs, pfs: max(rp.PFs, 1), samples: map[string][]sample{}}
		for _, v := range rp.AgentMs {
			p.agent = append(p.agent, fromMs(v))
		}
		for m, ss := range rp.Samples {
			for _, s := range ss {
				p.samples[m] = append(p.samples[m], sample{add: fromMs(s.AddMs), del: fromMs(s.DelMs), rss: s.RSSKiB, cpu: fromMs(s.CPUMs)})
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
	all := rs
	rs = singlePF(rs)
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
		// The node of several PFs: the same glyph, hollow, no line.
		var node plotter.XYs
		for _, r := range all {
			if v := s.f(r).med; v > 0 && r.pfs > 1 {
				node = append(node, plotter.XY{X: float64(r.vfs), Y: v})
			}
		}
		if len(node) > 0 {
			sc, err := plotter.NewScatter(node)
			if err != nil {
				return err
			}
			sc.Color, sc.Shape, sc.Radius = s.color, draw.RingGlyph{}, vg.Points(5)
			p.Add(sc)
			p.Legend.Add(fmt.Sprintf("%s, one PF of a node of %d", s.name, all[len(all)-1].pfs), sc)
		}
	}
	// Room right of the last point: the node's rings sit on the edge.
	for _, r := range all {
		p.X.Max = max(p.X.Max, math.Ceil(1.06*float64(r.vfs)/10)*10)
	}
	var ticks plot.ConstantTicks
	for x := 0.0; x <= p.X.Max; x += 50 {
		ticks = append(ticks, plot.Tick{Value: x, Label: fmt.Sprint(x)})
	}
	p.X.Tick.Marker = ticks
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
	fmt.Fprintln(w, "## ADD+DEL per cycle (medians; ratios paired by round, geometric mean [95% interval])")
	fmt.Fprintln(w)
	table(w, rs)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## ADD and DEL apart, and CPU time, ms: median [interquartile range]")
	fmt.Fprintln(w)
	detail(w, rs)
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Plugin process start alone (exec to exit of a VERSION call): %s ms.\n\n", statOf(res.start))
	agentLine(w, res)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## Noise: the spread of the per-round ratios and the rounds it takes")
	fmt.Fprintln(w)
	noise(w, rs)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## Targets (issues 6 and 20)")
	fmt.Fprintln(w)
	targets(w, rs)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "```")
	if s := nodeSummary(res); s != "" {
		fmt.Fprintln(w, s)
	}
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
  device host -> transit -> pod and back the same way: 4 moves per device
  per cycle. Now every device, the PF included, goes straight to the pod
  and straight home, 2 moves per device per cycle, the minimum; the PF is
  renamed to CNI_IFNAME in the pod and back there on DEL. Only a device
  whose name is taken where it goes passes through a transit netns. The
  floor does the same.
- **The rest is small.** A fresh plugin process costs ~4 ms to exec and
  start (Go runtime, 7 MB static binary); the state record is written
  twice per ADD and once per DEL with fsync (a few ms on this disk, see
  BenchmarkStoreSaveGet); discovery of a PF with 256 VFs takes ~15 ms on
  the fake sysfs (BenchmarkSysfsPF), most of it filepath.EvalSymlinks per
  virtfn link; one readlink per link would cut it to ~4 ms.
- **On a node of many PFs** (8 x 256 VFs, 2056 host links) two costs grew
  with the node, not the PF, and are gone: the PF policy indexed every host
  link again for the PF and each of its VFs (quadratic: 0.3-0.6 s of CPU
  per ADD, BenchmarkPolicyJudge, and about 1.5 s per agent event, as the
  agent judges all 8 PFs), and an unpinned ADD read the VFs of every PF in
  sysfs before choosing the first (about 4000 reads for the 7 PFs it does
  not take). What is left above the floor is mostly CPU: the plugin
  process spends about 1 s of CPU per cycle against the floor's 0.3 s.
  Most of it is the Go runtime handing its P off around each ~20 ms
  blocking netns move (futex and nanosleep dominate strace -f -c) and
  whole-netns link dumps (ByPCI on the host: DEL dumps all 2057 links
  twice, and on this fake sysfs looks each untagged link up in sysfs,
  which a real kernel of 5.14 or later answers in the dump itself).
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
    make bench BENCH_FLAGS='-vfs "" -node-runs 2 -host-device "" -out "" -inproc -cpuprofile /tmp/node.prof'   # the node, plugin in process
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

The 256-VF point is a node: 8 PFs of 256 VFs each (-node 8x256), all 2056
links in the host netns and all 8 PFs in the fake sysfs, and one PF, the
first, handed out. Link dumps and sysfs scans that grow with the node show
there. On that node the bench also runs the node agent (pkg/agent, in
process, on the world's host netns and sysfs, no resync) and times
netlink events: a global address put on the last PF (it becomes an uplink
and leaves the device list) or taken off, to the device plugin's Update
with the list that shows it, which is what wakes the kubelet's
ListAndWatch. That includes the agent's 20 ms wait for a burst to settle.

- **plugin**: one exec of bin/sriov-passthrough-cni for ADD and one for DEL,
  with the CNI env and the config on stdin, as a runtime does. Wall time from
  fork to exit; peak RSS and CPU time (user+system) from the child's rusage.
- **host-device**: containernetworking/plugins v1.10.0 host-device, one exec
  per device for ADD (the PF as net1, each VF under its own name) and one per
  device for DEL: what a user would script without this plugin.
- **floor**: in-process Go doing only the kernel work the plugin does: one
  link dump and one move per device straight to the other side; the PF is
  renamed in the pod (net1 after its move on ADD; set down and renamed back
  before its move on DEL) and set up there on ADD. No process start, no
  config, no sysfs, no state files, no tags. That is the least the kernel
  can be asked to do without renaming on the host. Its CPU time is its
  thread's.

ADD+DEL of one cycle is the unit. Sample i of every method is from round
i, so a ratio is taken per round (the machine's drift between rounds
cancels) and the table gives the geometric mean of the per-round ratios
with its 95% interval (Student's t on their logarithms). The noise table
gives the spread of one round's ratio and the rounds an interval of ±2.5%
would need at that spread: whether the run could tell a 5% difference.
Most of the wall time is the kernel's netns moves asleep in an RCU barrier,
and that is where the noise of a shared machine lands; CPU time hardly
depends on it, so the CPU columns show the plugin's own work more steadily.
The state directory is on the machine's disk, as /var/lib/cni is on a node.

Reproduce (as root; about six minutes on 2 shared cores):

    sudo make bench

It writes docs/bench.md (this page; the part written by hand is kept),
docs/bench.png and docs/bench.json; its last two lines are
` + "`bench: node=8x256 rounds=... plugin_ms=... floor_ms=... hostdevice_ms=... vs_floor=...[lo-hi] vs_hostdevice=...[lo-hi] agent_event_ms=...`" + `
and ` + "`bench: vfs=128 plugin_ms=... floor_ms=... hostdevice_ms=... vs_floor=... vs_hostdevice=...`" + `.
` + "`_output/bench/bench -h`" + ` (built by make bench) lists the knobs (VF counts, runs per count,
the node and its rounds, agent events); ` + "`make bench BENCH_FLAGS='...'`" + ` passes flags to it.
An interrupted run (SIGINT, SIGTERM, SIGHUP) removes its netns and files before it exits.
`
