//go:build e2e

package e2e

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// writeSystemReserved writes the node's reserved-interfaces file and puts
// back what was there (usually nothing) when the test ends.
func writeSystemReserved(t *testing.T, content string) {
	t.Helper()
	old, err := os.ReadFile(systemReservedFile)
	had := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	if err := os.WriteFile(systemReservedFile, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if had {
			_ = os.WriteFile(systemReservedFile, old, 0o644)
		} else {
			_ = os.Remove(systemReservedFile)
		}
	})
}

// A PF listed in /etc/pfscni-system-reserved-interfaces is never taken, even
// when it is the only one left.
func TestSystemReservedPFIsNeverTaken(t *testing.T) {
	writeSystemReserved(t, "# the node's own NIC\n\n"+pfs[0].Name+"\n")
	h := newHarness(t, nil)
	p := h.newPod()
	before := mustLinks(t, "")

	r1 := h.toolAdd(p, "net1")
	r2 := h.toolAdd(p, "net2")
	a1, a2 := wholePF(p, "net1", pfs[1]), wholePF(p, "net2", pfs[2])
	assertAttached(t, a1, r1)
	assertAttached(t, a2, r2)
	assertHostLost(t, before, a1, a2)

	_, err := h.libAdd(h.newPod(), "net1")
	if code := cniCode(err); code != 11 {
		t.Errorf("ADD with only the reserved PF left: got %v (code %d), want CNI error 11", err, code)
	}
	if _, ok := mustLinks(t, "")[pfs[0].PCI]; !ok {
		t.Errorf("reserved PF %s left the host", pfs[0])
	}
}

// The node configuration's reservedInterfacesFile and the network
// configuration's reservedInterfaces reserve too.
func TestConfigReservedPFsAreNeverTaken(t *testing.T) {
	file := filepath.Join(t.TempDir(), "reserved")
	if err := os.WriteFile(file, []byte(pfs[0].Name+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, map[string]any{"reservedInterfaces": []string{pfs[1].Name}})
	h.setNode(map[string]any{"reservedInterfacesFile": file})
	p := h.newPod()
	before := mustLinks(t, "")
	res := h.toolAdd(p, "net1")
	a := wholePF(p, "net1", pfs[2])
	assertAttached(t, a, res)
	assertHostLost(t, before, a)
}

// makeUplink gives a PF an address and the default route, as a node's own
// NIC has, and takes them away when the test ends.
func makeUplink(t *testing.T, f pf) {
	t.Helper()
	name := baseline[f.PCI].Name
	run(t, "ip", "link", "set", name, "up")
	t.Cleanup(func() {
		_ = runQuiet("ip", "route", "del", "default", "dev", name)
		_ = runQuiet("ip", "addr", "flush", "dev", name)
		if !baseline[f.PCI].Up {
			_ = runQuiet("ip", "link", "set", name, "down")
		}
	})
	run(t, "ip", "addr", "add", "192.0.2.10/24", "dev", name)
	run(t, "ip", "route", "add", "default", "via", "192.0.2.1", "dev", name, "onlink")
}

// A PF carrying an address and the default route is the node's uplink: never
// taken from the pool, and refused with an error when pinned by PCI address.
func TestUplinkPFIsNeverTaken(t *testing.T) {
	h := newHarness(t, nil) // first: its final host check must run after the uplink is undone
	makeUplink(t, pfs[0])
	p := h.newPod()
	before := mustLinks(t, "")
	res := h.toolAdd(p, "net1")
	a := wholePF(p, "net1", pfs[1])
	assertAttached(t, a, res)
	assertHostLost(t, before, a)

	pinned := newHarness(t, map[string]any{"pciBusID": pfs[0].PCI})
	q := pinned.newPod()
	host := mustLinks(t, "")
	if _, err := pinned.libAdd(q, "net1"); err == nil {
		t.Cleanup(func() { _ = pinned.libDel(q, "net1") })
		t.Errorf("ADD pinned to the uplink %s succeeded", pfs[0])
	} else {
		t.Logf("ADD pinned to the uplink: %v", err)
	}
	assertSame(t, "host", host, mustLinks(t, ""))
	if got, _, _ := netnsLinks(q.path); len(got) != 0 {
		t.Errorf("the refused pod holds %v", got)
	}
}

// pciBusID pins the PF: the highest one is taken even though lower ones are free.
func TestPinnedPF(t *testing.T) {
	h := newHarness(t, map[string]any{"pciBusID": pfs[2].PCI})
	p := h.newPod()
	before := mustLinks(t, "")
	res := h.toolAdd(p, "net1")
	a := wholePF(p, "net1", pfs[2])
	assertAttached(t, a, res)
	assertHostLost(t, before, a)
}

// A global unicast address alone (no route) marks a PF as the node's: never
// taken. A PF that is merely up, with only its IPv6 link-local address, is
// not an uplink and is taken.
func TestPFWithGlobalAddressIsNeverTaken(t *testing.T) {
	h := newHarness(t, nil)
	addrOnly, upOnly := baseline[pfs[0].PCI].Name, baseline[pfs[1].PCI].Name
	t.Cleanup(func() {
		_ = runQuiet("ip", "addr", "flush", "dev", addrOnly)
		_ = runQuiet("ip", "link", "set", upOnly, "down")
	})
	run(t, "ip", "addr", "add", "198.51.100.10/24", "dev", addrOnly)
	run(t, "ip", "link", "set", upOnly, "up")

	p := h.newPod()
	before := mustLinks(t, "")
	res := h.toolAdd(p, "net1")
	a := wholePF(p, "net1", pfs[1])
	assertAttached(t, a, res)
	assertHostLost(t, before, a)
	h.toolDel(p, "net1")
	if l := mustLinks(t, "")[pfs[1].PCI]; !l.Up {
		t.Errorf("%s was up when taken and came back down", l.Name)
	}
}
