//go:build e2e

package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"
)

// The VFIO ioctls a VM monitor uses to get at a device (linux/vfio.h):
// _IO(VFIO_TYPE ';', VFIO_BASE 100 + n).
const (
	vfioSetIOMMU          = 0x3b00 + 100 + 2
	vfioGroupSetContainer = 0x3b00 + 100 + 4
	vfioGroupGetDeviceFD  = 0x3b00 + 100 + 6
	vfioType1IOMMU        = 1
)

// holdVF opens a VF the way QEMU does (a container, the VF's group set
// into it with the type1 IOMMU, then the device fd), prints "holding" and
// keeps it open until stdin closes. Run as a child of the test binary
// (E2E_HOLD_VF), so the test can make it exit.
func holdVF(vf string) error {
	group, err := vfioGroup(vf)
	if err != nil {
		return err
	}
	container, err := unix.Open("/dev/vfio/vfio", unix.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open /dev/vfio/vfio: %w", err)
	}
	g, err := unix.Open("/dev/vfio/"+group, unix.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open /dev/vfio/%s: %w", group, err)
	}
	c := int32(container)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(g), vfioGroupSetContainer, uintptr(unsafe.Pointer(&c))); e != 0 {
		return fmt.Errorf("VFIO_GROUP_SET_CONTAINER: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(container), vfioSetIOMMU, vfioType1IOMMU); e != 0 {
		return fmt.Errorf("VFIO_SET_IOMMU: %w", e)
	}
	name, err := unix.BytePtrFromString(vf)
	if err != nil {
		return err
	}
	dev, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(g), vfioGroupGetDeviceFD, uintptr(unsafe.Pointer(name)))
	if e != 0 {
		return fmt.Errorf("VFIO_GROUP_GET_DEVICE_FD %s: %w", vf, e)
	}
	if os.Getenv("E2E_HOLD_VF_DEVICE_ONLY") != "" {
		// What a VM monitor may keep: the device fd alone. Its link names
		// no device (anon_inode:[vfio-device]); it keeps the group's file
		// alive inside the kernel, but no fd of this process names it.
		unix.Close(g)
		unix.Close(container)
	}
	fmt.Printf("holding %s (device fd %d)\n", vf, dev)
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	return nil
}

// startHolder runs holdVF in a child process and waits until it holds the
// VF; the returned func makes it exit and waits for it.
func startHolder(t *testing.T, vf string) func() {
	t.Helper()
	return startHolderIn(t, vf, nil)
}

// startHolderIn is startHolder with the holder's own environment added and
// its process attributes (namespaces) set.
func startHolderIn(t *testing.T, vf string, attr *syscall.SysProcAttr, env ...string) func() {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), "E2E_HOLD_VF="+vf), env...)
	cmd.SysProcAttr = attr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop := func() {
		stdin.Close()
		_ = cmd.Wait()
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "holding") {
		stop()
		t.Fatalf("VFIO holder for %s did not start: %q %v", vf, line, err)
	}
	return stop
}

// A VM under test still holds a VF through vfio when the pod's DEL comes:
// DEL returns (the kernel would block in the unbind, with the node's lock
// held, so the plugin must not try), every netdev is home, the PF is
// reported unavailable, and once the holder is gone a GC restores the rest.
func TestDelWhileAVFIsHeldThroughVFIO(t *testing.T) {
	h := newHarness(t, map[string]any{"pciBusID": pfs[0].PCI})
	before := mustSnapshot(t)
	j := startJob(t, h, pfs[0].PCI)
	stop := startHolder(t, vfsOf[j.pf][0])
	held := true
	t.Cleanup(func() {
		if held {
			stop()
		}
	})
	delWhileHeld(t, h, j, vfsOf[j.pf][0])
	stop()
	held = false
	j.pod.remove()
	gc(t, h)
	assertNodeAsBefore(t, h, before, "the holder exited and GC ran")
}

// Holders the old check missed (issue 17): a VM monitor in a pid
// namespace of its own (a container) that keeps only the device fd, whose
// link in /proc names no device. DEL returns with every netdev home and
// writes nothing the kernel would block on; the PF stays out of the pool
// with the holder named; the node keeps serving its other PF; once the
// holder is gone GC restores the rest.
func TestDelWhileAVFIsHeldByADeviceFDInAnotherPIDNamespace(t *testing.T) {
	h := newHarness(t, map[string]any{"pciBusID": pfs[0].PCI})
	other := newHarness(t, map[string]any{"pciBusID": pfs[1].PCI})
	before := mustSnapshot(t)
	j := startJob(t, h, pfs[0].PCI)
	vf := vfsOf[j.pf][0]
	stop := startHolderIn(t, vf, &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL},
		"E2E_HOLD_VF_DEVICE_ONLY=1")
	held := true
	t.Cleanup(func() {
		if held {
			stop()
		}
	})
	delWhileHeld(t, h, j, vf)
	// The node keeps serving: the other PF is handed out and given back.
	p := other.newPod()
	if _, err := other.libAdd(p, "net1"); err != nil {
		t.Fatalf("ADD of the other PF while a VF of the first is held: %v", err)
	}
	if err := other.libDel(p, "net1"); err != nil {
		t.Fatalf("DEL of the other PF: %v", err)
	}
	p.remove()
	stop()
	held = false
	j.pod.remove()
	gc(t, h)
	assertNodeAsBefore(t, h, before, "the holder exited and GC ran")
}

// delWhileHeld ends a job whose VF vf a process holds through vfio (its PF
// moved back into the pod's netns, the kind node gone) and runs DEL: it
// must return (never block in the kernel) with the PF home, and an ADD of
// that PF must then say code 11, naming the VF.
func delWhileHeld(t *testing.T, h *harness, j *job, vf string) {
	t.Helper()
	run(t, "ip", "-n", j.kind.name, "link", "set", "net1", "netns", j.pod.name)
	j.kind.remove()
	done := make(chan error, 1)
	go func() { done <- h.libDel(j.pod, "net1") }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("DEL with a held VF: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("DEL with a VF held through vfio did not return: the plugin blocks in the kernel")
	}
	if _, ok := mustLinks(t, "")[j.pf]; !ok {
		t.Errorf("PF %s is not on the host after DEL", j.pf)
	}
	_, err := h.libAdd(h.newPod(), "net1")
	if cniCode(err) != int(types.ErrTryAgainLater) || !strings.Contains(err.Error(), vf) {
		t.Errorf("ADD of the PF whose VF is held: %v, want code 11 naming %s", err, vf)
	}
	t.Logf("ADD of the held PF: %v", err)
}
