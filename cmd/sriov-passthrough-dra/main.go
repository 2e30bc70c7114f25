// Command sriov-passthrough-dra is the node agent of sriov-passthrough-cni
// with its DRA mode: on a node whose node.json says allocation dra it is a
// DRA kubelet plugin of the driver sriov-passthrough.kubevirt.io, publishing
// one device per PF in the node's ResourceSlice (docs/dra.md). Otherwise it
// is the device plugin, as sriov-passthrough-agent is, which starts it.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/agent"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/agentcmd"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/claims"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/dra"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
)

// version is stamped at build time: -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(agentcmd.Command{Name: agentcmd.DRABinary, Version: version, DRA: newDRAPlugin}.Main(os.Args[1:]))
}

// newDRAPlugin is the agent as a DRA kubelet plugin: it talks to the API
// server with the pod's service account, which only the DRA component
// mounts and grants.
func newDRAPlugin(o agentcmd.Options, a *agent.Agent, log *slog.Logger) (agentcmd.DRARunner, error) {
	if o.NodeName == "" {
		return nil, errors.New("allocation is dra: -node-name (or NODE_NAME) must name this node, whose ResourceSlice the agent publishes")
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("allocation is dra: the agent needs the API server (the DRA component mounts its service account token): %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("allocation is dra: %w", err)
	}
	d := &dra.Driver{NodeName: o.NodeName, Resource: o.Resource, Sys: sriov.Sysfs{Root: a.Conf.SysfsRoot},
		Claims: claims.For(a.Conf.StateDir), CDI: dra.CDI{Dir: o.CDIDir}, Log: log}
	a.Publish = d.Update
	return &dra.Plugin{Driver: d, Client: client, RegistrarDir: o.PluginsRegistry, DataDir: o.DRAPluginDir,
		PodUID: o.PodUID}, nil
}
