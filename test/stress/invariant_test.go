//go:build stress

package stress

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// A device is told apart by its MAC, which stays with it through every
// move and rename: the harness needs no help from the plugin's tags or
// from names to find it.
func (w *world) ready() {
	w.t.Helper()
	byName := map[string]netlink.Link{}
	for _, l := range w.links(w.Host) {
		byName[l.Attrs().Name] = l
	}
	for i := range w.devices {
		l, ok := byName[w.devices[i].name]
		if !ok {
			w.t.Fatalf("device %s missing at the start", w.devices[i].name)
		}
		w.devices[i].mac = l.Attrs().HardwareAddr.String()
	}
}

func (w *world) links(n ns.NetNS) []netlink.Link {
	h, err := netlink.NewHandleAt(netnsHandle(n))
	if err != nil {
		w.t.Errorf("netlink in netns: %v", err)
		return nil
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		w.t.Errorf("list links: %v", err)
	}
	return links
}

// location is where the harness found a device.
type location struct {
	place  string // "host" or the pod's netns path
	pod    *pod
	name   string
	tagged bool
}

func (l location) String() string {
	tag := ""
	if l.tagged {
		tag = " (tagged)"
	}
	return fmt.Sprintf("%s as %q%s", l.place, l.name, tag)
}

// survey finds every device of the world, in the host and in every pod
// netns the harness still holds (live or deleted but still referenced).
// Callers hold w.mu or know nothing else runs.
func (w *world) survey() map[string][]location {
	byMAC := map[string]string{}
	for _, d := range w.devices {
		byMAC[d.mac] = d.pci
	}
	out := map[string][]location{}
	look := func(n ns.NetNS, place string, p *pod) {
		for _, l := range w.links(n) {
			pci, ok := byMAC[l.Attrs().HardwareAddr.String()]
			if !ok {
				continue
			}
			tagged := false
			for _, a := range l.Attrs().AltNames {
				tagged = tagged || strings.HasPrefix(a, "sriovpt.")
			}
			out[pci] = append(out[pci], location{place: place, pod: p, name: l.Attrs().Name, tagged: tagged})
		}
	}
	look(w.Host, "host", nil)
	for _, p := range w.pods {
		if !p.closed {
			look(p.ns, p.path, p)
		}
	}
	return out
}

// records reads the state dir; unreadable files are reported as problems.
func (w *world) records() ([]*state.Record, []string) {
	var recs []*state.Record
	var problems []string
	files, _ := filepath.Glob(filepath.Join(w.StateDir, "*.json"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue
		}
		r, err := state.Decode(data)
		if err != nil {
			problems = append(problems, fmt.Sprintf("record %s does not decode: %v", f, err))
			continue
		}
		recs = append(recs, r)
	}
	return recs, problems
}

// verdict is what one check found.
type verdict struct {
	problems       []string
	lost, misnamed int
}

func (v *verdict) add(format string, a ...any) {
	v.problems = append(v.problems, fmt.Sprintf(format, a...))
}

// check tests the invariant. Every device is found exactly once, and
//   - no record claims it: it is home (host netns, original name, untagged);
//   - exactly one record claims it (never two owners), and if that record
//     is attached and its pod is alive, the device is in that pod under the
//     name the record gave it (never half an attachment);
//
// with final, additionally no record is left and every device is home.
// Devices not found anywhere count as lost, devices on the host under
// another name as misnamed.
func (w *world) check(final bool) verdict {
	var v verdict
	where := w.survey()
	recs, bad := w.records()
	v.problems = append(v.problems, bad...)
	claims := map[string][]*state.Record{}
	for _, r := range recs {
		for _, d := range r.Pending() {
			claims[d.PCIAddress] = append(claims[d.PCIAddress], r)
		}
	}
	for _, d := range w.devices {
		locs := where[d.pci]
		if len(locs) == 0 {
			v.lost++
			v.add("device %s (%s) is lost: not on the host nor in any pod", d.name, d.pci)
			continue
		}
		if len(locs) > 1 {
			v.add("device %s (%s) seen twice: %v", d.name, d.pci, locs)
		}
		loc := locs[0]
		home := loc.place == "host" && loc.name == d.name && !loc.tagged
		owners := claims[d.pci]
		switch {
		case len(owners) > 1:
			var keys []string
			for _, r := range owners {
				keys = append(keys, r.Key())
			}
			v.add("device %s (%s) has two owners: %v", d.name, d.pci, keys)
		case len(owners) == 0 && !home:
			if loc.place == "host" {
				v.misnamed++
			} else {
				v.lost++
			}
			v.add("device %s (%s) is at %s but no record claims it", d.name, d.pci, loc)
		case len(owners) == 1:
			r := owners[0]
			if final {
				if loc.place == "host" && loc.name != d.name {
					v.misnamed++
				}
				if loc.place != "host" {
					v.lost++
				}
			}
			p := w.pods[r.Netns]
			if r.Phase == state.Attached && p != nil && !p.deleted && p.id == r.NetnsID && !w.disturbed[r.Key()] {
				dev := deviceIn(r, d.pci)
				if loc.pod != p || loc.name != dev.PodName {
					v.add("half an attachment: record %s is attached to live pod %s, but device %s (%s) is at %s, want %q there",
						r.Key(), p.path, d.name, d.pci, loc, dev.PodName)
				}
			}
		}
	}
	if final {
		for _, r := range recs {
			v.add("record left at the end: %s (%s, pending %d)", r.Key(), r.Phase, len(r.Pending()))
		}
	}
	return v
}

func deviceIn(r *state.Record, pci string) *state.Device {
	for i := range r.Devices {
		if r.Devices[i].PCIAddress == pci {
			return &r.Devices[i]
		}
	}
	return &state.Device{}
}

// assert fails the test on any problem; with final it also adds to the
// run's lost and misnamed totals.
func (w *world) assert(final bool, when string) {
	w.t.Helper()
	v := w.check(final)
	if final {
		devicesLost.Add(int64(v.lost))
		devicesMisnamed.Add(int64(v.misnamed))
	}
	for _, p := range v.problems {
		w.t.Errorf("%s: %s", when, p)
	}
}

// quiesced runs f holding the plugin's own state lock and w.mu: no plugin
// process is between two steps and the harness is not moving anything.
func (w *world) quiesced(f func()) error {
	unlock, err := state.Store{Dir: w.StateDir}.Lock(30 * time.Second)
	if err != nil {
		return err
	}
	defer unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	f()
	return nil
}
