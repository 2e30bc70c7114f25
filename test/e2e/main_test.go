//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// The VM as the suite found it: every test must leave it so.
var (
	pfs      []pf                // SR-IOV PFs, lowest PCI address first
	baseline map[string]link     // PCI netdevs of the VM's netns, by PCI address
	vfsOf    map[string][]string // PF PCI -> VF PCI addresses by index

	pluginDir  string // holds the plugin binary (CNI_PATH)
	cnitoolBin string
)

var restoreChecked sync.Map // *testing.T -> true once requireHostRestored is registered

const systemReservedFile = "/etc/pfscni-system-reserved-interfaces"

func TestMain(m *testing.M) {
	if vf := os.Getenv("E2E_HOLD_VF"); vf != "" {
		if err := holdVF(vf); err != nil {
			fmt.Fprintf(os.Stderr, "hold %s: %v\n", vf, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if err := setup(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e setup: %v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func setup() error {
	pluginDir = os.Getenv("E2E_PLUGIN_DIR")
	cnitoolBin = os.Getenv("E2E_CNITOOL")
	if pluginDir == "" || cnitoolBin == "" {
		return fmt.Errorf("E2E_PLUGIN_DIR and E2E_CNITOOL are unset: this suite moves real network devices and runs only inside the test VM (make e2e)")
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("must run as root")
	}
	for _, f := range []string{filepath.Join(pluginDir, "sriov-passthrough-cni"), cnitoolBin} {
		if _, err := os.Stat(f); err != nil {
			return err
		}
	}
	var err error
	if pfs, err = findPFs(); err != nil {
		return err
	}
	if len(pfs) < 3 {
		return fmt.Errorf("want 3 SR-IOV PFs, found %v", pfs)
	}
	if kernelSendsParents, err = sendsParents(pfs[0]); err != nil {
		return err
	}
	if !kernelSendsParents {
		fmt.Printf("e2e: netlink names no parent device on this kernel; PCI netdevs found through sysfs\n")
	}
	start := time.Now()
	vfsOf = map[string][]string{}
	for _, p := range pfs {
		if err := setNumVFs(p, p.TotalVFs); err != nil {
			return err
		}
		m, err := vfPCIs(p.PCI)
		if err != nil {
			return err
		}
		for i := 0; i < len(m); i++ {
			vfsOf[p.PCI] = append(vfsOf[p.PCI], m[i])
		}
	}
	fmt.Printf("e2e: enabled VFs on %d PFs in %v\n", len(pfs), time.Since(start).Round(time.Millisecond))
	if baseline, _, err = netnsLinks(""); err != nil {
		return err
	}
	printTopology()
	return nil
}

func printTopology() {
	fmt.Printf("e2e: kernel %s, host netns before the suite:\n", os.Getenv("E2E_KERNEL"))
	for _, p := range pfs {
		l := baseline[p.PCI]
		fmt.Printf("  PF %-6s %s %s totalvfs=%d\n", l.Name, p.PCI, l.MAC, p.TotalVFs)
		for i, v := range vfsOf[p.PCI] {
			fmt.Printf("     VF%d %-6s %s %s\n", i, baseline[v].Name, v, baseline[v].MAC)
		}
	}
}

// diffHost compares the VM's netns with the baseline: same PCI netdevs, same
// names, MACs, MTUs and admin states.
func diffHost() error {
	host, _, err := netnsLinks("")
	if err != nil {
		return err
	}
	var diffs []string
	for pci, want := range baseline {
		got, ok := host[pci]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("missing %v", want))
		case got.Name != want.Name || got.MAC != want.MAC || got.MTU != want.MTU || got.Up != want.Up ||
			!slices.Equal(got.AltNames, want.AltNames):
			diffs = append(diffs, fmt.Sprintf("%v is now %v", want, got))
		}
	}
	for pci, got := range host {
		if _, ok := baseline[pci]; !ok {
			diffs = append(diffs, fmt.Sprintf("unexpected %v", got))
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		return fmt.Errorf("host netns differs from the start of the suite:\n  %s", strings.Join(diffs, "\n  "))
	}
	return nil
}

// requireHostRestored is registered first by every test, so it runs last:
// after the test's DELs and netns deletions the VM must be as it was. If it
// is not, the test fails and the devices are put back by hand so the next
// test starts clean.
func requireHostRestored(t *testing.T) {
	t.Helper()
	if _, done := restoreChecked.LoadOrStore(t, true); done {
		return
	}
	t.Cleanup(func() {
		if err := poll(20*time.Second, diffHost); err != nil {
			t.Errorf("after the test: %v", err)
			repairHost(t)
		}
	})
}

// repairHost renames every device back to its baseline name and state with
// ip(8), not with the plugin under test.
func repairHost(t *testing.T) {
	if err := poll(30*time.Second, func() error {
		host, _, err := netnsLinks("")
		if err != nil {
			return err
		}
		for pci, want := range baseline {
			if _, ok := host[pci]; !ok {
				return fmt.Errorf("%v is not back in the host netns", want)
			}
		}
		return nil
	}); err != nil {
		t.Logf("repair: %v", err)
	}
	host, _, err := netnsLinks("")
	if err != nil {
		t.Logf("repair: %v", err)
		return
	}
	i := 0
	for pci, want := range baseline {
		got, ok := host[pci]
		if !ok || got.Name == want.Name {
			continue
		}
		tmp := fmt.Sprintf("e2erepair%d", i)
		i++
		ipQuiet("link", "set", got.Name, "down")
		ipQuiet("link", "set", got.Name, "name", tmp)
		got.Name = tmp
		host[pci] = got
	}
	for pci, want := range baseline {
		got, ok := host[pci]
		if !ok {
			continue
		}
		if got.Name != want.Name {
			ipQuiet("link", "set", got.Name, "name", want.Name)
		}
		state := "down"
		if want.Up {
			state = "up"
		}
		ipQuiet("link", "set", want.Name, state, "mtu", fmt.Sprint(want.MTU), "address", want.MAC)
		for _, alt := range got.AltNames {
			if !slices.Contains(want.AltNames, alt) {
				ipQuiet("link", "property", "del", "dev", want.Name, "altname", alt)
			}
		}
	}
	if err := diffHost(); err != nil {
		t.Logf("repair incomplete: %v", err)
	}
}

func ipQuiet(args ...string) {
	_ = runQuiet("ip", args...)
}
