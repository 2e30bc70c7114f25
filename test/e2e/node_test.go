//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"golang.org/x/sys/unix"
)

// nodeSnapshot is everything of the node's SR-IOV NICs a job can change,
// one line per fact, sorted: every PCI netdev in the VM's netns (name, MAC,
// MTU, admin state, altnames), every PF's sriov_numvfs and
// sriov_drivers_autoprobe, every VF's driver and driver_override, and the
// VF settings each PF reports over netlink (ip link show PF: vf lines).
func nodeSnapshot() ([]string, error) {
	host, _, err := netnsLinks("")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range host {
		out = append(out, "netdev "+l.String())
	}
	for _, p := range pfs {
		dev := filepath.Join(pciDevices, p.PCI)
		num, _ := readSysfs(filepath.Join(dev, "sriov_numvfs"))
		auto, _ := readSysfs(filepath.Join(dev, "sriov_drivers_autoprobe"))
		out = append(out, fmt.Sprintf("pf %s sriov_numvfs=%s sriov_drivers_autoprobe=%s", p.PCI, num, auto))
		vfs, err := vfPCIs(p.PCI)
		if err != nil {
			return nil, err
		}
		for i, v := range vfs {
			override, _ := readSysfs(filepath.Join(pciDevices, v, "driver_override"))
			out = append(out, fmt.Sprintf("vf %s of %s index %d driver=%q driver_override=%s", v, p.PCI, i, vfDriver(v), override))
		}
		lines, err := pfSideVFs(host, p.PCI)
		if err != nil {
			return nil, err
		}
		out = append(out, lines...)
	}
	slices.Sort(out)
	return out, nil
}

// pfSideVFs is the PF's view of its VFs over netlink.
func pfSideVFs(host map[string]link, pfPCI string) ([]string, error) {
	l, ok := host[pfPCI]
	if !ok {
		return []string{fmt.Sprintf("pf %s: not in the host netns", pfPCI)}, nil
	}
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	nl, err := h.LinkByName(l.Name)
	if err != nil {
		return nil, fmt.Errorf("PF %s (%s): %w", pfPCI, l.Name, err)
	}
	var out []string
	for _, vf := range nl.Attrs().Vfs {
		out = append(out, fmt.Sprintf("pf %s vf %d mac %s vlan %d qos %d spoofchk %v trust %v link_state %d min_tx_rate %d max_tx_rate %d",
			pfPCI, vf.ID, vf.Mac, vf.Vlan, vf.Qos, vf.Spoofchk, vf.Trust, vf.LinkState, vf.MinTxRate, vf.MaxTxRate))
	}
	return out, nil
}

// diffSnapshots says which facts went missing and which appeared.
func diffSnapshots(before, after []string) error {
	var d []string
	for _, b := range before {
		if !slices.Contains(after, b) {
			d = append(d, "- "+b)
		}
	}
	for _, a := range after {
		if !slices.Contains(before, a) {
			d = append(d, "+ "+a)
		}
	}
	if len(d) > 0 {
		return fmt.Errorf("node differs from before the job:\n  %s", strings.Join(d, "\n  "))
	}
	return nil
}

func mustSnapshot(t testing.TB) []string {
	t.Helper()
	s, err := nodeSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// printSnapshotOnce shows what the job tests compare, for the log.
func printSnapshot(s []string) {
	fmt.Fprintf(os.Stdout, "e2e: node snapshot (%d facts):\n  %s\n", len(s), strings.Join(s, "\n  "))
}
