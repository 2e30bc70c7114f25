//go:build e2e

package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// With ipam configured, ADD runs the IPAM plugin (host-local here) and puts
// its address on the PF in the pod; DEL releases it and the host gets its
// devices back as they were.
func TestIPAMAddressOnPF(t *testing.T) {
	dataDir := t.TempDir()
	h := newHarness(t, map[string]any{
		"ipam": map[string]any{
			"type":    "host-local",
			"subnet":  "192.0.2.0/24",
			"dataDir": dataDir,
		},
	})
	p := h.newPod()
	res := h.toolAdd(p, "net1")
	assertAttached(t, wholePF(p, "net1", pfs[0]), res)

	if len(res.IPs) != 1 {
		t.Fatalf("result has %d IPs, want 1 from host-local: %+v", len(res.IPs), res.IPs)
	}
	ip, ok := res.IPs[0].(map[string]any)
	if !ok {
		t.Fatalf("result ips[0] = %#v", res.IPs[0])
	}
	want, _ := ip["address"].(string)
	got, err := addrsOf(p.path, "net1")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, want) {
		t.Errorf("net1 in the pod has addresses %v, the result says %s", got, want)
	}
	if _, n, err := net.ParseCIDR(want); err != nil || n.String() != "192.0.2.0/24" {
		t.Errorf("address %q is not from the configured subnet", want)
	}

	// host-local keeps one file per lease, named by the address.
	lease := filepath.Join(dataDir, netName, strings.Split(want, "/")[0])
	if _, err := os.Stat(lease); err != nil {
		t.Errorf("host-local has no lease for %s: %v", want, err)
	}

	h.toolDel(p, "net1")
	assertRestored(t, wholePF(p, "net1", pfs[0]).pcis()...)
	if _, err := os.Stat(lease); err == nil {
		t.Errorf("DEL did not release the IPAM lease %s", lease)
	}
}

func addrsOf(path, name string) ([]string, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	hd, err := netlinksafe.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer hd.Close()
	l, err := hd.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", name, path, err)
	}
	addrs, err := hd.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range addrs {
		out = append(out, a.IPNet.String())
	}
	return out, nil
}
