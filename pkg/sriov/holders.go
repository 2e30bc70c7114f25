package sriov

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Holder is a process that has a VF open through vfio.
type Holder struct {
	VF   string // PCI address
	PID  int
	Comm string
	Path string // the /dev/vfio node it holds
}

func (h Holder) String() string {
	return fmt.Sprintf("VF %s held by pid %d (%s) through %s", h.VF, h.PID, h.Comm, h.Path)
}

// vfioNodes maps the device nodes through which a VF can be held to the
// VF: its IOMMU group (/dev/vfio/N, the legacy container route) and, on
// kernels with vfio device cdevs, /dev/vfio/devices/vfioM (iommufd).
func (s Sysfs) vfioNodes(vfs []string) map[string]string {
	nodes := map[string]string{}
	for _, vf := range vfs {
		dev := s.DevicePath(vf)
		if g, err := os.Readlink(filepath.Join(dev, "iommu_group")); err == nil {
			nodes["/dev/vfio/"+filepath.Base(g)] = vf
		}
		cdevs, _ := os.ReadDir(filepath.Join(dev, "vfio-dev"))
		for _, c := range cdevs {
			nodes["/dev/vfio/devices/"+c.Name()] = vf
		}
	}
	return nodes
}

// VFIOHolders lists the processes (from the proc tree at procRoot) that
// have one of the VFs open through vfio. Unbinding vfio-pci from such a VF,
// or removing it by lowering sriov_numvfs, does not fail: the kernel waits,
// uninterruptibly, until the process lets go. Looking first is the only
// way not to hang. An open group fd alone does not block the kernel, but it
// is how a VM monitor gets at the device, so it counts too.
func (s Sysfs) VFIOHolders(procRoot string, vfs []string) ([]Holder, error) {
	nodes := s.vfioNodes(vfs)
	if len(nodes) == 0 {
		return nil, nil
	}
	procs, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var out []Holder
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fdDir := filepath.Join(procRoot, p.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if errors.Is(err, fs.ErrNotExist) {
			continue // gone meanwhile
		}
		if err != nil {
			// Without ptrace access to a process (a container without
			// CAP_SYS_PTRACE) its fds are unknown: it may hold a VF, and
			// guessing wrong hangs the node.
			return nil, fmt.Errorf("cannot see the open files of pid %d: %w", pid, err)
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil {
				continue
			}
			vf, ok := nodes[target]
			if !ok {
				continue
			}
			comm, _ := os.ReadFile(filepath.Join(procRoot, p.Name(), "comm"))
			out = append(out, Holder{VF: vf, PID: pid, Comm: strings.TrimSpace(string(comm)), Path: target})
			break
		}
	}
	return out, nil
}
