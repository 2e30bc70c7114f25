package deploy_test

import (
	"encoding/json"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// draObjects are the objects the dra component adds, by kind and name.
var draObjects = []string{
	"DeviceClass sriov-passthrough.kubevirt.io",
	"ServiceAccount sriov-passthrough-agent",
	"ClusterRole sriov-passthrough-agent-dra",
	"ClusterRoleBinding sriov-passthrough-agent-dra",
}

// The dra component adds its DeviceClass and the agent's API access, and
// changes the DaemonSet in exactly the ways DRA needs: the agent's service
// account, token, node name and the kubelet's plugin and CDI directories.
// It leaves node.json alone: the overlay's node.json chooses the nodes
// (allocation, allocationByNode). deploy/ alone stays as it is (the other
// tests check it).
func TestDRAComponent(t *testing.T) {
	plain, with := renderWithComponent(t, "dra")
	base, overlay := byKindName(t, docs(t, plain)), byKindName(t, docs(t, with))
	for _, k := range draObjects {
		o, ok := overlay[k]
		if !ok {
			t.Errorf("the component does not add %s", k)
			continue
		}
		labels, _ := o["metadata"].(map[string]any)["labels"].(map[string]any)
		if labels["app.kubernetes.io/part-of"] != "sriov-passthrough-cni" || labels["app.kubernetes.io/component"] != "dra" {
			t.Errorf("%s labels %v", k, labels)
		}
		delete(overlay, k)
	}
	class := deviceClass(t, with)
	if class.Spec.ExtendedResourceName != "prow/sriov" || len(class.Spec.Selectors) != 1 ||
		class.Spec.Selectors[0].CEL.Expression != `device.driver == "sriov-passthrough.kubevirt.io"` {
		t.Errorf("DeviceClass %+v: want prow/sriov served by the driver's devices", class.Spec)
	}

	// The DaemonSet: undo exactly what DRA adds, and deploy's is left.
	ds := overlay["DaemonSet sriov-passthrough-cni"]
	pod := ds["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	if pod["serviceAccountName"] != "sriov-passthrough-agent" || pod["automountServiceAccountToken"] != true {
		t.Errorf("pod: serviceAccountName %v, automountServiceAccountToken %v", pod["serviceAccountName"], pod["automountServiceAccountToken"])
	}
	delete(pod, "serviceAccountName")
	pod["automountServiceAccountToken"] = false
	added := map[string]string{}
	for _, c := range pod["containers"].([]any) {
		c := c.(map[string]any)
		if c["name"] != "agent" {
			continue
		}
		env := c["env"].([]any)
		if len(env) != 2 || env[0].(map[string]any)["name"] != "NODE_NAME" ||
			!strings.Contains(mustJSON(t, env[0]), `"fieldPath":"spec.nodeName"`) ||
			env[1].(map[string]any)["name"] != "POD_UID" || !strings.Contains(mustJSON(t, env[1]), `"fieldPath":"metadata.uid"`) {
			t.Errorf("agent env %v: want NODE_NAME from spec.nodeName and POD_UID from metadata.uid", env)
		}
		delete(c, "env")
		var kept []any
		for _, m := range c["volumeMounts"].([]any) {
			m := m.(map[string]any)
			if slices.Contains([]string{"plugins-registry", "dra-plugin", "cdi"}, m["name"].(string)) {
				added[m["name"].(string)] = m["mountPath"].(string)
				continue
			}
			kept = append(kept, m)
		}
		c["volumeMounts"] = kept
	}
	want := map[string]string{"plugins-registry": "/var/lib/kubelet/plugins_registry",
		"dra-plugin": "/var/lib/kubelet/plugins/sriov-passthrough.kubevirt.io", "cdi": "/var/run/cdi"}
	if !maps.Equal(added, want) {
		t.Errorf("agent mounts added %v, want %v", added, want)
	}
	var vols []any
	for _, v := range pod["volumes"].([]any) {
		v := v.(map[string]any)
		if path, ok := want[v["name"].(string)]; ok {
			if v["hostPath"].(map[string]any)["path"] != path {
				t.Errorf("volume %v: want hostPath %s", v, path)
			}
			continue
		}
		vols = append(vols, v)
	}
	pod["volumes"] = vols
	byName := func(cs []any) {
		slices.SortFunc(cs, func(a, b any) int {
			return strings.Compare(a.(map[string]any)["name"].(string), b.(map[string]any)["name"].(string))
		})
	}
	byName(pod["containers"].([]any))
	byName(base["DaemonSet sriov-passthrough-cni"]["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any))
	if !reflect.DeepEqual(base, overlay) {
		t.Errorf("the component changes more than DRA needs:\n--- deploy/\n%s\n--- with the component, DRA's changes taken out\n%s",
			mustJSON(t, base), mustJSON(t, overlay))
	}
}

// draGrantsPage holds the DRA grants table (| DRA grant | why |).
const draGrantsPage = "docs/dra.md"

// Every grant the component adds to the agent (a mount, an API permission)
// has a row with its reason in docs/dra.md's grants table, and the table
// lists nothing the component does not grant.
func TestDRAGrantsTableMatchesTheComponent(t *testing.T) {
	_, with := renderWithComponent(t, "dra")
	granted := map[string]bool{"/var/lib/kubelet/plugins_registry": true,
		"/var/lib/kubelet/plugins/sriov-passthrough.kubevirt.io": true, "/var/run/cdi": true, "service account token": true}
	for _, d := range docs(t, with) {
		if d["kind"] != "ClusterRole" {
			continue
		}
		for _, r := range d["rules"].([]any) {
			r := r.(map[string]any)
			for _, res := range r["resources"].([]any) {
				for _, verb := range r["verbs"].([]any) {
					granted[verb.(string)+" "+res.(string)] = true
				}
			}
		}
	}
	table := map[string]bool{}
	for _, key := range grantsTable(t, draGrantsPage, "| DRA grant | why |") {
		// A row may name several verbs of one resource: `get, list resourceslices`.
		i := strings.LastIndex(key, " ")
		if strings.HasPrefix(key, "/") || key == "service account token" || i < 0 {
			table[key] = true
			continue
		}
		verbs, res := key[:i], key[i+1:]
		for _, v := range strings.Split(verbs, ",") {
			table[strings.TrimSpace(v)+" "+res] = true
		}
	}
	sameGrants(t, "the dra component", granted, table, draGrantsPage)
}

type draDeviceClass struct {
	Spec struct {
		ExtendedResourceName string `json:"extendedResourceName"`
		Selectors            []struct {
			CEL struct {
				Expression string `json:"expression"`
			} `json:"cel"`
		} `json:"selectors"`
	} `json:"spec"`
}

func deviceClass(t *testing.T, rendered string) draDeviceClass {
	t.Helper()
	for _, d := range docs(t, rendered) {
		if d["kind"] == "DeviceClass" {
			var c draDeviceClass
			mustUnmarshal(t, mustJSON(t, d), &c)
			return c
		}
	}
	t.Fatal("no DeviceClass rendered")
	return draDeviceClass{}
}

func byKindName(t *testing.T, ds []map[string]any) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, d := range ds {
		out[d["kind"].(string)+" "+d["metadata"].(map[string]any)["name"].(string)] = d
	}
	return out
}

func mustUnmarshal(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatal(err)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
