package deploy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
)

// networkAttachmentDefinition is the multus CRD's shape
// (k8s.cni.cncf.io/v1); k8s.io/api has no type for it.
type networkAttachmentDefinition struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Config string `json:"config"`
	} `json:"spec"`
}

// kustomization holds the fields deploy/kustomization.yaml may use.
type kustomization struct {
	metav1.TypeMeta    `json:",inline"`
	Resources          []string             `json:"resources"`
	ConfigMapGenerator []configMapGenerator `json:"configMapGenerator,omitempty"`
	Labels             []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors,omitempty"`
		IncludeTemplates bool              `json:"includeTemplates,omitempty"`
	} `json:"labels,omitempty"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
}

type configMapGenerator struct {
	Name      string   `json:"name"`
	Namespace string   `json:"namespace,omitempty"`
	Behavior  string   `json:"behavior,omitempty"`
	Files     []string `json:"files,omitempty"`
	Options   struct {
		Labels                map[string]string `json:"labels,omitempty"`
		DisableNameSuffixHash bool              `json:"disableNameSuffixHash,omitempty"`
	} `json:"options,omitempty"`
}

// manifests is everything in deploy/, decoded strictly.
type manifests struct {
	namespaces    []corev1.Namespace
	configMaps    []corev1.ConfigMap
	daemonSets    []appsv1.DaemonSet
	nads          []networkAttachmentDefinition
	kustomization *kustomization
	files         []string // every YAML file, relative to deploy/
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// decodeStrict rejects unknown and duplicate fields, as the API server's
// strict field validation does.
func decodeStrict(doc []byte, into any) error {
	return yaml.UnmarshalStrict(doc, into)
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "deploy")
	var m manifests
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// Components are not deploy/'s resources; each is checked
			// rendered, as an overlay uses it.
			if path == filepath.Join(dir, "components") {
				return filepath.SkipDir
			}
			return nil
		}
		if ext := filepath.Ext(path); ext != ".yaml" && ext != ".yml" {
			return nil
		}
		rel, _ := filepath.Rel(dir, path)
		m.files = append(m.files, rel)
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, doc := range docSeparator.Split(string(data), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			if err := m.add([]byte(doc)); err != nil {
				t.Errorf("deploy/%s document %d: %v", rel, i+1, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *manifests) add(doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 Namespace":
		var o corev1.Namespace
		if err := decodeStrict(doc, &o); err != nil {
			return err
		}
		m.namespaces = append(m.namespaces, o)
	case "v1 ConfigMap":
		var o corev1.ConfigMap
		if err := decodeStrict(doc, &o); err != nil {
			return err
		}
		m.configMaps = append(m.configMaps, o)
	case "apps/v1 DaemonSet":
		var o appsv1.DaemonSet
		if err := decodeStrict(doc, &o); err != nil {
			return err
		}
		m.daemonSets = append(m.daemonSets, o)
	case "k8s.cni.cncf.io/v1 NetworkAttachmentDefinition":
		var o networkAttachmentDefinition
		if err := decodeStrict(doc, &o); err != nil {
			return err
		}
		m.nads = append(m.nads, o)
	case "kustomize.config.k8s.io/v1beta1 Kustomization":
		var o kustomization
		if err := decodeStrict(doc, &o); err != nil {
			return err
		}
		if m.kustomization != nil {
			return fmt.Errorf("second Kustomization")
		}
		m.kustomization = &o
	case "v1 ServiceAccount", "rbac.authorization.k8s.io/v1 ClusterRole",
		"rbac.authorization.k8s.io/v1 ClusterRoleBinding", "resource.k8s.io/v1 DeviceClass":
		// What deploy/components/dra adds: decoded strictly, kept nowhere.
		objs := map[string]any{"ServiceAccount": &corev1.ServiceAccount{}, "ClusterRole": &rbacv1.ClusterRole{},
			"ClusterRoleBinding": &rbacv1.ClusterRoleBinding{}, "DeviceClass": &resourcev1.DeviceClass{}}
		if err := decodeStrict(doc, objs[tm.Kind]); err != nil {
			return err
		}
	default:
		return fmt.Errorf("no strict decoder for apiVersion %q kind %q: add one to this test", tm.APIVersion, tm.Kind)
	}
	return nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for line := range strings.Lines(doc) {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line)
		}
	}
	return b.String()
}

func TestManifestsDecodeStrictly(t *testing.T) {
	m := loadManifests(t)
	if len(m.namespaces) != 1 || len(m.daemonSets) != 1 || len(m.nads) != 1 || m.kustomization == nil {
		t.Fatalf("want one Namespace, DaemonSet, NetworkAttachmentDefinition and Kustomization; got %d, %d, %d, %v",
			len(m.namespaces), len(m.daemonSets), len(m.nads), m.kustomization != nil)
	}
}

// The strict decoder must really refuse what the API server would: a
// misspelt field in a DaemonSet.
func TestStrictDecoderRejectsUnknownFields(t *testing.T) {
	var m manifests
	bad := []byte("apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: x\nspec:\n  template:\n    spec:\n      nodeSelecter: {}\n")
	if err := m.add(bad); err == nil || !strings.Contains(err.Error(), "nodeSelecter") {
		t.Fatalf("unknown field accepted: %v", err)
	}
	dup := []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  name: b\n")
	if err := m.add(dup); err == nil {
		t.Fatal("duplicate field accepted")
	}
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	m := loadManifests(t)
	k := m.kustomization
	if k == nil {
		t.Fatal("no deploy/kustomization.yaml")
	}
	var want []string
	for _, f := range m.files {
		if f != "kustomization.yaml" {
			want = append(want, f)
		}
	}
	got := slices.Clone(k.Resources)
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("kustomization resources %v, want every manifest in deploy/: %v", got, want)
	}
	for _, g := range k.ConfigMapGenerator {
		for _, f := range g.Files {
			if _, err := os.Stat(filepath.Join(repoRoot(t), "deploy", f)); err != nil {
				t.Errorf("configMapGenerator %s: %v", g.Name, err)
			}
		}
	}
	ds := m.daemonSets[0]
	image := ds.Spec.Template.Spec.Containers[0].Image
	name, _, _ := strings.Cut(image, ":")
	if len(k.Images) != 1 || k.Images[0].Name != name {
		t.Errorf("kustomization images %+v do not override the DaemonSet's image %q", k.Images, image)
	}
	// A release, never latest: a node would run whatever latest was when
	// it pulled, and nobody could tell which.
	release := regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+$`)
	if len(k.Images) == 1 && !release.MatchString(k.Images[0].NewTag) {
		t.Errorf("kustomization image tag %q is not a release (vX.Y.Z)", k.Images[0].NewTag)
	}
	for _, c := range ds.Spec.Template.Spec.Containers {
		if _, tag, _ := strings.Cut(c.Image, ":"); !release.MatchString(tag) {
			t.Errorf("container %s image %q: the tag is not a release (vX.Y.Z)", c.Name, c.Image)
		}
	}
}

func TestDaemonSetIsLeastPrivilegeInstaller(t *testing.T) {
	m := loadManifests(t)
	if len(m.daemonSets) != 1 || len(m.namespaces) != 1 {
		t.Fatal("want one DaemonSet and one Namespace")
	}
	ds, ns := m.daemonSets[0], m.namespaces[0]
	if ds.Namespace != ns.Name {
		t.Errorf("DaemonSet in namespace %q, the manifest creates %q", ds.Namespace, ns.Name)
	}
	if ds.Spec.Selector == nil {
		t.Fatal("no selector")
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template labels %v", k, v, ds.Spec.Template.Labels)
		}
	}
	pod := ds.Spec.Template.Spec
	if pod.NodeSelector["hardwareSupport"] != "sriov-nic" {
		t.Errorf("node selector %v does not pick SR-IOV nodes (hardwareSupport=sriov-nic)", pod.NodeSelector)
	}
	if len(pod.Tolerations) == 0 {
		t.Error("no tolerations: tainted SR-IOV nodes would get no plugin")
	}
	// The host network and pid namespaces are the agent's (see
	// TestAgentHasExactlyItsGrants); no pod needs the host's IPC.
	if pod.HostIPC {
		t.Error("nothing needs the host's IPC namespace")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("neither container talks to the API server: automountServiceAccountToken must be false")
	}
	if len(pod.InitContainers) != 0 || len(pod.Containers) != 2 {
		t.Fatalf("want the installer and the agent, got %d containers (+%d init)", len(pod.Containers), len(pod.InitContainers))
	}
	c := container(t, pod, "install-plugin")
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("container has no securityContext")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("container is privileged")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true: install-plugin writes only to the host mounts")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("capabilities %+v, want drop ALL and add none", sc.Capabilities)
	}
	// Root (as the owner of /opt/cni/bin) is what writing it needs.
	if psc := pod.SecurityContext; psc == nil || psc.RunAsUser == nil || *psc.RunAsUser != 0 {
		t.Error("pod must run as uid 0 explicitly: /opt/cni/bin is root-owned 0755")
	}
	for _, res := range []corev1.ResourceList{c.Resources.Requests, c.Resources.Limits} {
		if res.Cpu().IsZero() || res.Memory().IsZero() {
			t.Errorf("container needs cpu and memory requests and limits, got %+v", c.Resources)
		}
	}

	// The installer's argument is where /opt/cni/bin is mounted: only the
	// binary goes on the node (the conf is the cnitool-conf component's).
	checkInstallerDirs(t, pod, c, []string{"/opt/cni/bin"})
}

// checkInstallerDirs checks that the installer's arguments are writable
// mounts of the host paths want (CNI_BIN_DIR, then CNI_CONF_DIR if any), and
// that its readiness probe checks exactly those.
func checkInstallerDirs(t *testing.T, pod corev1.PodSpec, c corev1.Container, wantHost []string) {
	t.Helper()
	if len(c.Args) != len(wantHost) {
		t.Fatalf("container args %q, want the mounts of %v", c.Args, wantHost)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, vm := range c.VolumeMounts {
		mounts[vm.MountPath] = vm
	}
	for i, dir := range c.Args {
		vm, ok := mounts[dir]
		if !ok || vm.ReadOnly {
			t.Fatalf("%q is not a writable mount: %+v", dir, c.VolumeMounts)
		}
		var hostPath string
		for _, v := range pod.Volumes {
			if v.Name == vm.Name && v.HostPath != nil {
				hostPath = v.HostPath.Path
			}
		}
		if hostPath != wantHost[i] {
			t.Errorf("%s is hostPath %q, want %s", dir, hostPath, wantHost[i])
		}
	}

	// Ready means: the installed binary matches the image and answers VERSION.
	p := c.ReadinessProbe
	if p == nil || p.Exec == nil {
		t.Fatal("no exec readiness probe")
	}
	entry := dockerfileEntrypoint(t)
	want := append([]string{entry, "--check"}, c.Args...)
	if !slices.Equal(p.Exec.Command, want) {
		t.Errorf("readiness probe %q, want %q", p.Exec.Command, want)
	}
	if p.TimeoutSeconds < 11 {
		t.Errorf("probe timeout %ds is shorter than install-plugin's 10 s VERSION timeout", p.TimeoutSeconds)
	}
}

// The probe really passes against a real install and fails before one.
func TestReadinessProbeCommandWorks(t *testing.T) {
	l := newLayout(t, fakePlugin("v1"))
	probe := func() result { return runInstaller(t, nil, "--check", "--src", l.src, l.bin) }
	if r := probe(); r.code == 0 {
		t.Fatalf("probe ready before install: %v", r)
	}
	if r := runInstaller(t, nil, "--once", "--src", l.src, l.bin); r.code != 0 {
		t.Fatal(r)
	}
	if r := probe(); r.code != 0 {
		t.Fatalf("probe not ready after install: %v", r)
	}
}

func TestNetworkAttachmentDefinition(t *testing.T) {
	m := loadManifests(t)
	if len(m.nads) != 1 {
		t.Fatal("want one NetworkAttachmentDefinition")
	}
	nad := m.nads[0]
	if nad.Namespace != "multus-cni-ns" || nad.Name != "sriov-passthrough-cni" {
		t.Errorf("NAD is %s/%s, prow jobs ask for multus-cni-ns/sriov-passthrough-cni", nad.Namespace, nad.Name)
	}
	if got := nad.Annotations["k8s.v1.cni.cncf.io/resourceName"]; got != "prow/sriov" {
		t.Errorf("resourceName annotation %q, want prow/sriov", got)
	}
	checkPluginConf(t, "NAD spec.config", []byte(nad.Spec.Config))
}

func TestDefaultConfFile(t *testing.T) {
	data := readRepoFile(t, filepath.Join("plugin", confName))
	conf := checkPluginConf(t, "plugin/"+confName, data)
	if conf != nil && !slices.Contains([]string{"1.0.0", "1.1.0"}, conf.CNIVersion) {
		t.Errorf("cniVersion %q, want 1.0.0 or later", conf.CNIVersion)
	}
}

// checkPluginConf parses a config with the plugin's own loader and, because
// that loader ignores unknown fields (runtimes add their own), also decodes it
// strictly so a misspelt field is caught here rather than silently defaulted.
func checkPluginConf(t *testing.T, what string, data []byte) *config.NetConf {
	t.Helper()
	conf, err := config.Parse(data, "")
	if err != nil {
		t.Errorf("%s: plugin config loader: %v", what, err)
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var strict config.NetConf
	if err := dec.Decode(&strict); err != nil {
		t.Errorf("%s: unknown field: %v", what, err)
	}
	if conf.Name != "sriov-passthrough-cni" || conf.Type != "sriov-passthrough-cni" {
		t.Errorf("%s: name %q type %q, want sriov-passthrough-cni for both", what, conf.Name, conf.Type)
	}
	if !slices.Contains([]string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}, conf.CNIVersion) {
		t.Errorf("%s: cniVersion %q is not one the plugin supports", what, conf.CNIVersion)
	}
	return conf
}

// kubectl's built-in kustomize renders deploy/ as `kubectl apply -k` would;
// the output must still decode strictly and carry the image override.
func TestKustomizeBuild(t *testing.T) {
	m := parseRendered(t, render(t, filepath.Join(repoRoot(t), "deploy")))
	if len(m.namespaces) != 1 || len(m.configMaps) != 1 || len(m.daemonSets) != 1 || len(m.nads) != 1 {
		t.Fatalf("rendered %d Namespace, %d ConfigMap, %d DaemonSet, %d NAD; want one each",
			len(m.namespaces), len(m.configMaps), len(m.daemonSets), len(m.nads))
	}
	k := loadManifests(t).kustomization
	img := k.Images[0]
	want := img.Name
	if img.NewName != "" {
		want = img.NewName
	}
	want += ":" + img.NewTag
	if got := m.daemonSets[0].Spec.Template.Spec.Containers[0].Image; got != want {
		t.Errorf("rendered image %q, want %q", got, want)
	}
	if m.nads[0].Namespace != "multus-cni-ns" {
		t.Errorf("kustomize moved the NAD to namespace %q", m.nads[0].Namespace)
	}
}

// findKubectl returns a kubectl: the one on PATH, else the one make
// k8s-e2e builds into its cache (make test builds it before the unit
// tests). Without either the test skips, except under CI, where it fails.
func findKubectl(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("kubectl"); err == nil {
		return p
	}
	cache, version := os.Getenv("K8S_CACHE"), os.Getenv("K8S_VERSION")
	if cache == "" {
		cache = "/var/cache/sriov-passthrough-cni-k8s"
	}
	if version == "" {
		version = "v1.37.2"
	}
	p := filepath.Join(cache, version, "bin", "kubectl")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	msg := "no kubectl on PATH or in " + p + " (bash test/k8s/build.sh builds it)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// The prow-workloads component changes exactly one thing: the installer
// writes into /var/lib/cni/bin, the CI nodes' CNI binary directory.
// Rendered as an admin's overlay would use it (deploy/ as a resource, the
// component listed), next to deploy/ alone.
func TestProwWorkloadsComponent(t *testing.T) {
	plain, with := renderWithComponent(t, "prow-workloads")
	base, overlay := docs(t, plain), docs(t, with)
	moved := 0
	for _, d := range base {
		for _, v := range volumes(d) {
			if v["name"] == "cni-bin" {
				v["hostPath"].(map[string]any)["path"] = "/var/lib/cni/bin"
				moved++
			}
		}
	}
	if moved != 1 || !reflect.DeepEqual(base, overlay) {
		t.Fatalf("the component changes more (or other) than the CNI binary dir (cni-bin volumes: %d):\n--- deploy/, cni-bin moved\n%v\n--- with the component\n%v", moved, base, overlay)
	}
}

// docs decodes rendered YAML documents, a DaemonSet's volumes in name
// order (a strategic merge patch may move the one it patches).
func docs(t *testing.T, rendered string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, doc := range docSeparator.Split(rendered, -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatal(err)
		}
		volumes(m)
		out = append(out, m)
	}
	return out
}

// volumes returns a DaemonSet's pod volumes, in place (nil for anything
// else).
func volumes(m map[string]any) []map[string]any {
	if m["kind"] != "DaemonSet" {
		return nil
	}
	spec := m["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	raw, _ := spec["volumes"].([]any)
	vs := make([]map[string]any, len(raw))
	for i, v := range raw {
		vs[i] = v.(map[string]any)
	}
	sort.SliceStable(vs, func(i, j int) bool { return vs[i]["name"].(string) < vs[j]["name"].(string) })
	for i := range vs {
		raw[i] = vs[i]
	}
	return vs
}

// The cnitool-conf component adds the conf directory and nothing else: the
// installer then puts 90-sriov-passthrough-cni.conf into the node's
// /etc/cni/net.d and its probe checks it there.
func TestCnitoolConfComponent(t *testing.T) {
	plain, with := renderWithComponent(t, "cnitool-conf")
	for rendered, want := range map[string][]string{
		plain: {"/opt/cni/bin"},
		with:  {"/opt/cni/bin", "/etc/cni/net.d"},
	} {
		pod := parseRendered(t, rendered).daemonSets[0].Spec.Template.Spec
		checkInstallerDirs(t, pod, pod.Containers[0], want)
	}
}

// renderWithComponent renders deploy/ alone and as an admin's overlay uses
// the component (deploy/ as a resource, deploy/components/<name> listed).
func renderWithComponent(t *testing.T, name string) (plain, with string) {
	t.Helper()
	dir := copyDeploy(t)
	kust := "resources:\n- deploy\ncomponents:\n- deploy/components/" + name + "\n"
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(kust), 0o644); err != nil {
		t.Fatal(err)
	}
	return render(t, filepath.Join(dir, "deploy")), render(t, dir)
}

// copyDeploy copies deploy/ into a new temporary directory and returns
// that directory: deploy/ is DIR/deploy in it.
func copyDeploy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("cp", "-r", filepath.Join(repoRoot(t), "deploy"), dir).CombinedOutput(); err != nil {
		t.Fatalf("copy deploy/: %v: %s", err, out)
	}
	return dir
}

// render runs kubectl kustomize on a kustomization directory.
func render(t *testing.T, root string) string {
	t.Helper()
	out, err := exec.Command(findKubectl(t), "kustomize", root).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", root, err, out)
	}
	return string(out)
}

// parseRendered decodes kustomize's output strictly.
func parseRendered(t *testing.T, rendered string) manifests {
	t.Helper()
	var m manifests
	for i, doc := range docSeparator.Split(rendered, -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		if err := m.add([]byte(doc)); err != nil {
			t.Fatalf("rendered document %d: %v", i+1, err)
		}
	}
	return m
}
