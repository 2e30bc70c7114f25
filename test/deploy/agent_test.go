package deploy_test

import (
	"maps"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
)

func container(t *testing.T, pod corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range pod.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

// The agent gets exactly what the issue lists and docs/agent.md explains: host
// network and pid, the kubelet's device-plugin dir, sysfs writable,
// /var/run/netns with HostToContainer propagation, the state dir, the
// reserved file's directory (read-only), where node.json is installed, an
// emptyDir of its own for the health socket its exec probes ask, and
// CAP_NET_ADMIN + CAP_SYS_ADMIN, plus CAP_SYS_PTRACE for the SR-IOV
// restore's vfio holder check; nothing else.
func TestAgentHasExactlyItsGrants(t *testing.T) {
	m := loadManifests(t)
	pod := m.daemonSets[0].Spec.Template.Spec
	if !pod.HostNetwork || !pod.HostPID {
		t.Error("the agent needs the host network (link events, the release path) and pid (pods' /proc/<pid>/ns/net) namespaces")
	}
	c := container(t, pod, "agent")
	sc := c.SecurityContext
	if sc == nil || (sc.Privileged != nil && *sc.Privileged) || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Fatalf("agent securityContext %+v: want unprivileged, no escalation, read-only root", sc)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}) {
		t.Errorf("capabilities %+v, want drop ALL, add NET_ADMIN, SYS_ADMIN and SYS_PTRACE", sc.Capabilities)
	}
	hostPaths := map[string]string{}
	configMaps := map[string]string{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
		if v.ConfigMap != nil {
			configMaps[v.Name] = v.ConfigMap.Name
		}
		if v.EmptyDir != nil {
			hostPaths[v.Name] = "emptyDir"
		}
	}
	type grant struct {
		host     string
		readOnly bool
		prop     corev1.MountPropagationMode
	}
	want := map[string]grant{
		"/var/lib/kubelet/device-plugins": {"/var/lib/kubelet/device-plugins", false, ""},
		"/sys":                            {"/sys", true, ""},
		"/sys/devices":                    {"/sys/devices", false, ""},
		"/sys/bus/pci":                    {"/sys/bus/pci", false, ""},
		"/var/run/netns":                  {"/var/run/netns", false, corev1.MountPropagationHostToContainer},
		config.DefaultStateDir:            {config.DefaultStateDir, false, ""},
		"/host/etc":                       {"/etc", true, ""},
		"/host/etc/sriov-passthrough-cni": {"/etc/sriov-passthrough-cni", false, ""},
		// The generator's name; rendered, it gets node.json's hash
		// (TestNodeConfigIsGenerated).
		"/config": {"configmap:" + nodeConfigName, true, ""},
		// The health socket (-health-socket's default directory): the
		// probes need no port on the node's network.
		"/run/sriov-passthrough-agent": {"emptyDir", false, ""},
	}
	got := map[string]grant{}
	for _, vm := range c.VolumeMounts {
		src := hostPaths[vm.Name]
		if cm, ok := configMaps[vm.Name]; ok {
			src = "configmap:" + cm
		}
		prop := corev1.MountPropagationMode("")
		if vm.MountPropagation != nil && *vm.MountPropagation != corev1.MountPropagationNone {
			prop = *vm.MountPropagation
		}
		got[vm.MountPath] = grant{src, vm.ReadOnly, prop}
	}
	if !maps.Equal(got, want) {
		t.Errorf("agent mounts:\n got %v\nwant %v", got, want)
	}
	// The node configuration it installs is one the plugin accepts.
	node, err := config.LoadNodeBytes(readRepoFile(t, nodeConfigFile))
	if err != nil {
		t.Errorf("node.json: %v", err)
	}
	// The plugin only warns of fields it does not know (a rollback must
	// read a later release's node.json); the shipped one has none.
	if node != nil && len(node.Unknown) != 0 {
		t.Errorf("node.json sets fields the plugin does not know: %v", node.Unknown)
	}
	// The release before logFile and logLevel reads node.json strictly: a
	// default that set them would break a rollback.
	if node != nil && (node.LogFile != "" || node.LogLevel != "") {
		t.Errorf("node.json sets logFile or logLevel, which a rollback cannot read: %+v", node)
	}
	args := strings.Join(c.Args, " ")
	if !strings.Contains(args, "-install-node-config=/config/node.json") || !strings.Contains(args, "-host-root=/host") {
		t.Errorf("agent args %q: want it to install /config/node.json under /host", args)
	}
}

// The agent's probes are exec probes of its own binary: ready while the
// kubelet has its devices, live while its loop turns. An httpGet probe
// would need a port on the node's network (hostNetwork); the probe
// command asks over the health socket in the agent's emptyDir instead.
func TestAgentProbesAskTheAgent(t *testing.T) {
	m := loadManifests(t)
	c := container(t, m.daemonSets[0].Spec.Template.Spec, "agent")
	for what, p := range map[string]*corev1.Probe{"ready": c.ReadinessProbe, "live": c.LivenessProbe} {
		want := []string{"/usr/local/bin/sriov-passthrough-agent", "probe", what}
		if p == nil || p.Exec == nil || !slices.Equal(p.Exec.Command, want) {
			t.Errorf("%s probe %+v: want exec %q", what, p, want)
			continue
		}
		// The probe command gives up after 3 s itself.
		if p.TimeoutSeconds < 4 {
			t.Errorf("%s probe timeout %ds: want more than the command's own 3 s", what, p.TimeoutSeconds)
		}
	}
	for _, port := range c.Ports {
		t.Errorf("the agent opens port %d on the node's network", port.ContainerPort)
	}
}

// grantsPage holds the grants table (| grant | why |) an admin reviews.
const grantsPage = "docs/agent.md"

// Every grant the agent container gets in deploy/ has a row in the grants
// table of grantsPage with a reason, and the table lists nothing the
// manifests do not grant: the table is what an admin reviews.
func TestGrantsTableMatchesTheManifests(t *testing.T) {
	m := loadManifests(t)
	pod := m.daemonSets[0].Spec.Template.Spec
	c := container(t, pod, "agent")
	granted := map[string]bool{}
	if pod.HostNetwork {
		granted["hostNetwork"] = true
	}
	if pod.HostPID {
		granted["hostPID"] = true
	}
	for _, vm := range c.VolumeMounts {
		granted[vm.MountPath] = true
	}
	for _, cp := range c.SecurityContext.Capabilities.Add {
		granted["CAP_"+string(cp)] = true
	}

	table := map[string]bool{}
	for _, key := range grantsTable(t, grantsPage, "| grant | why |") {
		table[key] = true
	}
	sameGrants(t, "deploy/", granted, table, grantsPage)
}

// sameGrants fails for each grant that who gives the agent without a row
// in page's grants table, and for each row that who does not grant.
func sameGrants(t *testing.T, who string, granted, table map[string]bool, page string) {
	t.Helper()
	for g := range granted {
		if !table[g] {
			t.Errorf("%s grants the agent %q, but the grants table in %s does not say why", who, g, page)
		}
	}
	for g := range table {
		if !granted[g] {
			t.Errorf("the grants table in %s lists %q, which %s does not grant the agent", page, g, who)
		}
	}
}

// grantsTable is the first column of the table under header in page, each
// row's grant as written between backquotes; a row whose reason is missing
// (or a few characters) is an error.
func grantsTable(t *testing.T, page, header string) []string {
	t.Helper()
	text := string(readRepoFile(t, page))
	start := strings.Index(text, header)
	if start < 0 {
		t.Fatalf("%s has no grants table (%s)", page, header)
	}
	var keys []string
	for _, line := range strings.Split(text[start:], "\n")[2:] {
		if !strings.HasPrefix(line, "| `") {
			break
		}
		cells := strings.Split(line, "|")
		key, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(cells[1]), "`"), "`")
		if len(cells) < 4 || len(strings.TrimSpace(cells[2])) < 10 {
			t.Errorf("grants table row %q gives no reason", line)
		}
		keys = append(keys, key)
	}
	return keys
}
