package policy

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
)

// Rules are the node's and the network's limits on which PFs may be
// handed out.
type Rules struct {
	// PFNames, when not empty, is the pool: only PFs with one of these
	// host names or altnames.
	PFNames []string
	// Reserved names (a name or an altname) are never handed out, as a PF
	// or as one of its VFs.
	Reserved map[string]bool
	// Holders maps the PCI address of every device an attachment holds to
	// a description of that attachment, for the refusal message.
	Holders map[string]string
}

// Verdict is why a PF cannot be taken now; the zero Verdict means it can.
type Verdict struct {
	Reason string
	// Fixed means waiting will not help (reserved, an uplink, outside the
	// pool), as opposed to a PF that is busy or not on the host right now.
	Fixed bool
}

// OK reports whether the PF may be taken.
func (v Verdict) OK() bool { return v.Reason == "" }

// Judge applies the rules to one PF as discovery and the host see it.
func (r Rules) Judge(pf sriov.PF, host *Host) Verdict {
	if who, held := r.Holders[pf.PCIAddress]; held {
		return Verdict{Reason: "in use by " + who}
	}
	if v := r.Admits(pf, host); !v.OK() {
		return v
	}
	if !host.Has(pf.Name) {
		return Verdict{Reason: "its netdev is not in the host netns"}
	}
	if bad := notRecordable(pf); bad != "" {
		return Verdict{Reason: fmt.Sprintf("netdev name %q is not valid UTF-8: a state record cannot hold it, so the device could not be given back", bad), Fixed: true}
	}
	idx := host.index()
	if why := host.uplinkReason(pf.Name, idx); why != "" {
		return Verdict{Reason: "uplink: " + why, Fixed: true}
	}
	for _, vf := range pf.VFs {
		if as := r.reservedAs(vf.Name, host); as != "" && vf.Name != "" {
			return Verdict{Reason: fmt.Sprintf("its VF %s is reserved", as), Fixed: true}
		}
		if why := host.uplinkReason(vf.Name, idx); why != "" {
			return Verdict{Reason: "uplink: its VF " + why, Fixed: true}
		}
	}
	return Verdict{}
}

// JudgeAs is Judge for a PF that is to be given the host name name (the
// node's SR-IOV baseline names PFs the bash plugin left renamed, as net1
// or devN): the pool admits it under either name, and a reservation of
// either name refuses it. Everything else is judged as the host sees the
// PF now.
func (r Rules) JudgeAs(pf sriov.PF, host *Host, name string) Verdict {
	l, ok := host.Links[pf.Name]
	if name == "" || name == pf.Name || !ok {
		return r.Judge(pf, host)
	}
	as := &Host{Links: maps.Clone(host.Links)}
	l.Name = name
	as.Links[name] = l
	if reserved := r.reservedAs(name, as); reserved != "" {
		return Verdict{Reason: fmt.Sprintf("%s, to be named %s, is reserved", pf.Name, reserved), Fixed: true}
	}
	if len(r.PFNames) > 0 && slices.ContainsFunc(r.PFNames, func(n string) bool { return as.Named(name, n) }) {
		r.PFNames = nil // in the pool by the name it is to get
	}
	return r.Judge(pf, host)
}

// Admits applies only the rules about the PF's names: the pool and the
// reservations of the PF itself. They hold wherever its netdev is, so they
// also judge a PF a pod holds, given a host that knows the PF by the
// names it had there; the uplink rules need the PF in the host netns.
func (r Rules) Admits(pf sriov.PF, host *Host) Verdict {
	if len(r.PFNames) > 0 && !slices.ContainsFunc(r.PFNames, func(n string) bool { return host.Named(pf.Name, n) }) {
		return Verdict{Reason: fmt.Sprintf("%s is not in pfNames", pf.Name), Fixed: true}
	}
	if as := r.reservedAs(pf.Name, host); as != "" {
		return Verdict{Reason: as + " is reserved", Fixed: true}
	}
	return Verdict{}
}

// AdmitsDriverless applies the rules about names to a PF that no driver
// is bound to, which has no netdev and so no name on the host: it is
// judged by the names it is known by (known: the name the node's baseline
// gives it, the link it was seen as before its driver went). A
// reservation of any of them refuses it, and the pool admits it under
// any. With none known the pool cannot admit it; a reservation has
// nothing to match (it names netdevs), and the PF is judged by its name
// in full once its driver is bound and it has one.
func (r Rules) AdmitsDriverless(pci string, known []Link) Verdict {
	inPool := len(r.PFNames) == 0
	var names []string
	for _, l := range known {
		one := sriov.PF{PCIAddress: pci, Name: l.Name}
		h := &Host{Links: map[string]Link{l.Name: l}}
		if v := (Rules{Reserved: r.Reserved}).Admits(one, h); !v.OK() {
			return v
		}
		inPool = inPool || (Rules{PFNames: r.PFNames}).Admits(one, h).OK()
		names = append(names, l.Name)
	}
	switch {
	case inPool:
		return Verdict{}
	case len(names) == 0:
		return Verdict{Reason: "pfNames cannot judge it without a name: give it the name it is to get in sriovBaseline.pfs[].name, or bind its driver", Fixed: true}
	}
	return Verdict{Reason: fmt.Sprintf("known as %s, it is not in pfNames", strings.Join(names, ", ")), Fixed: true}
}

// notRecordable returns the first name of the PF or its VFs that JSON
// cannot carry (the kernel takes any bytes in a name; JSON turns invalid
// UTF-8 into U+FFFD), "" if all can be recorded.
func notRecordable(pf sriov.PF) string {
	if !utf8.ValidString(pf.Name) {
		return pf.Name
	}
	for _, vf := range pf.VFs {
		if !utf8.ValidString(vf.Name) {
			return vf.Name
		}
	}
	return ""
}

// reservedAs says under which of its names (as "name" or "name (altname
// alt)") the host link is reserved, "" if it is not.
func (r Rules) reservedAs(name string, host *Host) string {
	if r.Reserved[name] {
		return name
	}
	if l, ok := host.Links[name]; ok && name != "" {
		for _, alt := range l.AltNames {
			if r.Reserved[alt] {
				return fmt.Sprintf("%s (altname %s)", name, alt)
			}
		}
	}
	return ""
}

// Choose picks the first PF (discovery lists them by PCI address) that
// may be taken. When none may, it says for each PF why it was passed over.
func (r Rules) Choose(pfs []sriov.PF, host *Host) (sriov.PF, []string, bool) {
	pf, passedOver, ok, _ := r.ChooseFrom(len(pfs), func(i int) (sriov.PF, error) { return pfs[i], nil }, host)
	return pf, passedOver, ok
}

// ChooseFrom is Choose over n PFs that read gives one at a time, in PCI
// address order: only the PFs up to the one chosen are read, not the
// hundreds of VFs of every PF on the node. An error of read ends it.
func (r Rules) ChooseFrom(n int, read func(i int) (sriov.PF, error), host *Host) (sriov.PF, []string, bool, error) {
	var passedOver []string
	for i := range n {
		pf, err := read(i)
		if err != nil {
			return sriov.PF{}, passedOver, false, err
		}
		v := r.Judge(pf, host)
		if v.OK() {
			return pf, passedOver, true, nil
		}
		passedOver = append(passedOver, fmt.Sprintf("%s (%s): %s", pf.PCIAddress, nameOr(pf.Name, "no netdev"), v.Reason))
	}
	return sriov.PF{}, passedOver, false, nil
}

func nameOr(name, alt string) string {
	if name == "" {
		return alt
	}
	return name
}
