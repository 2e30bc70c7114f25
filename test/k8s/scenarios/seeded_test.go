//go:build k8s

package scenarios

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// 16. A node as the bash plugin leaves it, adopted through a declared
// sriovBaseline (docs/deploy.md, "Adopting a node the bash plugin left"),
// serves today's job and a prow/sriov job, and each job ends with the node
// at its baseline.
//
// Seeded while the shipped agent runs, within what the fake sysfs tree can
// express (node.sh):
//   - the node's two PFs on the host under the names the kernel gave them
//     when their pods died, with no record: ens1f0 as dev4 (its name was
//     taken), ens1f1 as net1, the name it had in the pod; the link and its
//     sysfs entries renamed together, as the kernel does;
//   - sriov_drivers_autoprobe 0 on both, which nothing restored;
//   - a third PF, eno1, with the lowest PCI address (an unpinned ADD that
//     ignored reservations would take it first), reserved in the bash
//     plugin's /etc/pfscni-system-reserved-interfaces, also with autoprobe 0.
//
// Then deploy/ with node.json's sriovBaseline {"numVFs": "total"} through
// the generator, as an admin applies it; the DaemonSet rolls. The new agent
// brings dev4 and net1 to the baseline (autoprobe on) and advertises them;
// it never touches eno1 (its autoprobe stays 0, allocatable stays 2). The
// baseline names neither PF: they keep, and come back under, the names they
// have, and status shows them free by those names.
//
// Each job then writes what a kubevirtci job writes through the host's
// /sys (autoprobe 0 on its PFs, a driver_override of vfio-pci on a VF that
// stays bound), and after each the node is back at its baseline: both PFs
// free under dev4 and net1 with every VF, autoprobe on, no override, no
// record, and eno1 still on the host as it was, never in a pod.
//
// What the fake tree cannot model is left to the VM suite
// (test/e2e/baseline_test.go, dirty_test.go, on emulated igb): a baseline
// that names a PF left renamed (the agent renames the link; the kernel
// renames its sysfs entries with it, the fake tree's are directories no one
// renames, so the PF would read as still misnamed), a VF on vfio-pci
// whose override was cleared (rebinding needs the kernel's probe, and the
// check for processes holding the VF needs the initial pid namespace, which
// this node's is not), and sriov_numvfs below sriov_totalvfs (writing
// sriov_numvfs creates and removes VFs only in a kernel).
func TestBashPluginNodeServesJobsAndEndsEachAtItsBaseline(t *testing.T) {
	requireNodeWhole(t)
	want := len(pfNames())
	waitAllocatable(t, want, "before")
	if want != 2 {
		t.Skipf("the scenario seeds a node of two PFs (K8S_PFS=%d)", want)
	}
	node := seedBashPluginNode(t)
	waitAllocatable(t, want, "with the node seeded, before the baseline is declared")

	// Whatever happens next, the DaemonSet ends with the overlay it had and
	// the baseline's ConfigMap is gone (the cutover scenario prunes by
	// counting them).
	overlay, first := currentOverlay(t), nodeConfigMap(t)
	t.Cleanup(func() {
		if cur := nodeConfigMap(t); cur != first {
			applyAndRoll(t, overlay)
			kubectl(t, nil, "-n", "sriov-passthrough-cni", "delete", "configmap", cur, "--ignore-not-found")
		}
	})
	declared := time.Now()
	applyAndRoll(t, nodeConfigOverlay(t, overlay, "sriovBaseline", map[string]any{"numVFs": "total"}))
	for _, pf := range node.served {
		waitAgentLogged(t, `msg="PF at the node's sriovBaseline" .*pci=`+pf.pci, declared)
	}
	waitAllocatable(t, want, "with the node adopted")
	node.requireAtBaseline(t, "after the adoption")
	node.requireStatus(t, "after the adoption", nil)

	createTodaysNetwork(t)
	held := runTodaysJob(t, "seeded-todays-job", false)
	node.requireHolds(t, held)
	node.jobWrites(t)
	node.requireStatus(t, "while today's job holds both PFs", map[string]string{"default/seeded-todays-job": "no deviceID"})
	deleteJobs(t)
	node.requireAtBaseline(t, "after today's job")
	waitAllocatable(t, want, "after today's job")

	held = runJob(t, 2, "seeded-prow-job")
	node.requireHolds(t, held)
	alloc := strings.Split(strings.TrimSpace(kubectl(t, nil, "exec", "seeded-prow-job", "--", "sh", "-c", `echo "$PCIDEVICE_PROW_SRIOV"`)), ",")
	if slices.Contains(alloc, node.reserved.pci) {
		t.Fatalf("the kubelet allocated the reserved PF %s: %v", node.reserved.pci, alloc)
	}
	node.jobWrites(t)
	node.requireStatus(t, "while the prow/sriov job holds both PFs", map[string]string{"default/seeded-prow-job": ""})
	deleteJobs(t)
	node.requireAtBaseline(t, "after the prow/sriov job")
	waitAllocatable(t, want, "after the prow/sriov job")
	node.requireStatus(t, "at the end", nil)
	t.Logf("agent status at the end:\n%s", agentStatusText(t))
}

// fakePF is one PF of the seeded node: its PCI address, the name it has
// on the host, its VFs' PCI addresses.
type fakePF struct {
	pci, name string
	vfs       []string
}

// seededNode is the node as seedBashPluginNode left it.
type seededNode struct {
	served   []fakePF // the PFs jobs may get, under the names the bash plugin left
	reserved fakePF
}

const fakePCIDevices = fakeSysfs + "/devices/pci0000:00"

// seedBashPluginNode leaves the node as the bash plugin leaves one (see
// the scenario). Cleanup puts every name, file and link back as node.sh
// made them, and the scenarios' device list with them.
func seedBashPluginNode(t *testing.T) *seededNode {
	t.Helper()
	n := &seededNode{}
	for _, r := range []struct{ from, to string }{{"ens1f0", "dev4"}, {"ens1f1", "net1"}} {
		pf := fakePF{pci: pciOf(t, r.from), name: r.to}
		pf.vfs = vfsOf(t, pf.pci)
		renameFakePF(t, pf.pci, r.from, r.to)
		t.Cleanup(func() { renameFakePF(t, pf.pci, r.to, r.from) })
		renameDevices(t, r.from, r.to)
		n.served = append(n.served, pf)
	}
	restoreReserved := writeReservedFile(t, "# PFs this node keeps for itself (the bash plugin's file)\neno1\n")
	t.Cleanup(restoreReserved)
	n.reserved = addFakePF(t, "eno1", 0x3a)
	for _, pf := range append(slices.Clone(n.served), n.reserved) {
		writeFake(t, filepath.Join(fakePCIDevices, pf.pci, "sriov_drivers_autoprobe"), "0")
		t.Cleanup(func() { removeFake(t, filepath.Join(fakePCIDevices, pf.pci, "sriov_drivers_autoprobe")) })
	}
	t.Logf("seeded as the bash plugin leaves a node: %s and %s renamed on the host with no record, autoprobe 0; %s (%s) reserved in the old file",
		n.served[0].name, n.served[1].name, n.reserved.name, n.reserved.pci)
	return n
}

// renameFakePF renames the PF's link and, as the kernel does with a
// netdev's, its entries in the fake sysfs tree. The kernel renames only a
// device that is down: the PF goes down for it and back up if it was.
func renameFakePF(t *testing.T, pci, from, to string) {
	t.Helper()
	up := strings.Contains(ipOut(t, "-o", "link", "show", "dev", from), ",UP")
	ip(t, "link", "set", "dev", from, "down")
	ip(t, "link", "set", "dev", from, "name", to)
	if up {
		ip(t, "link", "set", "dev", to, "up")
	}
	netDir := filepath.Join(fakePCIDevices, pci, "net")
	must(t, os.Rename(filepath.Join(netDir, from), filepath.Join(netDir, to)))
	must(t, os.Remove(filepath.Join(fakeSysfs, "class", "net", from)))
	must(t, os.Symlink("../../devices/pci0000:00/"+pci+"/net/"+to, filepath.Join(fakeSysfs, "class", "net", to)))
}

// renameDevices makes the scenarios' device list expect the PF under its
// new name (and its VFs as that PF's), until the test ends: the census
// then counts the node as the seeded node's baseline has it.
func renameDevices(t *testing.T, from, to string) {
	rename := func(from, to string) {
		for i := range devices {
			if devices[i].pf == from {
				devices[i].pf = to
			}
			if devices[i].name == from {
				devices[i].name = to
			}
		}
	}
	rename(from, to)
	t.Cleanup(func() { rename(to, from) })
}

// addFakePF makes one more PF as node.sh's fake_pfs does (an ifb link per
// function, the sysfs tree with each netdev's ifindex, each function on
// its driver and the pci bus), on PCI bus bus, and removes it when the
// test ends.
func addFakePF(t *testing.T, name string, bus int) fakePF {
	t.Helper()
	pf := fakePF{pci: fmt.Sprintf("0000:%02x:00.0", bus), name: name}
	var made []string // PCI functions, links: removed in reverse
	t.Cleanup(func() {
		for i := len(made) - 1; i >= 0; i-- {
			if strings.HasPrefix(made[i], "link:") {
				ip(t, "link", "del", "dev", strings.TrimPrefix(made[i], "link:"))
				continue
			}
			removeFake(t, filepath.Join(fakeSysfs, "bus", "pci", "devices", made[i]))
			must(t, os.RemoveAll(filepath.Join(fakePCIDevices, made[i])))
		}
	})
	function := func(pci, netdev, driver string) {
		dir := filepath.Join(fakePCIDevices, pci)
		must(t, os.MkdirAll(filepath.Join(dir, "net", netdev), 0o755))
		made = append(made, pci)
		must(t, os.Symlink("../../../devices/pci0000:00/"+pci, filepath.Join(fakeSysfs, "bus", "pci", "devices", pci)))
		must(t, os.Symlink("../../../bus/pci/drivers/"+driver, filepath.Join(dir, "driver")))
		must(t, os.Symlink("../../../bus/pci", filepath.Join(dir, "subsystem")))
		ip(t, "link", "add", netdev, "type", "ifb")
		made = append(made, "link:"+netdev)
		must(t, os.Symlink("../../", filepath.Join(dir, "net", netdev, "device")))
		l, err := net.InterfaceByName(netdev)
		must(t, err)
		writeFake(t, filepath.Join(dir, "net", netdev, "ifindex"), fmt.Sprint(l.Index))
	}
	function(pf.pci, name, "igb")
	total := len(vfsOf(t, pciOf(t, pfNames()[0])))
	writeFake(t, filepath.Join(fakePCIDevices, pf.pci, "sriov_totalvfs"), fmt.Sprint(total))
	writeFake(t, filepath.Join(fakePCIDevices, pf.pci, "sriov_numvfs"), fmt.Sprint(total))
	for j := range total {
		vpci := fmt.Sprintf("0000:%02x:%02x.%d", bus+0x40, j/8, j%8)
		function(vpci, fmt.Sprintf("%sv%d", name, j), "igbvf")
		must(t, os.Symlink("../"+pf.pci, filepath.Join(fakePCIDevices, vpci, "physfn")))
		must(t, os.Symlink("../"+vpci, filepath.Join(fakePCIDevices, pf.pci, fmt.Sprintf("virtfn%d", j))))
		pf.vfs = append(pf.vfs, vpci)
	}
	// Listed last: discovery sees the PF only once it is whole.
	classNet := filepath.Join(fakeSysfs, "class", "net", name)
	must(t, os.Symlink("../../devices/pci0000:00/"+pf.pci+"/net/"+name, classNet))
	t.Cleanup(func() { removeFake(t, classNet) })
	return pf
}

// writeReservedFile replaces the node's reserved-interfaces file by
// rename, as an admin does; the returned func puts back what was there.
func writeReservedFile(t *testing.T, content string) func() {
	t.Helper()
	const file = "/etc/pfscni-system-reserved-interfaces"
	old, err := os.ReadFile(file)
	existed := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	put := func(content string) {
		must(t, os.WriteFile(file+".tmp", []byte(content), 0o644))
		must(t, os.Rename(file+".tmp", file))
	}
	put(content)
	return func() {
		if existed {
			put(string(old))
			return
		}
		removeFake(t, file)
	}
}

// vfsOf lists a PF's VFs from the fake tree (virtfnN), in index order.
func vfsOf(t *testing.T, pci string) []string {
	t.Helper()
	var vfs []string
	for i := 0; ; i++ {
		target, err := os.Readlink(filepath.Join(fakePCIDevices, pci, fmt.Sprintf("virtfn%d", i)))
		if errors.Is(err, fs.ErrNotExist) {
			return vfs
		}
		must(t, err)
		vfs = append(vfs, filepath.Base(target))
	}
}

// jobWrites does, on the host's sysfs, what a kubevirtci job does to the
// PFs it holds: sriov_drivers_autoprobe 0, and a driver_override of
// vfio-pci on VF 0, which stays bound to igbvf (the override only matters
// at the next probe). DEL must undo both.
func (n *seededNode) jobWrites(t *testing.T) {
	t.Helper()
	for _, pf := range n.served {
		writeFake(t, filepath.Join(fakePCIDevices, pf.pci, "sriov_drivers_autoprobe"), "0")
		override := filepath.Join(fakePCIDevices, pf.vfs[0], "driver_override")
		writeFake(t, override, "vfio-pci")
		t.Cleanup(func() { removeFake(t, override) })
	}
}

// requireHolds asserts that a job holds exactly the node's served PFs, and
// the reserved PF is still on the host under its name.
func (n *seededNode) requireHolds(t *testing.T, held []string) {
	t.Helper()
	var want []string
	for _, pf := range n.served {
		want = append(want, pf.name)
	}
	slices.Sort(held)
	slices.Sort(want)
	if !slices.Equal(held, want) {
		t.Fatalf("the job holds %v, want %v", held, want)
	}
	n.requireReservedUntouched(t)
}

// requireReservedUntouched asserts that the reserved PF and its VFs are on
// the host under their names, and its autoprobe is still the 0 it was
// seeded with: nothing brought it to the baseline.
func (n *seededNode) requireReservedUntouched(t *testing.T) {
	t.Helper()
	r := n.reserved
	names := []string{r.name}
	for j := range r.vfs {
		names = append(names, fmt.Sprintf("%sv%d", r.name, j))
	}
	for _, name := range names {
		if _, err := net.InterfaceByName(name); err != nil {
			t.Fatalf("the reserved PF's %s is not on the host: %v", name, err)
		}
	}
	if a := readFake(t, filepath.Join(fakePCIDevices, r.pci, "sriov_drivers_autoprobe")); a != "0" {
		t.Fatalf("the reserved PF %s was touched: sriov_drivers_autoprobe %s, seeded 0", r.name, a)
	}
}

// requireAtBaseline waits until the node holds no record and every device
// is home under the seeded names (requireNodeWhole, with the device list
// renamed), then asserts the baseline's SR-IOV state of each served PF:
// sriov_numvfs = sriov_totalvfs, autoprobe on, every VF on igbvf with no
// driver_override and its netdev; and the reserved PF untouched.
func (n *seededNode) requireAtBaseline(t *testing.T, when string) {
	t.Helper()
	requireNodeWhole(t)
	for _, pf := range n.served {
		dev := filepath.Join(fakePCIDevices, pf.pci)
		if name := onlyEntry(t, filepath.Join(dev, "net")); name != pf.name {
			t.Fatalf("%s: PF %s is %q in sysfs, want %s", when, pf.pci, name, pf.name)
		}
		total, num := readFake(t, filepath.Join(dev, "sriov_totalvfs")), readFake(t, filepath.Join(dev, "sriov_numvfs"))
		if num != total || len(vfsOf(t, pf.pci)) != len(pf.vfs) {
			t.Fatalf("%s: %s has sriov_numvfs %s and %d VFs, want %s", when, pf.name, num, len(vfsOf(t, pf.pci)), total)
		}
		if a := readFake(t, filepath.Join(dev, "sriov_drivers_autoprobe")); a != "1" {
			t.Fatalf("%s: %s has sriov_drivers_autoprobe %s, want 1", when, pf.name, a)
		}
		for _, vf := range pf.vfs {
			drv, _ := os.Readlink(filepath.Join(fakePCIDevices, vf, "driver"))
			override, err := os.ReadFile(filepath.Join(fakePCIDevices, vf, "driver_override"))
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Fatal(err)
			}
			if filepath.Base(drv) != "igbvf" || strings.TrimSpace(string(override)) != "" || onlyEntry(t, filepath.Join(fakePCIDevices, vf, "net")) == "" {
				t.Fatalf("%s: VF %s of %s is on %q with driver_override %q", when, vf, pf.name, filepath.Base(drv), override)
			}
		}
	}
	n.requireReservedUntouched(t)
	t.Logf("%s: %s and %s free at the baseline, %s untouched", when, n.served[0].name, n.served[1].name, n.reserved.name)
}

// requireStatus asserts what the agent's status says: the reserved PF
// ineligible because it is reserved, and each served PF under its seeded
// name, free when holders is nil, else attached with a holder in holders
// whose why contains the holder's text ("" for none).
func (n *seededNode) requireStatus(t *testing.T, when string, holders map[string]string) {
	t.Helper()
	status := agentStatus(t)
	if p := status[n.reserved.pci]; p.Phase != "ineligible" || p.Name != n.reserved.name || !strings.Contains(p.Why, "reserved") {
		t.Fatalf("%s: status of the reserved PF: %+v, want ineligible, reserved", when, p)
	}
	for _, pf := range n.served {
		p := status[pf.pci]
		if p.Name != pf.name {
			t.Fatalf("%s: status names %s %q, want %s", when, pf.pci, p.Name, pf.name)
		}
		if holders == nil {
			if p.Phase != "free" || p.Holder != nil || p.Why != "" {
				t.Fatalf("%s: status of %s: %+v, want free", when, pf.name, p)
			}
			continue
		}
		if p.Phase != "attached" || p.Holder == nil {
			t.Fatalf("%s: status of %s: %+v, want attached", when, pf.name, p)
		}
		why, ok := holders[p.Holder.Pod]
		if !ok || why == "" && p.Why != "" || !strings.Contains(p.Why, why) {
			t.Fatalf("%s: status of %s: %+v, want held by one of %v", when, pf.name, p, holders)
		}
	}
}

// agentStatusText is the agent's status as a person on the node reads it.
func agentStatusText(t *testing.T) string {
	t.Helper()
	return kubectl(t, nil, "-n", "sriov-passthrough-cni", "exec", agentPod(t), "-c", "agent", "--",
		"sriov-passthrough-agent", "status", "-host-root=/host")
}

func onlyEntry(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		return ""
	}
	return entries[0].Name()
}

func readFake(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// writeFake writes a file of the fake tree whole, creating it if need be
// (a kernel's attribute is always there; the fake tree's only once
// written).
func writeFake(t *testing.T, path, value string) {
	t.Helper()
	must(t, os.WriteFile(path, []byte(value+"\n"), 0o644))
}

func removeFake(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Error(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
