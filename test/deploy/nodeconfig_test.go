package deploy_test

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	// nodeConfigName is the node configuration's ConfigMap before kustomize
	// appends the hash of its content: the generator's name in
	// deploy/kustomization.yaml and the name daemonset.yaml refers to.
	nodeConfigName = "sriov-passthrough-cni-node"
	// nodeConfigFile is the file an admin edits, relative to the root.
	nodeConfigFile = "deploy/node.json"
	// nodeConfigVolume is the DaemonSet's volume of that ConfigMap.
	nodeConfigVolume = "node-config"
	// testBed is test/k8s's overlay: deploy/ with its own node.json.
	testBed = "test/k8s/overlay"
)

// previousSelector is the DaemonSet's selector in every release so far
// (deploy/ as it was before the labels and the generator came). A live
// DaemonSet's selector cannot change: an apply that changed it would be
// refused, and every upgrade from an earlier release with it.
var previousSelector = map[string]string{"app.kubernetes.io/name": "sriov-passthrough-cni"}

// previousConfigMapLabels are the labels the node configuration's ConfigMap
// had before the generator: an upgrade leaves that ConfigMap behind, and
// the pruning docs/deploy.md shows must find it too.
var previousConfigMapLabels = map[string]string{"app.kubernetes.io/name": "sriov-passthrough-cni"}

// The node configuration is generated from node.json, and the rendered
// DaemonSet mounts the generated ConfigMap under its hashed name: the
// hash is what makes a changed node.json roll the DaemonSet.
func TestNodeConfigIsGenerated(t *testing.T) {
	m := loadManifests(t)
	if len(m.configMaps) != 0 {
		t.Errorf("deploy/ has %d ConfigMap manifests: the node configuration comes from the configMapGenerator, and a ConfigMap manifest keeps its name when it changes, so no pod would roll", len(m.configMaps))
	}
	gens := m.kustomization.ConfigMapGenerator
	if len(gens) != 1 {
		t.Fatalf("want one configMapGenerator in deploy/kustomization.yaml, got %d", len(gens))
	}
	g := gens[0]
	if g.Name != nodeConfigName || g.Namespace != m.namespaces[0].Name || !reflect.DeepEqual(g.Files, []string{filepath.Base(nodeConfigFile)}) {
		t.Errorf("configMapGenerator %+v: want %s in namespace %s from %s", g, nodeConfigName, m.namespaces[0].Name, nodeConfigFile)
	}
	if g.Options.DisableNameSuffixHash {
		t.Error("the generator disables the name's hash: a changed node.json would not roll the DaemonSet")
	}
	if got := configMapVolume(t, m.daemonSets[0]); got != nodeConfigName {
		t.Errorf("daemonset.yaml mounts ConfigMap %q, the generator makes %q: kustomize rewrites only a reference to the generator's name", got, nodeConfigName)
	}

	r := parseRendered(t, render(t, filepath.Join(repoRoot(t), "deploy")))
	cm := r.configMaps[0]
	if !regexp.MustCompile(`^` + nodeConfigName + `-[a-z0-9]{10}$`).MatchString(cm.Name) {
		t.Errorf("rendered ConfigMap %q: want %s-<hash of node.json>", cm.Name, nodeConfigName)
	}
	if got := configMapVolume(t, r.daemonSets[0]); got != cm.Name {
		t.Errorf("rendered DaemonSet mounts ConfigMap %q, the rendered ConfigMap is %q", got, cm.Name)
	}
	if got, want := cm.Data["node.json"], string(readRepoFile(t, nodeConfigFile)); got != want || len(cm.Data) != 1 {
		t.Errorf("rendered ConfigMap data %q, want node.json alone, as %s has it: %q", cm.Data, nodeConfigFile, want)
	}
}

// An admin edits node.json and applies: the ConfigMap gets a new name, and
// the DaemonSet's pod template refers to it, so the DaemonSet rolls. The
// reference is the only change to the pod template.
func TestNodeConfigChangeRollsTheDaemonSet(t *testing.T) {
	dir := copyDeploy(t)
	before := parseRendered(t, render(t, filepath.Join(dir, "deploy")))
	node := map[string]any{}
	if err := json.Unmarshal(readRepoFile(t, nodeConfigFile), &node); err != nil {
		t.Fatal(err)
	}
	node["requireDeviceID"] = node["requireDeviceID"] != true
	changed, _ := json.MarshalIndent(node, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, nodeConfigFile), append(changed, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	after := parseRendered(t, render(t, filepath.Join(dir, "deploy")))

	oldName, newName := before.configMaps[0].Name, after.configMaps[0].Name
	if oldName == newName {
		t.Fatalf("node.json changed, the ConfigMap is still %s: the DaemonSet would not roll", oldName)
	}
	if got := configMapVolume(t, after.daemonSets[0]); got != newName {
		t.Fatalf("after the change the DaemonSet mounts %q, want the new ConfigMap %q", got, newName)
	}
	// Put the old name back: nothing else in the DaemonSet may differ.
	ds := after.daemonSets[0]
	for i := range ds.Spec.Template.Spec.Volumes {
		if v := &ds.Spec.Template.Spec.Volumes[i]; v.Name == nodeConfigVolume {
			v.ConfigMap.Name = oldName
		}
	}
	if !reflect.DeepEqual(ds, before.daemonSets[0]) {
		t.Errorf("a node.json change changed the DaemonSet beyond the ConfigMap's name")
	}
}

// configMapVolume is the name of the ConfigMap the DaemonSet mounts as its
// node configuration.
func configMapVolume(t *testing.T, ds appsv1.DaemonSet) string {
	t.Helper()
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == nodeConfigVolume && v.ConfigMap != nil {
			return v.ConfigMap.Name
		}
	}
	t.Fatalf("DaemonSet has no ConfigMap volume %q", nodeConfigVolume)
	return ""
}

// renderings are the ways deploy/ is applied: alone, with each component
// as an admin's overlay uses it, and test/k8s's overlay.
func renderings(t *testing.T) map[string]manifests {
	t.Helper()
	out := map[string]manifests{}
	for _, c := range []string{"prow-workloads", "cnitool-conf"} {
		plain, with := renderWithComponent(t, c)
		out["deploy/"] = parseRendered(t, plain)
		out["deploy/ with components/"+c] = parseRendered(t, with)
	}
	out[testBed] = parseRendered(t, render(t, filepath.Join(repoRoot(t), testBed)))
	return out
}

// However deploy/ is rendered, the DaemonSet's selector is the previous
// releases' exactly: the labels kustomization.yaml adds stay out of it.
func TestSelectorIsThePreviousReleases(t *testing.T) {
	for what, m := range renderings(t) {
		ds := m.daemonSets[0]
		sel := ds.Spec.Selector
		if sel == nil || len(sel.MatchExpressions) != 0 || !maps.Equal(sel.MatchLabels, previousSelector) {
			t.Errorf("%s: DaemonSet selector %+v, want the previous releases' %v: a selector is immutable, and an upgrade that changed it would be refused", what, sel, previousSelector)
			continue
		}
		for k, v := range sel.MatchLabels {
			if ds.Spec.Template.Labels[k] != v {
				t.Errorf("%s: the pod template's labels %v do not match the selector", what, ds.Spec.Template.Labels)
			}
		}
	}
}

// wantComponent is each kind's app.kubernetes.io/component. The Namespace
// has none: it holds every component.
var wantComponent = map[string]string{
	"ConfigMap":                   "node-config",
	"DaemonSet":                   "node-agent",
	"NetworkAttachmentDefinition": "network",
	"DaemonSet's pod template":    "node-agent",
	"Namespace":                   "",
}

// Every object (and the DaemonSet's pods) carries the recommended labels,
// however deploy/ is rendered.
func TestEveryObjectIsLabelled(t *testing.T) {
	for what, m := range renderings(t) {
		objects := map[string]metav1.ObjectMeta{}
		for _, o := range m.namespaces {
			objects["Namespace "+o.Name] = o.ObjectMeta
		}
		for _, o := range m.configMaps {
			objects["ConfigMap "+o.Name] = o.ObjectMeta
		}
		for _, o := range m.daemonSets {
			objects["DaemonSet "+o.Name] = o.ObjectMeta
			objects["DaemonSet's pod template "+o.Name] = o.Spec.Template.ObjectMeta
		}
		for _, o := range m.nads {
			objects["NetworkAttachmentDefinition "+o.Name] = o.ObjectMeta
		}
		if len(objects) != 5 {
			t.Errorf("%s: rendered %v, want a Namespace, a ConfigMap, a DaemonSet and a NAD", what, objects)
		}
		for name, meta := range objects {
			kind := name[:strings.LastIndex(name, " ")]
			for _, k := range []string{"app.kubernetes.io/name", "app.kubernetes.io/part-of"} {
				if meta.Labels[k] != "sriov-passthrough-cni" {
					t.Errorf("%s: %s has %s=%q, want sriov-passthrough-cni", what, name, k, meta.Labels[k])
				}
			}
			if got := meta.Labels["app.kubernetes.io/component"]; got != wantComponent[kind] {
				t.Errorf("%s: %s has app.kubernetes.io/component=%q, want %q", what, name, got, wantComponent[kind])
			}
		}
	}
}

// test/k8s's overlay runs deploy/'s node.json with sysfsRoot added, through
// the generator: its ConfigMap is its own node.json under that file's hash,
// and the DaemonSet mounts it.
func TestTestBedNodeConfigIsDeploysWithSysfsRoot(t *testing.T) {
	requireTestBedNodeConfig(t, nodeConfigFile, testBed, filepath.Join(testBed, "node.json"))
}

// make k8s-e2e's DRA pass runs the test bed's node.json with allocation
// dra: its overlay adds deploy/components/dra and replaces node.json.
func TestDRATestBedNodeConfigIsTheTestBedsWithAllocationDRA(t *testing.T) {
	var bed, dra map[string]any
	if err := json.Unmarshal(readRepoFile(t, filepath.Join(testBed, "node.json")), &bed); err != nil {
		t.Fatal(err)
	}
	draBed := "test/k8s/overlay-dra"
	if err := json.Unmarshal(readRepoFile(t, filepath.Join(draBed, "node.json")), &dra); err != nil {
		t.Fatal(err)
	}
	bed["allocation"] = "dra"
	if !reflect.DeepEqual(bed, dra) {
		t.Errorf("%s/node.json is %v, want %s/node.json with allocation dra: %v", draBed, dra, testBed, bed)
	}
	requireRendersNodeConfig(t, draBed, filepath.Join(draBed, "node.json"))
}

// requireTestBedNodeConfig checks that bedFile is shippedFile with sysfsRoot
// added, and that the overlay in bedDir renders it.
func requireTestBedNodeConfig(t *testing.T, shippedFile, bedDir, bedFile string) {
	t.Helper()
	var shipped, bed map[string]any
	if err := json.Unmarshal(readRepoFile(t, shippedFile), &shipped); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(readRepoFile(t, bedFile), &bed); err != nil {
		t.Fatal(err)
	}
	if bed["sysfsRoot"] == nil {
		t.Errorf("%s sets no sysfsRoot", bedFile)
	}
	delete(bed, "sysfsRoot")
	if !reflect.DeepEqual(bed, shipped) {
		t.Errorf("%s without sysfsRoot is %v, %s is %v", bedFile, bed, shippedFile, shipped)
	}
	requireRendersNodeConfig(t, bedDir, bedFile)
}

// requireRendersNodeConfig checks that the overlay in dir renders bedFile as
// its one ConfigMap, under that file's hash, and the DaemonSet mounts it.
func requireRendersNodeConfig(t *testing.T, dir, bedFile string) {
	t.Helper()
	m := parseRendered(t, render(t, filepath.Join(repoRoot(t), dir)))
	if len(m.configMaps) != 1 {
		t.Fatalf("%s renders %d ConfigMaps, want one", dir, len(m.configMaps))
	}
	cm := m.configMaps[0]
	if cm.Data["node.json"] != string(readRepoFile(t, bedFile)) {
		t.Errorf("%s renders node.json %q, want %s", dir, cm.Data["node.json"], bedFile)
	}
	if got := configMapVolume(t, m.daemonSets[0]); got != cm.Name || !strings.HasPrefix(got, nodeConfigName+"-") {
		t.Errorf("%s: the DaemonSet mounts %q, the ConfigMap is %q", dir, got, cm.Name)
	}
}

// The overlay docs/configuration.md shows, with a node.json of its own,
// rendered over deploy/ as an admin's overlay uses it: its node.json is
// the ConfigMap's, under a name of its own, and the DaemonSet mounts that.
func TestNodeConfigOverlaySnippet(t *testing.T) {
	s := readmeSnippets(t)["node-config-overlay"]
	if len(s) != 1 {
		t.Fatalf("want one node-config-overlay snippet, found %d", len(s))
	}
	dir := copyDeploy(t)
	own := []byte("{\n  \"requireDeviceID\": true\n}\n")
	for name, data := range map[string][]byte{"kustomization.yaml": []byte("resources:\n- deploy\n" + s[0].body), "node.json": own} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	base := parseRendered(t, render(t, filepath.Join(dir, "deploy")))
	m := parseRendered(t, render(t, dir))
	if len(m.configMaps) != 1 {
		t.Fatalf("%s: the overlay renders %d ConfigMaps, want one", s[0].where(), len(m.configMaps))
	}
	cm := m.configMaps[0]
	if cm.Data["node.json"] != string(own) || cm.Name == base.configMaps[0].Name {
		t.Errorf("%s: the overlay's ConfigMap is %s with %q; want the overlay's node.json under another name than deploy/'s %s",
			s[0].where(), cm.Name, cm.Data["node.json"], base.configMaps[0].Name)
	}
	if got := configMapVolume(t, m.daemonSets[0]); got != cm.Name {
		t.Errorf("%s: the DaemonSet mounts %q, the overlay's ConfigMap is %q", s[0].where(), got, cm.Name)
	}
}

// docs/deploy.md's pruning selects by a label that both this release's
// ConfigMap and the previous releases' carry, and keeps the one named by
// the DaemonSet's node-config volume, in the DaemonSet's namespace.
func TestPruneSnippetFindsEveryNodeConfig(t *testing.T) {
	s := readmeSnippets(t)["prune-node-configs"]
	if len(s) != 1 {
		t.Fatalf("want one prune-node-configs snippet, found %d", len(s))
	}
	body, where := s[0].body, s[0].where()
	m := parseRendered(t, render(t, filepath.Join(repoRoot(t), "deploy")))
	ds, cm := m.daemonSets[0], m.configMaps[0]
	sel := regexp.MustCompile(`get configmap -l (\S+)`).FindStringSubmatch(body)
	if sel == nil {
		t.Fatalf("%s: no `get configmap -l SELECTOR`", where)
	}
	for _, pair := range strings.Split(sel[1], ",") {
		k, v, ok := strings.Cut(pair, "=")
		if !ok || cm.Labels[k] != v || previousConfigMapLabels[k] != v {
			t.Errorf("%s: selector term %q: want a label=value on the rendered ConfigMap (%v) and on the previous releases' (%v)",
				where, pair, cm.Labels, previousConfigMapLabels)
		}
	}
	if !strings.Contains(body, `volumes[?(@.name=="`+nodeConfigVolume+`")].configMap.name`) {
		t.Errorf("%s: does not read the ConfigMap in use from the DaemonSet's %s volume", where, nodeConfigVolume)
	}
	for _, want := range []string{"-n " + ds.Namespace + " get ds " + ds.Name, "-n " + cm.Namespace + " get configmap", "-n " + cm.Namespace + " delete"} {
		if !strings.Contains(body, want) {
			t.Errorf("%s: no %q", where, want)
		}
	}
}
