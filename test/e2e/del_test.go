//go:build e2e

package e2e

import (
	"strings"
	"testing"
)

// DEL gives every device back under its original name, MTU and admin state,
// whatever the workload did to them; a second DEL has nothing to do and succeeds.
func TestDelRestoresNamesAndIsIdempotent(t *testing.T) {
	h := newHarness(t, nil)
	p := h.newPod()
	res := h.toolAdd(p, "net1")
	a := wholePF(p, "net1", pfs[0])
	assertAttached(t, a, res)

	// The workload renames the PF and two VFs inside its netns (one VF
	// takes another's host name) and sets a third up with another MTU.
	vf0, vf2, vf6 := baseline[a.vfs[0]].Name, baseline[a.vfs[2]].Name, baseline[a.vfs[6]].Name
	run(t, "ip", "-n", p.name, "link", "set", "net1", "down")
	run(t, "ip", "-n", p.name, "link", "set", "net1", "name", "wl0")
	run(t, "ip", "-n", p.name, "link", "set", vf0, "name", "wlvf0")
	run(t, "ip", "-n", p.name, "link", "set", vf6, "name", vf0)
	run(t, "ip", "-n", p.name, "link", "set", vf2, "mtu", "1400", "up")

	if _, err := h.cnitool("del", netName, p.path, "-i", "net1"); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	assertRestored(t, a.pcis()...)
	assertPodHolds(t, p)
	if r := h.records(); len(r) != 0 {
		t.Errorf("state records left after DEL: %v", r)
	}
	if _, err := h.cnitool("del", netName, p.path, "-i", "net1"); err != nil {
		t.Errorf("second DEL: %v", err)
	}
	assertRestored(t, a.pcis()...)
}

// The pod's netns is deleted without a DEL (a crashed runtime): the kernel
// puts the PF and VFs back in the host netns under the names they had in the
// pod; DEL, with CNI_NETNS now gone, must still give them their names back.
func TestDelAfterPodNetnsDeleted(t *testing.T) {
	h := newHarness(t, nil)
	p := h.newPod()
	res := h.toolAdd(p, "net1")
	a := wholePF(p, "net1", pfs[0])
	assertAttached(t, a, res)

	p.remove()
	host := waitOnHost(t, a.pcis()...)
	t.Logf("after the pod netns died the PF is back on the host as %v", host[a.pf.PCI])

	if _, err := h.cnitool("del", netName, p.path, "-i", "net1"); err != nil {
		t.Fatalf("DEL after the netns died: %v", err)
	}
	assertRestored(t, a.pcis()...)
	if r := h.records(); len(r) != 0 {
		t.Errorf("state records left after DEL: %v", r)
	}
}

// The workload moved the PF and a VF on into a nested netns (a kind node,
// say) that then died: the kernel returns them to the host netns, not to the
// pod. DEL finds them there by PCI address.
func TestDelAfterNestedNetnsDied(t *testing.T) {
	for _, tc := range []struct {
		name       string
		podDiesToo bool
	}{
		{"pod alive", false},
		{"pod dead too", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			p := h.newPod()
			inner := h.newPod()
			res := h.toolAdd(p, "net1")
			a := wholePF(p, "net1", pfs[0])
			assertAttached(t, a, res)

			vf := baseline[a.vfs[3]].Name
			run(t, "ip", "-n", p.name, "link", "set", "net1", "netns", inner.name)
			run(t, "ip", "-n", p.name, "link", "set", vf, "netns", inner.name)
			assertPodHolds(t, inner, a.pf.PCI, a.vfs[3])
			inner.remove()
			waitOnHost(t, a.pf.PCI, a.vfs[3])
			if tc.podDiesToo {
				p.remove()
				waitOnHost(t, a.pcis()...)
			}

			if _, err := h.cnitool("del", netName, p.path, "-i", "net1"); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			assertRestored(t, a.pcis()...)
			if !tc.podDiesToo {
				assertPodHolds(t, p)
			}
		})
	}
}

// CHECK passes after ADD and still passes once a VF has been moved out by
// hand (a job may re-create or rebind VFs: reported, not failed); it fails
// once the PF is not CNI_IFNAME in the pod. DEL still restores everything,
// the strayed VF included.
func TestCheck(t *testing.T) {
	t.Run("cnitool", func(t *testing.T) {
		h := newHarness(t, nil)
		p := h.newPod()
		h.toolAdd(p, "net1")
		if _, err := h.cnitool("check", netName, p.path, "-i", "net1"); err != nil {
			t.Fatalf("CHECK right after ADD: %v", err)
		}
		vf := baseline[vfsOf[pfs[0].PCI][2]].Name
		run(t, "ip", "-n", p.name, "link", "set", vf, "netns", "1")
		if _, err := h.cnitool("check", netName, p.path, "-i", "net1"); err != nil {
			t.Errorf("CHECK with VF %s moved out of the pod: %v", vf, err)
		}
	})

	t.Run("libcni", func(t *testing.T) {
		h := newHarness(t, nil)
		p := h.newPod()
		res := h.mustLibAdd(p, "net1")
		if err := h.libCheck(p, "net1"); err != nil {
			t.Fatalf("CHECK right after ADD: %v", err)
		}
		vfPCI := vfsOf[res.pf().PciID][5]
		run(t, "ip", "-n", p.name, "link", "set", baseline[vfPCI].Name, "netns", "1")
		if err := h.libCheck(p, "net1"); err != nil {
			t.Errorf("CHECK with VF %s moved out of the pod: %v", baseline[vfPCI].Name, err)
		}
		// The kernel renames only a device that is down (before 6.2).
		run(t, "ip", "-n", p.name, "link", "set", "net1", "down")
		run(t, "ip", "-n", p.name, "link", "set", "net1", "name", "renamed")
		if err := h.libCheck(p, "net1"); err == nil || !strings.Contains(err.Error(), `is not in the pod as "net1"`) {
			t.Errorf("CHECK with the PF renamed in the pod: want it named, got %v", err)
		}
		if err := h.libDel(p, "net1"); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		assertRestored(t, append([]string{res.pf().PciID}, vfsOf[res.pf().PciID]...)...)
	})
}
