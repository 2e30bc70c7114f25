//go:build e2e

package e2e

import (
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"
)

// attachment is what one ADD should have moved: a PF and the VFs (PCI
// addresses) that had a netdev, with the names the VFs should have in the pod.
type attachment struct {
	pod    *pod
	ifname string
	pf     pf
	vfs    []string
	names  map[string]string // VF PCI -> name in the pod, when not its host name
}

func wholePF(p *pod, ifname string, f pf) attachment {
	return attachment{pod: p, ifname: ifname, pf: f, vfs: vfsOf[f.PCI]}
}

func (a attachment) pcis() []string { return append([]string{a.pf.PCI}, a.vfs...) }

// assertAttached checks the pod netns, its sysfs view and the CNI result
// against what the kernel reports, device by device.
func assertAttached(t *testing.T, a attachment, res *result) {
	t.Helper()
	inPod := mustLinks(t, a.pod.path)
	pfl, ok := inPod[a.pf.PCI]
	if !ok {
		t.Fatalf("PF %s is not in pod %s (pod has %v)", a.pf, a.pod.name, inPod)
	}
	if pfl.Name != a.ifname {
		t.Errorf("PF %s is named %q in the pod, want %q", a.pf, pfl.Name, a.ifname)
	}
	if !pfl.Up {
		t.Errorf("PF %s is down in the pod", a.pf)
	}
	// sysfs as the workload sees it: ip netns exec mounts the pod's own view.
	out, err := exec.Command("ip", "netns", "exec", a.pod.name, "cat",
		"/sys/class/net/"+a.ifname+"/device/sriov_totalvfs").CombinedOutput()
	if got := strings.TrimSpace(string(out)); err != nil || got != fmt.Sprint(a.pf.TotalVFs) {
		t.Errorf("pod sysfs /sys/class/net/%s/device/sriov_totalvfs = %q (%v), want %d", a.ifname, got, err, a.pf.TotalVFs)
	}
	for _, v := range a.vfs {
		l, ok := inPod[v]
		if !ok {
			t.Errorf("VF %s (%s on the host) is not in pod %s", v, baseline[v].Name, a.pod.name)
			continue
		}
		want := baseline[v].Name
		if n, ok := a.names[v]; ok {
			want = n
		}
		if l.Name != want {
			t.Errorf("VF %s is named %q in the pod, want %q", v, l.Name, want)
		}
	}

	if res == nil {
		return
	}
	if len(res.Interfaces) != 1+len(a.vfs) {
		t.Errorf("result lists %d interfaces, want %d (PF + %d VFs): %+v", len(res.Interfaces), 1+len(a.vfs), len(a.vfs), res.Interfaces)
	}
	if len(res.Interfaces) == 0 {
		return
	}
	wantIface := func(l link) iface {
		return iface{Name: l.Name, Mac: l.MAC, Mtu: l.MTU, Sandbox: a.pod.path, PciID: l.PCI}
	}
	if got, want := res.pf(), wantIface(pfl); got != want {
		t.Errorf("result's last interface = %+v, want the PF as the kernel shows it: %+v", got, want)
	}
	var got, want []string
	for _, i := range res.Interfaces[:len(res.Interfaces)-1] {
		got = append(got, fmt.Sprintf("%+v", i))
	}
	for _, v := range a.vfs {
		if l, ok := inPod[v]; ok {
			want = append(want, fmt.Sprintf("%+v", wantIface(l)))
		}
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("result VFs differ from the pod's VFs:\n got: %s\nwant: %s", strings.Join(got, "\n      "), strings.Join(want, "\n      "))
	}
}

// assertHostLost checks that the host netns lost exactly the devices of the
// given attachments compared with before, and that nothing else changed.
func assertHostLost(t *testing.T, before map[string]link, as ...attachment) {
	t.Helper()
	after := mustLinks(t, "")
	gone := map[string]bool{}
	for _, a := range as {
		for _, p := range a.pcis() {
			gone[p] = true
		}
	}
	for pci, b := range before {
		a, ok := after[pci]
		switch {
		case gone[pci] && ok:
			t.Errorf("%v should have left the host netns, it is still there as %v", b, a)
		case !gone[pci] && !ok:
			t.Errorf("%v left the host netns but belongs to no attachment", b)
		case !gone[pci] && a.Name != b.Name:
			t.Errorf("%v was renamed on the host to %q", b, a.Name)
		}
	}
	for pci, a := range after {
		if _, ok := before[pci]; !ok {
			t.Errorf("%v appeared on the host", a)
		}
	}
}

// assertPodHolds checks that a pod netns holds exactly these PCI devices.
func assertPodHolds(t *testing.T, p *pod, pcis ...string) {
	t.Helper()
	inPod := mustLinks(t, p.path)
	want := map[string]bool{}
	for _, x := range pcis {
		want[x] = true
		if _, ok := inPod[x]; !ok {
			t.Errorf("pod %s lacks %s (%s on the host)", p.name, x, baseline[x].Name)
		}
	}
	for x, l := range inPod {
		if !want[x] {
			t.Errorf("pod %s holds unexpected %v", p.name, l)
		}
	}
}

// assertRestored checks right after a DEL (no waiting) that the devices are
// back on the host with their original names, MACs, MTUs and admin states.
func assertRestored(t *testing.T, pcis ...string) {
	t.Helper()
	host := mustLinks(t, "")
	for _, x := range pcis {
		want := baseline[x]
		got, ok := host[x]
		switch {
		case !ok:
			t.Errorf("%v is not back on the host", want)
		case got.Name != want.Name:
			t.Errorf("%s came back as %q, want its original name %q", x, got.Name, want.Name)
		case got.MAC != want.MAC || got.MTU != want.MTU || got.Up != want.Up:
			t.Errorf("%s came back as %v, want %v", x, got, want)
		case !slices.Equal(got.AltNames, want.AltNames):
			t.Errorf("%s came back with altnames %q, it had %q", x, got.AltNames, want.AltNames)
		}
	}
}

// waitOnHost waits until every device is in the host netns again, under
// any name (the kernel returns physical netdevs of a dead netns to init_net).
func waitOnHost(t *testing.T, pcis ...string) map[string]link {
	t.Helper()
	var host map[string]link
	err := poll(30e9, func() error {
		var err error
		if host, _, err = netnsLinks(""); err != nil {
			return err
		}
		for _, x := range pcis {
			if _, ok := host[x]; !ok {
				return fmt.Errorf("%s (%s) is not back in the host netns", x, baseline[x].Name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return host
}
