package plugin

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"
)

// MinKernel is the oldest kernel the plugin hands PFs out on: the VM
// suite proves ADD, DEL and the kind-sriov lane on Debian 11's 5.10,
// 6.1 and 6.12. Altnames, the tag that follows a device through moves and
// renames, need 5.5; older kernels than 5.10 are not tested.
var MinKernel = KernelVersion{5, 10}

// KernelVersion is a kernel release's major and minor number.
type KernelVersion struct{ Major, Minor int }

func (v KernelVersion) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

// Less reports whether v is an older kernel than w.
func (v KernelVersion) Less(w KernelVersion) bool {
	return v.Major < w.Major || v.Major == w.Major && v.Minor < w.Minor
}

// ParseKernelRelease reads the major and minor number of a kernel release
// as uname(2) gives it: "5.10.0-32-amd64", "6.12.95+deb12-amd64", "6.18".
func ParseKernelRelease(release string) (KernelVersion, error) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return KernelVersion{}, fmt.Errorf("kernel release %q: want major.minor", release)
	}
	minor := parts[1]
	if i := strings.IndexFunc(minor, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minor = minor[:i] // "4-rc1" of a two-part "6.4-rc1"
	}
	maj, err1 := strconv.Atoi(parts[0])
	min, err2 := strconv.Atoi(minor)
	if err1 != nil || err2 != nil || maj < 0 || min < 0 {
		return KernelVersion{}, fmt.Errorf("kernel release %q: want major.minor", release)
	}
	return KernelVersion{maj, min}, nil
}

// kernelRelease is the running kernel's release, or the one the Plugin
// was given.
func (p *Plugin) kernelRelease() (string, error) {
	if p.KernelRelease != "" {
		return p.KernelRelease, nil
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// checkKernel refuses a kernel older than MinKernel, before ADD changes
// anything. DEL and GC never ask: what an older binary or kernel left
// behind must still be released.
func (p *Plugin) checkKernel() error {
	release, err := p.kernelRelease()
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "cannot tell the kernel's version", err.Error())
	}
	v, err := ParseKernelRelease(release)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "cannot tell the kernel's version", err.Error())
	}
	if v.Less(MinKernel) {
		return types.NewError(types.ErrPluginNotAvailable,
			fmt.Sprintf("kernel %s is older than %s, the oldest sriov-passthrough-cni supports", release, MinKernel),
			"no PF is handed out on this node; run its SR-IOV jobs on nodes with kernel "+MinKernel.String()+" or later")
	}
	return nil
}
