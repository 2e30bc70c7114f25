package modules_test

import (
	"strings"
	"testing"
)

// The CNI plugin is exec'd for every attachment: the node agent's gRPC and
// kubelet API stay in the agent's binary, out of the plugin's.
func TestPluginBinaryHasNoAgentDependencies(t *testing.T) {
	root := repoRoot(t)
	deps := strings.Fields(goOutput(t, root, "list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}", "./cmd/sriov-passthrough-cni"))
	for _, d := range deps {
		if d == "google.golang.org/grpc" || d == "k8s.io/kubelet" || d == "google.golang.org/protobuf" {
			t.Errorf("the plugin binary depends on %s", d)
		}
	}
	agent := goOutput(t, root, "list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}", "./cmd/sriov-passthrough-agent")
	if !strings.Contains(agent, "google.golang.org/grpc") {
		t.Error("the agent does not depend on grpc: the check above proves nothing")
	}
}
