// Command sriov-passthrough-agent is the node agent of sriov-passthrough-cni:
// a kubelet device plugin that advertises the node's SR-IOV PFs as the
// plugin would hand them out, and finishes releases as soon as devices come
// back. `sriov-passthrough-agent status` shows who holds which PF. On a node
// whose node.json says allocation dra it hands over to sriov-passthrough-dra
// (pkg/agentcmd says why that is a binary of its own).
package main

import (
	"os"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/agentcmd"
)

// version is stamped at build time: -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(agentcmd.Command{Name: "sriov-passthrough-agent", Version: version}.Main(os.Args[1:]))
}
