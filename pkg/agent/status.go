package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// WriteStatus prints one line per PF for a person on the node: PCI
// address, host name, VFs, who holds it, phase, and why it is unavailable;
// or the same as JSON.
func WriteStatus(w io.Writer, pfs []PF, asJSON bool) error {
	if asJSON {
		if pfs == nil {
			pfs = []PF{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(pfs)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PCI\tNAME\tVFS\tPHASE\tHOLDER\tWHY")
	for _, p := range pfs {
		holder := "-"
		if h := p.Holder; h != nil {
			holder = fmt.Sprintf("pod %s container %s %s netns %s", h.Pod, short(h.ContainerID), h.IfName, h.Netns)
		}
		why := p.Why
		if why == "" {
			why = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", p.PCI, orDash(p.Name), p.VFs, p.Phase, holder, why)
	}
	return tw.Flush()
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
