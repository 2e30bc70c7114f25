//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// BenchmarkAddDel times one ADD + DEL of a PF with its 7 VFs on the real
// igb devices (run it with test/vm/run.sh bench). Under TCG every number is
// slow; compare the lines of one run with each other, never across runs.
//
//   - plugin: the plugin binary, exec'd as a runtime does.
//   - netlink-minimum: in process, the least the kernel must do: move the 8
//     netdevs into the pod, rename the PF and set it up, and back.
//   - floor-program: E2E_FLOOR, if set, exec'd exactly like the plugin (CNI
//     environment, config on stdin); the hook for an external floor.
func BenchmarkAddDel(b *testing.B) {
	f := pfs[0]
	b.Run("plugin", func(b *testing.B) {
		benchExec(b, filepath.Join(pluginDir, "sriov-passthrough-cni"), f)
	})
	b.Run("netlink-minimum", func(b *testing.B) {
		names := []string{baseline[f.PCI].Name}
		for _, v := range vfsOf[f.PCI] {
			names = append(names, baseline[v].Name)
		}
		eachPod(b, func(path string) error { return minimumAddDel(path, names) })
	})
	if floor := os.Getenv("E2E_FLOOR"); floor != "" {
		b.Run("floor-program", func(b *testing.B) { benchExec(b, floor, f) })
	}
}

// eachPod runs op b.N times, each with a fresh netns made outside the timer.
func eachPod(b *testing.B, op func(path string) error) {
	b.Helper()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		name := fmt.Sprintf("e2e-bench%d", i)
		if err := runQuiet("ip", "netns", "add", name); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		err := op("/var/run/netns/" + name)
		b.StopTimer()
		_ = runQuiet("ip", "netns", "delete", name)
		if err != nil {
			b.Fatal(err)
		}
		if err := diffHost(); err != nil {
			b.Fatalf("after round %d: %v", i, err)
		}
		b.StartTimer()
	}
}

func benchExec(b *testing.B, bin string, f pf) {
	dir := b.TempDir()
	node := filepath.Join(dir, "node.json")
	writeNode(b, node, map[string]any{"stateDir": filepath.Join(dir, "state"), "logFile": filepath.Join(dir, "log")})
	conf, err := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": netName, "type": "sriov-passthrough-cni", "pciBusID": f.PCI})
	if err != nil {
		b.Fatal(err)
	}
	eachPod(b, func(path string) error {
		for _, cmd := range []string{"ADD", "DEL"} {
			c := exec.Command(bin)
			c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=bench", "CNI_NETNS=" + path,
				"CNI_IFNAME=net1", "CNI_PATH=" + pluginDir, "PATH=/bin:/usr/bin", nodeEnv(node)}
			c.Stdin = bytes.NewReader(conf)
			if out, err := c.CombinedOutput(); err != nil {
				return fmt.Errorf("%s %s: %w: %s", filepath.Base(bin), cmd, err, out)
			}
		}
		return nil
	})
}

func minimumAddDel(path string, names []string) error {
	host, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer host.Close()
	hostNS, err := netns.GetFromPid(1)
	if err != nil {
		return err
	}
	defer hostNS.Close()
	podNS, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer podNS.Close()
	pod, err := netlinksafe.NewHandleAt(podNS, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer pod.Close()

	for _, n := range names {
		l, err := host.LinkByName(n)
		if err == nil {
			err = host.LinkSetNsFd(l, int(podNS))
		}
		if err != nil {
			return fmt.Errorf("move %q to the pod: %w", n, err)
		}
	}
	l, err := pod.LinkByName(names[0])
	if err == nil {
		err = pod.LinkSetName(l, "net1")
	}
	if err == nil {
		err = pod.LinkSetUp(l)
	}
	if err == nil {
		err = pod.LinkSetDown(l)
	}
	if err == nil {
		err = pod.LinkSetName(l, names[0])
	}
	if err != nil {
		return fmt.Errorf("PF in the pod: %w", err)
	}
	for _, n := range names {
		l, err := pod.LinkByName(n)
		if err == nil {
			err = pod.LinkSetNsFd(l, int(hostNS))
		}
		if err != nil {
			return fmt.Errorf("move %q back: %w", n, err)
		}
	}
	return nil
}
