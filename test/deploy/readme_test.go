package deploy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
)

// Snippets that a person copies, in README.md and in the pages under docs/,
// are marked with a comment on the line before the fence,
// `<!-- test/deploy: KIND [ARGS] -->`, and checked here.

type snippet struct {
	kind string
	args []string
	file string // README.md or docs/PAGE.md
	line int
	body string
}

// where names the snippet's first line for a message: FILE:LINE.
func (s snippet) where() string { return fmt.Sprintf("%s:%d", s.file, s.line) }

var markerRE = regexp.MustCompile(`^<!-- test/deploy: (\S+)((?: \S+)*) -->$`)

// docFiles are the Markdown files a person reads, relative to the
// repository root: README.md, then docs/*.md.
func docFiles(t *testing.T) []string {
	t.Helper()
	pages, err := filepath.Glob(filepath.Join(repoRoot(t), "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files := []string{"README.md"}
	for _, p := range pages {
		files = append(files, filepath.ToSlash(filepath.Join("docs", filepath.Base(p))))
	}
	return files
}

// readmeSnippets returns the marked snippets of every file docFiles lists,
// by kind.
func readmeSnippets(t *testing.T) map[string][]snippet {
	t.Helper()
	out := map[string][]snippet{}
	for _, file := range docFiles(t) {
		lines := strings.Split(string(readRepoFile(t, file)), "\n")
		for i := 0; i < len(lines); i++ {
			m := markerRE.FindStringSubmatch(strings.TrimSpace(lines[i]))
			if m == nil {
				continue
			}
			if i+1 >= len(lines) || !strings.HasPrefix(lines[i+1], "```") {
				t.Fatalf("%s:%d: marker not followed by a fenced block", file, i+1)
			}
			var body []string
			j := i + 2
			for ; j < len(lines) && !strings.HasPrefix(lines[j], "```"); j++ {
				body = append(body, lines[j])
			}
			if j == len(lines) {
				t.Fatalf("%s:%d: unterminated fenced block", file, i+2)
			}
			out[m[1]] = append(out[m[1]], snippet{kind: m[1], args: strings.Fields(m[2]), file: file, line: i + 2, body: strings.Join(body, "\n") + "\n"})
			i = j
		}
	}
	return out
}

// section returns the lines of a Markdown file under heading (a whole
// line, such as "## Tests") up to the next heading of the same or a higher
// level; lines in fenced blocks (a shell comment) are no headings. It fails
// the test when the file has no such heading.
func section(t *testing.T, file, heading string) string {
	t.Helper()
	level := strings.IndexFunc(heading, func(r rune) bool { return r != '#' })
	var out []string
	in, fenced := false, false
	for _, l := range strings.Split(string(readRepoFile(t, file)), "\n") {
		if strings.HasPrefix(l, "```") {
			fenced = !fenced
		}
		if !fenced && strings.HasPrefix(l, "#") {
			n := strings.IndexFunc(l, func(r rune) bool { return r != '#' })
			if in && n > 0 && n <= level && strings.HasPrefix(l[n:], " ") {
				break
			}
			if l == heading {
				in = true
			}
		}
		if in {
			out = append(out, l)
		}
	}
	if !in {
		t.Fatalf("%s has no %q section", file, heading)
	}
	return strings.Join(out, "\n") + "\n"
}

// prowJob is the part of a prow job config the README shows: the job-level
// annotations prow copies to the pod, and the pod spec.
type prowJob struct {
	Name        string            `json:"name"`
	Annotations map[string]string `json:"annotations"`
	Spec        corev1.PodSpec    `json:"spec"`
}

// attachment is one element of multus' k8s.v1.cni.cncf.io/networks list.
type attachment struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Interface string `json:"interface,omitempty"`
}

const networksAnnotation = "k8s.v1.cni.cncf.io/networks"

// parseNetworks reads the annotation's two forms: "ns/name[@if],..." and a
// JSON list.
func parseNetworks(v string) (atts []attachment, jsonForm bool, err error) {
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, "[") {
		dec := json.NewDecoder(strings.NewReader(v))
		dec.DisallowUnknownFields()
		err := dec.Decode(&atts)
		return atts, true, err
	}
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		ref, ifname, _ := strings.Cut(item, "@")
		ns, name, ok := strings.Cut(ref, "/")
		if !ok {
			return nil, false, fmt.Errorf("%q names no namespace", item)
		}
		atts = append(atts, attachment{Name: name, Namespace: ns, Interface: ifname})
	}
	return atts, false, nil
}

// checkAnnotations returns the number of PFs the annotations ask for.
func checkAnnotations(t *testing.T, where string, ann map[string]string) (n int, jsonForm bool) {
	t.Helper()
	v, ok := ann[networksAnnotation]
	if !ok {
		t.Errorf("%s: no %s annotation", where, networksAnnotation)
		return 0, false
	}
	atts, jsonForm, err := parseNetworks(v)
	if err != nil {
		t.Errorf("%s: %s: %v", where, networksAnnotation, err)
		return 0, jsonForm
	}
	seen := map[string]bool{}
	for _, a := range atts {
		if a.Namespace != "multus-cni-ns" || a.Name != "sriov-passthrough-cni" {
			t.Errorf("%s: attachment %s/%s, want multus-cni-ns/sriov-passthrough-cni", where, a.Namespace, a.Name)
		}
		if a.Interface == "" {
			continue
		}
		if err := config.ValidateIfName(a.Interface); err != nil {
			t.Errorf("%s: %v", where, err)
		}
		if seen[a.Interface] {
			t.Errorf("%s: interface %q asked for twice", where, a.Interface)
		}
		seen[a.Interface] = true
	}
	return len(atts), jsonForm
}

// checkPodSpec checks that the pod requests one prow/sriov per attachment,
// with limits equal to requests as extended resources require.
func checkPodSpec(t *testing.T, where string, spec corev1.PodSpec, attachments int) {
	t.Helper()
	if len(spec.Containers) == 0 {
		t.Errorf("%s: no containers", where)
	}
	var total resource.Quantity
	for _, c := range spec.Containers {
		req, hasReq := c.Resources.Requests["prow/sriov"]
		lim, hasLim := c.Resources.Limits["prow/sriov"]
		if hasReq != hasLim || req.Cmp(lim) != 0 {
			t.Errorf("%s: container %q: prow/sriov requests %v and limits %v must be equal", where, c.Name, req.String(), lim.String())
		}
		total.Add(req)
	}
	if total.Value() != int64(attachments) {
		t.Errorf("%s: requests %s prow/sriov for %d attachments: want one per PF", where, total.String(), attachments)
	}
}

func TestReadmeProwJobSnippets(t *testing.T) {
	s := readmeSnippets(t)
	forms := map[string]bool{} // "1 short", "2 json", ...
	note := func(n int, jsonForm bool) {
		f := "short"
		if jsonForm {
			f = "json"
		}
		forms[fmt.Sprintf("%d %s", n, f)] = true
	}
	if len(s["prow-job"]) < 2 {
		t.Fatalf("want prow-job snippets for one and two PFs, found %d", len(s["prow-job"]))
	}
	for _, sn := range s["prow-job"] {
		where := sn.where()
		var jobs []prowJob
		if err := decodeStrict([]byte(sn.body), &jobs); err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		if len(jobs) != 1 {
			t.Errorf("%s: want one job, got %d", where, len(jobs))
			continue
		}
		job := jobs[0]
		// What prow makes of it: a pod with the job's annotations and spec,
		// which must itself survive strict decoding.
		pod := corev1.Pod{Spec: job.Spec}
		pod.APIVersion, pod.Kind, pod.Name, pod.Annotations = "v1", "Pod", job.Name, job.Annotations
		data, err := json.Marshal(pod)
		if err != nil {
			t.Fatal(err)
		}
		var back corev1.Pod
		if err := decodeStrict(data, &back); err != nil {
			t.Errorf("%s: as a Pod: %v", where, err)
		}
		n, jsonForm := checkAnnotations(t, where, back.Annotations)
		note(n, jsonForm)
		checkPodSpec(t, where, back.Spec, n)
	}
	for _, sn := range s["annotations"] {
		where := sn.where()
		var a struct {
			Annotations map[string]string `json:"annotations"`
		}
		if err := decodeStrict([]byte(sn.body), &a); err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		note(checkAnnotations(t, where, a.Annotations))
	}
	for _, want := range []string{"1 short", "1 json", "2 short", "2 json"} {
		if !forms[want] {
			t.Errorf("README shows no annotation for %s PF(s) in the %s form (shown: %v)", want[:1], want[2:], forms)
		}
	}
}

func TestReadmePodSnippet(t *testing.T) {
	s := readmeSnippets(t)
	if len(s["pod"]) == 0 {
		t.Fatal("no pod snippet")
	}
	for _, sn := range s["pod"] {
		where := sn.where()
		var pod corev1.Pod
		if err := decodeStrict([]byte(sn.body), &pod); err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		if pod.APIVersion != "v1" || pod.Kind != "Pod" || pod.Name == "" {
			t.Errorf("%s: apiVersion %q kind %q name %q", where, pod.APIVersion, pod.Kind, pod.Name)
		}
		n, _ := checkAnnotations(t, where, pod.Annotations)
		checkPodSpec(t, where, pod.Spec, n)
		if pod.Spec.NodeSelector["hardwareSupport"] != "sriov-nic" {
			t.Errorf("%s: pod does not select SR-IOV nodes", where)
		}
	}
}

func TestReadmeReservedFileSnippet(t *testing.T) {
	s := readmeSnippets(t)
	if len(s["reserved-file"]) == 0 {
		t.Fatal("no reserved-file snippet")
	}
	for _, sn := range s["reserved-file"] {
		got, err := config.ParseReserved(strings.NewReader(sn.body))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, sn.args) {
			t.Errorf("%s: reserved-interfaces file parses as %q, the page says %q", sn.where(), got, sn.args)
		}
	}
}

var heredocRE = regexp.MustCompile(`(?s)cat > (\S+) <<'EOF'\n(.*?)\nEOF\n`)

func TestReadmeCnitoolSnippet(t *testing.T) {
	s := readmeSnippets(t)
	if len(s["cnitool"]) != 1 {
		t.Fatalf("want one cnitool snippet, found %d", len(s["cnitool"]))
	}
	sn := s["cnitool"][0]
	where := sn.where()
	m := heredocRE.FindStringSubmatch(sn.body)
	if m == nil {
		t.Fatalf("%s: no conf file written with cat > FILE <<'EOF'", where)
	}
	confPath, conf := m[1], m[2]
	got := checkPluginConf(t, where, []byte(conf))
	if !strings.HasSuffix(confPath, ".conf") {
		t.Errorf("%s: %s: cnitool reads *.conf, *.conflist and *.json", where, confPath)
	}
	env := map[string]string{}
	for _, m := range regexp.MustCompile(`(\w+)=("[^"]*"|\S+)`).FindAllStringSubmatch(sn.body, -1) {
		env[m[1]] = strings.Trim(m[2], `"`)
	}
	if dir := confPath[:strings.LastIndex(confPath, "/")]; env["NETCONFPATH"] != dir {
		t.Errorf("%s: conf written to %s but NETCONFPATH=%s", where, dir, env["NETCONFPATH"])
	}
	if !strings.Contains(sn.body, "cp bin/sriov-passthrough-cni "+env["CNI_PATH"]+"/") {
		t.Errorf("%s: the binary is not copied into CNI_PATH=%s", where, env["CNI_PATH"])
	}
	if _, err := config.ParseArgs(env["CNI_ARGS"]); err != nil {
		t.Errorf("%s: CNI_ARGS: %v", where, err)
	}
	for _, verb := range []string{"add", "check", "del"} {
		re := regexp.MustCompile(`cnitool ` + verb + ` +(\S+) +(/var/run/netns/\S+)`)
		cm := re.FindStringSubmatch(sn.body)
		if cm == nil {
			t.Errorf("%s: no cnitool %s NETWORK /var/run/netns/NAME", where, verb)
			continue
		}
		if got != nil && cm[1] != got.Name {
			t.Errorf("%s: cnitool %s names network %q, the conf is %q", where, verb, cm[1], got.Name)
		}
	}
	if !bytes.Contains([]byte(sn.body), []byte("ip netns add ")) {
		t.Errorf("%s: no ip netns add", where)
	}
}

// testsPage and testsHeading are where the list of make test's stages is:
// every stage `make test` runs, in the Makefile's order, so a stage is
// never added without saying what it proves.
const (
	testsPage    = "docs/testing.md"
	testsHeading = "## What make test runs"
)

func TestReadmeNamesEveryStageOfMakeTest(t *testing.T) {
	makefile := strings.ReplaceAll(string(readRepoFile(t, "Makefile")), "\\\n", " ")
	m := regexp.MustCompile(`(?m)^TEST_STAGES := (.*)$`).FindStringSubmatch(makefile)
	if m == nil || len(strings.Fields(m[1])) == 0 {
		t.Fatal("Makefile: no TEST_STAGES, the stages make test runs")
	}
	stages := strings.Fields(m[1])
	text := section(t, testsPage, testsHeading)
	var listed []string
	for _, l := range regexp.MustCompile("(?m)^- `make ([a-z0-9-]+)`").FindAllStringSubmatch(text, -1) {
		listed = append(listed, l[1])
	}
	if !slices.Equal(listed, stages) {
		t.Errorf("%s, %q lists make %v; make test runs %v (same stages, same order)", testsPage, testsHeading, listed, stages)
	}
}
