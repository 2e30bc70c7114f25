//go:build e2e

package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
)

// restoreTimes collects the timed part of each BenchmarkRestore case, so
// the ratio of the plugin to the kernel's own work is printed at the end.
var restoreTimes = map[string]time.Duration{}

// BenchmarkRestore times the DEL that follows a kind-sriov job: the PF back
// from the pod, the 6 re-created VFs (two on vfio-pci) replaced by the 7
// the node had, their netdevs renamed and given their MACs back.
//
//   - plugin: the plugin's DEL, exec'd as a runtime does.
//   - kernel-minimum: the same work in process, as little as the kernel
//     needs: the PF renamed and moved home and set up, sriov_numvfs 0 then 7
//     (which unbinds vfio-pci with the VFs), then each new VF netdev renamed
//     and given its MAC.
func BenchmarkRestore(b *testing.B) {
	f := pfs[0]
	b.Run("plugin", func(b *testing.B) { benchRestore(b, f, true) })
	b.Run("kernel-minimum", func(b *testing.B) { benchRestore(b, f, false) })
	p, k := restoreTimes["plugin"], restoreTimes["kernel-minimum"]
	if p > 0 && k > 0 {
		fmt.Printf("bench restore: plugin %v/op, kernel-minimum %v/op, plugin/minimum %.2f\n",
			p.Round(time.Millisecond), k.Round(time.Millisecond), float64(p)/float64(k))
		printSteps(b, "restore DEL", "DEL", restoreLog)
	}
}

// restoreLog is the plugin's debug log of BenchmarkRestore's last run.
var restoreLog []byte

func benchRestore(b *testing.B, f pf, plugin bool) {
	node, logFile, conf := benchNode(b, f)
	if plugin {
		defer func() { restoreLog, _ = os.ReadFile(logFile) }()
	}
	bin := filepath.Join(pluginDir, "sriov-passthrough-cni")
	exec1 := func(cmd, path string) error {
		if out, err := pluginCmd(bin, cmd, path, node, conf).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", cmd, err, out)
		}
		return nil
	}
	var timed time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		name := fmt.Sprintf("e2e-bench-restore%d", i)
		path := "/var/run/netns/" + name
		if err := runQuiet("ip", "netns", "add", name); err != nil {
			b.Fatal(err)
		}
		err := exec1("ADD", path)
		if err == nil {
			err = playJobOnPF(f)
		}
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		b.StartTimer()
		if plugin {
			err = exec1("DEL", path)
		} else {
			err = minimumRestore(f, path)
		}
		b.StopTimer()
		timed += time.Since(start)
		_ = runQuiet("ip", "netns", "delete", name)
		if !plugin {
			// The minimum did the plugin's DEL by hand: its record goes too.
			_ = os.RemoveAll(filepath.Join(filepath.Dir(node), "state"))
		}
		if err != nil {
			b.Fatal(err)
		}
		if err := poll(10*time.Second, diffHost); err != nil {
			b.Fatalf("after round %d: %v", i, err)
		}
		b.StartTimer()
	}
	label := "kernel-minimum"
	if plugin {
		label = "plugin"
	}
	restoreTimes[label] = timed / time.Duration(b.N)
}

// playJobOnPF does to a PF in a pod what the job does, without the kind
// node (its netns moves are the job's time, not the restore's).
func playJobOnPF(f pf) error {
	numvfs := filepath.Join(pciDevices, f.PCI, "sriov_numvfs")
	for _, n := range []string{"0", "6"} {
		if err := writeSysfs(numvfs, n); err != nil {
			return err
		}
	}
	for _, vf := range vfsOf[f.PCI][:2] {
		if err := poll(10*time.Second, func() error {
			_, err := os.Stat(filepath.Join(pciDevices, vf))
			return err
		}); err != nil {
			return err
		}
		if err := bindVFIO(vf); err != nil {
			return err
		}
	}
	return nil
}

func minimumRestore(f pf, path string) error {
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
	want := baseline[f.PCI]
	l, err := pod.LinkByName("net1")
	if err == nil {
		err = pod.LinkSetDown(l)
	}
	if err == nil {
		err = pod.LinkSetName(l, want.Name)
	}
	if err == nil {
		err = pod.LinkSetNsFd(l, int(hostNS))
	}
	if err != nil {
		return fmt.Errorf("PF home: %w", err)
	}
	if err := minimumNewVFs(host, f); err != nil {
		return err
	}
	// The PF still carries the plugin's tag, on a kernel that names no
	// parent device (the VFs' went with them).
	if l, err = host.LinkByName(want.Name); err == nil && slices.Contains(l.Attrs().AltNames, netdev.Tag(f.PCI)) {
		err = host.LinkDelAltName(l, netdev.Tag(f.PCI))
	}
	if err == nil && want.Up {
		err = host.LinkSetUp(l)
	}
	return err
}

// minimumNewVFs re-creates the VFs and gives their netdevs the names and
// MACs they had (through temporary names: the kernel's may clash).
func minimumNewVFs(host netlinksafe.Handle, f pf) error {
	numvfs := filepath.Join(pciDevices, f.PCI, "sriov_numvfs")
	if err := writeSysfs(numvfs, "0"); err != nil {
		return err
	}
	if err := writeSysfs(numvfs, strconv.Itoa(f.TotalVFs)); err != nil {
		return err
	}
	var links map[string]netlink.Link
	if err := poll(10*time.Second, func() error {
		list, err := host.LinkList()
		if err != nil {
			return err
		}
		links = map[string]netlink.Link{}
		for _, l := range list {
			links[l.Attrs().ParentDev] = l
		}
		for _, v := range vfsOf[f.PCI] {
			if _, ok := links[v]; !ok {
				return fmt.Errorf("VF %s has no netdev yet", v)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	for i, v := range vfsOf[f.PCI] {
		if err := host.LinkSetName(links[v], fmt.Sprintf("benchtmp%d", i)); err != nil {
			return err
		}
	}
	for _, v := range vfsOf[f.PCI] {
		want := baseline[v]
		l := links[v]
		err := host.LinkSetName(l, want.Name)
		if err == nil && l.Attrs().HardwareAddr.String() != want.MAC {
			var mac net.HardwareAddr
			if mac, err = net.ParseMAC(want.MAC); err == nil {
				err = host.LinkSetHardwareAddr(l, mac)
			}
		}
		if err == nil && want.Up {
			err = host.LinkSetUp(l)
		}
		if err != nil {
			return fmt.Errorf("VF %s: %w", v, err)
		}
	}
	return nil
}
