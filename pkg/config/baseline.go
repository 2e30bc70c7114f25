package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// SRIOVBaseline is the SR-IOV state a node declares for its free PFs
// (node.json's "sriovBaseline"): how many VFs each has, and every VF on
// its default driver, the one the kernel probes for it without a
// driver_override (igbvf for igb, iavf for i40e and ice), with no
// driver_override left set and sriov_drivers_autoprobe on. The node agent
// brings free PFs to it; ADD brings the PF it takes to it before it
// records the PF's state, so DEL gives the PF back at the baseline.
//
// NumVFs applies to every PF the node may hand out; an entry in PFs
// applies to one PF, by PCI address, and may give it another count and
// the host name it should carry. Without NumVFs only the PFs listed have
// a baseline. Without the field at all the node has none, and DEL gives a
// PF back as ADD found it.
type SRIOVBaseline struct {
	NumVFs VFCount      `json:"numVFs,omitempty"`
	PFs    []PFBaseline `json:"pfs,omitempty"`
}

// PFBaseline is the baseline of one PF.
type PFBaseline struct {
	// PCI is the PF's PCI address; the short bus:dev.fn form gets domain
	// 0000.
	PCI string `json:"pci"`
	// NumVFs, when set, overrides the node-wide count.
	NumVFs VFCount `json:"numVFs,omitempty"`
	// Name, when set, is the host name the PF is given back: the bash
	// plugin left PFs on the host under the names they had in the pod
	// (net1), or devN where the kernel found that name taken.
	Name string `json:"name,omitempty"`
}

// VFCount is a VF count as node.json spells it: a whole number, or
// "total" for the PF's sriov_totalvfs. The JSON text is kept as written
// and checked by validate, so that an error can name the field.
type VFCount struct {
	raw json.RawMessage
}

// UnmarshalJSON keeps the value for validate.
func (v *VFCount) UnmarshalJSON(b []byte) error {
	v.raw = append(json.RawMessage(nil), b...)
	return nil
}

// MarshalJSON writes the value as it was read.
func (v VFCount) MarshalJSON() ([]byte, error) {
	if v.raw == nil {
		return []byte("null"), nil
	}
	return v.raw, nil
}

// Set reports whether a count was given.
func (v VFCount) Set() bool { return v.raw != nil && !bytes.Equal(v.raw, []byte("null")) }

// TotalVFs is what "total" stands for.
const TotalVFs = "total"

// Resolve turns the count into a number of VFs for a PF with total VFs
// at most. An unset count is an error: callers ask For first.
func (v VFCount) Resolve(total int) (int, error) {
	n, all, err := v.parse()
	if err != nil {
		return 0, err
	}
	if all {
		return total, nil
	}
	if n > total {
		return 0, fmt.Errorf("numVFs %d is more than the PF's sriov_totalvfs %d", n, total)
	}
	return n, nil
}

// String is the count as written ("total", "4").
func (v VFCount) String() string {
	n, all, err := v.parse()
	switch {
	case err != nil:
		return string(v.raw)
	case all:
		return TotalVFs
	}
	return strconv.Itoa(n)
}

func (v VFCount) parse() (n int, all bool, err error) {
	if !v.Set() {
		return 0, false, errors.New("no VF count given")
	}
	var s string
	if json.Unmarshal(v.raw, &s) == nil {
		if s == TotalVFs {
			return 0, true, nil
		}
		return 0, false, fmt.Errorf("want a whole number or %q, got %q", TotalVFs, s)
	}
	if err := json.Unmarshal(v.raw, &n); err != nil {
		return 0, false, fmt.Errorf("want a whole number or %q, got JSON %s", TotalVFs, v.raw)
	}
	if n < 0 {
		return 0, false, fmt.Errorf("want a whole number or %q, got %d", TotalVFs, n)
	}
	return n, false, nil
}

// For is the baseline of the PF at pci: its own entry's values over the
// node-wide ones. ok is false when the node declares none for it.
func (b *SRIOVBaseline) For(pci string) (pf PFBaseline, ok bool) {
	if b == nil {
		return PFBaseline{}, false
	}
	pf = PFBaseline{PCI: pci, NumVFs: b.NumVFs}
	for _, e := range b.PFs {
		if NormalizePCI(e.PCI) != pci {
			continue
		}
		if e.NumVFs.Set() {
			pf.NumVFs = e.NumVFs
		}
		pf.Name = e.Name
	}
	return pf, pf.NumVFs.Set()
}

// validate names every bad value by its path in node.json.
func (b *SRIOVBaseline) validate() error {
	if b == nil {
		return nil
	}
	const f = "sriovBaseline"
	var errs []error
	if b.NumVFs.Set() {
		if _, _, err := b.NumVFs.parse(); err != nil {
			errs = append(errs, fmt.Errorf("field %q: %w", f+".numVFs", err))
		}
	}
	seen := map[string]int{}
	for i, e := range b.PFs {
		at := fmt.Sprintf("%s.pfs[%d]", f, i)
		pci := NormalizePCI(e.PCI)
		switch j, dup := seen[pci]; {
		case !IsPCIAddress(pci):
			errs = append(errs, fmt.Errorf("field %q: %q is not a PCI address like 0000:3b:00.0", at+".pci", e.PCI))
		case dup:
			errs = append(errs, fmt.Errorf("field %q: PF %s is listed in %s.pfs[%d] already", at+".pci", pci, f, j))
		default:
			seen[pci] = i
		}
		if e.NumVFs.Set() {
			if _, _, err := e.NumVFs.parse(); err != nil {
				errs = append(errs, fmt.Errorf("field %q: %w", at+".numVFs", err))
			}
		} else if !b.NumVFs.Set() {
			errs = append(errs, fmt.Errorf("field %q: required when %q is not set", at+".numVFs", f+".numVFs"))
		}
		if e.Name != "" {
			if err := ValidateIfName(e.Name); err != nil {
				errs = append(errs, fmt.Errorf("field %q: %w", at+".name", err))
			}
		}
	}
	return errors.Join(errs...)
}
