// Package agent is the node agent: a kubelet device plugin that advertises
// the node's SR-IOV PFs as the CNI plugin would hand them out, finishes
// releases the moment their devices come back, and shows a person on the
// node who holds what.
package agent

import (
	"fmt"
	"slices"
	"strings"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/policy"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// Phase is where a PF stands, as the agent sees it.
type Phase string

const (
	// Free: on the host and eligible; the plugin would hand it out.
	Free Phase = "free"
	// Attached: a live attachment holds it.
	Attached Phase = "attached"
	// Adding: an ADD recorded it and is (or was) moving it.
	Adding Phase = "adding"
	// Releasing: a release is pending; some device is not home yet.
	Releasing Phase = "releasing"
	// Missing: advertised before, but neither on the host nor held.
	Missing Phase = "missing"
	// Ineligible: never handed out (reserved, an uplink, outside pfNames).
	Ineligible Phase = "ineligible"
	// OffBaseline: free, but not at the node's sriovBaseline yet; not
	// handed out until the agent (or an ADD) brings it there.
	OffBaseline Phase = "off-baseline"
)

// PF is one SR-IOV PF as the agent reports it.
type PF struct {
	PCI  string `json:"pci"`
	Name string `json:"name"`
	VFs  int    `json:"vfs"`
	// TotalVFs is the PF's sriov_totalvfs.
	TotalVFs int     `json:"totalVFs,omitempty"`
	Phase    Phase   `json:"phase"`
	Holder   *Holder `json:"holder,omitempty"`
	// Unpinned: held by an attachment the kubelet did not allocate (its
	// ADD carried no device ID).
	Unpinned bool `json:"unpinned,omitempty"`
	// Why says why the PF is not available, "" when it is free or held
	// by a pod the kubelet allocated it to.
	Why string `json:"why,omitempty"`
}

// Holder is the attachment that holds a PF.
type Holder struct {
	Pod         string `json:"pod"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Netns       string `json:"netns"`
}

// Advertised reports whether the kubelet is told about the PF at all.
func (p PF) Advertised() bool { return p.Phase != Ineligible && p.Phase != OffBaseline }

// Healthy reports whether the kubelet may count the PF: free on the host,
// or held by an attachment the kubelet allocated (it counts those as
// allocated). One held by a job that did not request prow/sriov is not:
// the kubelet would count it free and offer it to the next job.
func (p PF) Healthy() bool {
	return p.Phase == Free || (p.Phase == Attached || p.Phase == Adding) && !p.Unpinned
}

// View is one look at the node, gathered by the caller.
type View struct {
	// PFs are discovery's PFs plus those of records that discovery did not
	// list (a PF in a pod is not under the host's class/net).
	PFs  []sriov.PF
	Host *policy.Host
	// Rules are the node's pool and reservations; Holders stay empty, the
	// records are judged here.
	Rules   policy.Rules
	Records []*state.Record
	// Known maps PCI address -> host name of every PF advertised before:
	// one that vanished is reported Missing, not silently dropped.
	Known map[string]string
	// Gone reports whether an attached record's netns is gone, as far as
	// this process can tell.
	Gone func(*state.Record) bool
	// Seen maps PCI address -> the PF's link as this process last saw it
	// on the host (its name and altnames): a held PF's netdev is in a pod,
	// and these are the names the pool and the reservations know it by.
	Seen map[string]policy.Link
	// Baseline says how a PF free on the host is off the node's
	// sriovBaseline, "" when it is at it or has none; nil judges none.
	Baseline func(sriov.PF) string
	// BaselineName is the host name the node's baseline gives a PF, ""
	// for none: the pool and the reservations judge a PF left renamed by
	// that name as well.
	BaselineName func(pci string) string
}

// Judge says, for every PF, where it stands; the list is sorted by PCI
// address, the order in which the plugin chooses.
func Judge(v View) []PF {
	held := map[string]*state.Record{}
	for _, r := range v.Records {
		held[r.PF().PCIAddress] = r
	}
	seen := map[string]bool{}
	var out []PF
	for _, pf := range v.PFs {
		if seen[pf.PCIAddress] {
			continue
		}
		seen[pf.PCIAddress] = true
		if r := held[pf.PCIAddress]; r != nil {
			out = append(out, judgeHeld(pf, r, v))
			continue
		}
		out = append(out, judgeOnHost(pf, v))
	}
	for pci, name := range v.Known {
		if !seen[pci] {
			out = append(out, PF{PCI: pci, Name: name, Phase: Missing, Why: "no longer on the host, and no attachment holds it"})
		}
	}
	slices.SortFunc(out, func(a, b PF) int { return strings.Compare(a.PCI, b.PCI) })
	return out
}

func judgeOnHost(pf sriov.PF, v View) PF {
	if pf.Driverless {
		return judgeDriverless(pf, v)
	}
	p := PF{PCI: pf.PCIAddress, Name: pf.Name, VFs: pf.NumVFs, TotalVFs: pf.TotalVFs, Phase: Free}
	name := ""
	if v.BaselineName != nil {
		name = v.BaselineName(pf.PCIAddress)
	}
	switch verdict := v.Rules.JudgeAs(pf, v.Host, name); {
	case verdict.OK():
		if v.Baseline != nil {
			if why := v.Baseline(pf); why != "" {
				p.Phase, p.Why = OffBaseline, why
			}
		}
	case verdict.Fixed:
		p.Phase, p.Why = Ineligible, verdict.Reason
	default:
		p.Phase, p.Why = Missing, verdict.Reason
	}
	return p
}

// judgeDriverless judges a PF no attachment holds and no driver is bound
// to (a job or a person unbound it): it has no netdev, so nothing can be
// handed out. The names it is known by are judged (policy's
// AdmitsDriverless); under a baseline that applies to it the PF is off
// it, and the agent binds its default driver, then judges it by its name
// in full before it writes its SR-IOV state. Without a baseline it is
// left as it is: reported missing if it was advertised before, as when
// it vanished, else ineligible.
func judgeDriverless(pf sriov.PF, v View) PF {
	// Its name is the one it was advertised under, if it was: it has none
	// now, and the known names must not forget it.
	p := PF{PCI: pf.PCIAddress, Name: v.Known[pf.PCIAddress], VFs: pf.NumVFs}
	const noDriver = "no driver is bound to it (its own driver was unbound), so it has no netdev"
	var known []policy.Link
	if l, ok := v.Seen[pf.PCIAddress]; ok {
		known = append(known, l)
	}
	if v.BaselineName != nil {
		if name := v.BaselineName(pf.PCIAddress); name != "" {
			known = append(known, policy.Link{Name: name})
		}
	}
	if verdict := v.Rules.AdmitsDriverless(pf.PCIAddress, known); !verdict.OK() {
		p.Phase, p.Why = Ineligible, noDriver+"; "+verdict.Reason
		return p
	}
	if v.Baseline != nil {
		if why := v.Baseline(pf); why != "" {
			p.Phase, p.Why = OffBaseline, why
			return p
		}
	}
	p.Phase, p.Why = Ineligible, fmt.Sprintf("%s; the node declares no sriovBaseline for it, so the agent leaves it as it is "+
		"(to serve it, bind its driver: echo %s > /sys/bus/pci/drivers_probe)", noDriver, pf.PCIAddress)
	if _, ok := v.Known[pf.PCIAddress]; ok {
		p.Phase = Missing
	}
	return p
}

func judgeHeld(pf sriov.PF, r *state.Record, v View) PF {
	pf.Name = r.PF().OriginalName
	p := PF{PCI: pf.PCIAddress, Name: pf.Name, VFs: pf.NumVFs, TotalVFs: pf.TotalVFs,
		Holder: &Holder{Pod: r.Pod.String(), ContainerID: r.ContainerID, IfName: r.IfName, Netns: r.Netns}}
	if verdict := judgeNames(pf, v); verdict.Fixed {
		p.Phase, p.Why = Ineligible, verdict.Reason
		return p
	}
	if r.Unpinned {
		p.Unpinned = true
		p.Why = "held by a pod whose ADD carried no deviceID (it did not request the resource): the kubelet does not count it as allocated"
	}
	switch {
	case r.Phase == state.Adding:
		p.Phase = Adding
	case r.Phase == state.Attached && !v.Gone(r):
		p.Phase = Attached
	case r.Phase == state.Attached:
		p.Phase, p.Why = Releasing, "its pod's netns is gone; release pending"
	default:
		p.Phase, p.Why = Releasing, pendingWhy(r)
	}
	return p
}

// judgeNames applies the pool and the reservations to a PF a pod holds.
// Only those can be judged: the uplink rules look at the host netns, where
// its netdev is not. They are judged by the names the PF had on the host:
// its recorded name and the altnames this process saw it with (pfNames is
// often a PF's altname, the predictable name systemd gives it). Without
// the altnames (the agent started while the job held the PF) the pool
// cannot be judged, and the record is the better witness: the plugin took
// the PF under the pool's rules. The PF is judged in full once it is home.
func judgeNames(pf sriov.PF, v View) policy.Verdict {
	rules := v.Rules
	link := policy.Link{Name: pf.Name}
	if seen, ok := v.Seen[pf.PCIAddress]; ok {
		// Altnames belong to the device and travel with it; its name at
		// ADD is the recorded one.
		link.AltNames = seen.AltNames
	} else {
		rules.PFNames = nil
	}
	return rules.Admits(pf, &policy.Host{Links: map[string]policy.Link{pf.Name: link}})
}

func pendingWhy(r *state.Record) string {
	if len(r.Pending()) == 0 {
		// Every netdev is home, yet the record stays: what is left is the
		// PF's own state (its SR-IOV configuration) that the release path
		// could not restore yet; the record (sriov.blocked) or the
		// plugin's log says why.
		if r.SRIOV != nil && r.SRIOV.Blocked != "" {
			return "release pending: every device is home; SR-IOV restore waits: " + r.SRIOV.Blocked
		}
		return "release pending: every device is home, but the PF's state is not restored yet"
	}
	var names []string
	for _, d := range r.Pending() {
		names = append(names, fmt.Sprintf("%s (%s)", d.OriginalName, d.PCIAddress))
	}
	return "release pending: not back on the host yet: " + strings.Join(names, ", ")
}
