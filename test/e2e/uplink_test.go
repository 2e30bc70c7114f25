//go:build e2e

package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// stack builds one uplink topology on a real PF (pfs[0]) and registers its
// teardown: the devices it made are deleted, the PF is set back to its
// baseline admin state, and sysctls it changed get their old values.
type stack struct {
	t    *testing.T
	pf   string   // the PF's host name
	made []string // links to delete, newest last
}

func newStack(t *testing.T) *stack {
	s := &stack{t: t, pf: baseline[pfs[0].PCI].Name}
	// QEMU's user network answers router solicitations: a link that is up
	// for a few seconds gets an IPv6 default route from its advertisement,
	// which would make the PF (or a macvlan) an uplink of its own, whatever
	// the topology under test. Devices made here take "default".
	s.sysctl("/proc/sys/net/ipv6/conf/default/accept_ra", "0")
	s.sysctl("/proc/sys/net/ipv6/conf/"+s.pf+"/accept_ra", "0")
	t.Cleanup(func() {
		for i := len(s.made) - 1; i >= 0; i-- {
			_ = runQuiet("ip", "link", "del", s.made[i])
		}
		_ = runQuiet("ip", "addr", "flush", "dev", s.pf)
		if !baseline[pfs[0].PCI].Up {
			_ = runQuiet("ip", "link", "set", s.pf, "down")
		}
	})
	run(t, "ip", "link", "set", s.pf, "up")
	return s
}

func (s *stack) link(name string, args ...string) {
	run(s.t, "ip", append([]string{"link", "add"}, args...)...)
	s.made = append(s.made, name)
	run(s.t, "ip", "link", "set", name, "up")
}

// sysctl sets a sysctl of the VM's netns for the test and puts it back.
func (s *stack) sysctl(path, value string) {
	old, err := os.ReadFile(path)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { _ = os.WriteFile(path, old, 0o644) })
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// The node's uplink as operators build it on a bare-metal CI node: a VLAN
// on the PF carries the default route, a macvlan on it holds the node's
// address, the PF is a bond's port and the bond carries the default route,
// or the default route goes through a nexthop object (group) with
// nexthop_compat_mode 0, so the kernel reports the route with no device.
// Each time the pool skips the PF, pinning it is refused (code 7) with
// the chain named, and the VM is as it was once the topology is removed.
func TestUplinkTopologiesOnARealPF(t *testing.T) {
	for _, c := range []struct {
		name  string
		build func(s *stack)
		want  string
	}{
		{"VLAN", func(s *stack) {
			s.link(s.pf+".100", "link", s.pf, "name", s.pf+".100", "type", "vlan", "id", "100")
			run(t, "ip", "addr", "add", "192.0.2.10/24", "dev", s.pf+".100")
			run(t, "ip", "route", "add", "default", "via", "192.0.2.1", "dev", s.pf+".100")
		}, ": its VLAN {pf}.100 carries a default route"},
		{"macvlan", func(s *stack) {
			s.link("mv0", "mv0", "link", s.pf, "type", "macvlan", "mode", "bridge")
			run(t, "ip", "addr", "add", "192.0.2.10/24", "dev", "mv0")
		}, ": its macvlan mv0 has global address 192.0.2.10"},
		{"bond", func(s *stack) {
			s.link("bond7", "bond7", "type", "bond", "mode", "active-backup")
			run(t, "ip", "link", "set", s.pf, "down")
			run(t, "ip", "link", "set", s.pf, "master", "bond7")
			run(t, "ip", "addr", "add", "192.0.2.10/24", "dev", "bond7")
			run(t, "ip", "route", "add", "default", "via", "192.0.2.1", "dev", "bond7")
		}, ": its bond bond7 carries a default route"},
		{"nexthop group, compat mode 0", func(s *stack) {
			s.sysctl("/proc/sys/net/ipv4/nexthop_compat_mode", "0")
			// A nexthop needs its device's carrier, which igb reports a
			// moment after the link is set up.
			if err := poll(10*time.Second, func() error { return runQuiet("ip", "nexthop", "add", "id", "77", "dev", s.pf) }); err != nil {
				t.Fatalf("ip nexthop add id 77 dev %s: %v", s.pf, err)
			}
			run(t, "ip", "nexthop", "add", "id", "78", "group", "77")
			t.Cleanup(func() { _ = runQuiet("ip", "nexthop", "flush") })
			run(t, "ip", "route", "add", "default", "nhid", "78", "metric", "4000")
			t.Logf("the kernel's view: %s", run(t, "ip", "route", "show", "default"))
		}, " carries a default route"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, nil) // first: its host check runs after the topology is gone
			s := newStack(t)
			c.build(s)
			want := "uplink: " + s.pf + strings.ReplaceAll(c.want, "{pf}", s.pf)

			p := h.newPod()
			before := mustLinks(t, "")
			res := h.toolAdd(p, "net1")
			a := wholePF(p, "net1", pfs[1])
			assertAttached(t, a, res)
			assertHostLost(t, before, a)

			pinned := newHarness(t, map[string]any{"pciBusID": pfs[0].PCI})
			q := pinned.newPod()
			_, err := pinned.libAdd(q, "net1")
			if cniCode(err) != int(types.ErrInvalidNetworkConfig) || !strings.Contains(err.Error(), want) {
				if err == nil {
					t.Cleanup(func() { _ = pinned.libDel(q, "net1") })
				}
				t.Errorf("ADD pinned to the uplink: want code 7 with %q, got %v", want, err)
			}
			h.toolDel(p, "net1")
		})
	}
}
