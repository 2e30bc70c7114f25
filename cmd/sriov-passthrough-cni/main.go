// Command sriov-passthrough-cni is a CNI plugin that hands a whole SR-IOV
// NIC (a free PF and all its VFs) to a pod and takes it back on DEL.
package main

import (
	"fmt"
	"os"
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/plugin"
)

// version is stamped at build time: -ldflags "-X main.version=...".
var version = "dev"

func init() {
	// Namespace switches apply to one OS thread: keep main on one.
	runtime.LockOSThread()
}

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "--version" || os.Args[1] == "-version") {
		fmt.Printf("sriov-passthrough-cni %s\n", version)
		return
	}
	skel.PluginMainFuncs(plugin.New().Funcs(), plugin.SupportedVersions,
		fmt.Sprintf("sriov-passthrough-cni %s: hands a whole SR-IOV PF and its VFs to a pod", version))
}
