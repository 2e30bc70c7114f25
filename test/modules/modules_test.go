// Package modules_test checks the repository's Go module layout: every module
// is tested by the Makefile, and the plugin's own module requires only what
// its binaries are built from. Fast, no root.
package modules_test

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// repoRoot is the root module's directory: go test runs a test in its
// package's directory, two levels below.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root %s: %v", root, err)
	}
	return root
}

// makeList returns the words of a `NAME := ...` assignment in the Makefile,
// following backslash continuations.
func makeList(t *testing.T, root, name string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\s*:?=(.*)$`)
	m := re.FindAllStringSubmatch(text, -1)
	if len(m) != 1 {
		t.Fatalf("Makefile: want one assignment of %s, found %d", name, len(m))
	}
	var out []string
	for _, w := range strings.Fields(m[0][1]) {
		out = append(out, filepath.Clean(w))
	}
	return out
}

// goModDirs lists the directories (relative to root) holding a go.mod, with
// the go command's own rule for what a pattern like ./... never enters:
// testdata and names starting with "." or "_".
func goModDirs(t *testing.T, root string) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() && path != root && (name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
			return filepath.SkipDir
		}
		if !d.IsDir() && name == "go.mod" {
			rel, _ := filepath.Rel(root, filepath.Dir(path))
			dirs = append(dirs, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// `go test ./...` stops at a nested go.mod: a module the Makefile does not
// name is a module whose tests silently never run.
func TestEveryModuleIsTestedOrExcluded(t *testing.T) {
	root := repoRoot(t)
	tested := makeList(t, root, "TEST_MODULES")
	untested := makeList(t, root, "UNTESTED_MODULES")
	if !slices.Contains(tested, ".") {
		t.Errorf("TEST_MODULES %v lacks the root module \".\"", tested)
	}
	found := goModDirs(t, root)
	for _, dir := range found {
		switch in, out := slices.Contains(tested, dir), slices.Contains(untested, dir); {
		case in && out:
			t.Errorf("%s/go.mod is in both TEST_MODULES and UNTESTED_MODULES", dir)
		case !in && !out:
			t.Errorf("%s/go.mod is in neither TEST_MODULES nor UNTESTED_MODULES of the Makefile: its tests would never run", dir)
		}
	}
	for _, dir := range slices.Concat(tested, untested) {
		if !slices.Contains(found, dir) {
			t.Errorf("the Makefile lists %s, which has no go.mod", dir)
		}
	}
}

// Modules the root go.mod may require although no binary is built from
// them. Each needs a reason; test-only heavy dependencies belong in a module
// of their own under test/ instead.
var rootTestOnly = map[string]string{
	// go mod tidy records it: containernetworking/cni's skel tests use
	// gomega, which needs it. About 100 kB.
	"github.com/google/go-cmp": "in the module graph of containernetworking/cni's tests",
	// host-local is a tool of the root module (go.mod's tool line): the
	// IPAM tests of test/integration and test/e2e delegate to it.
	"github.com/alexflint/go-filemutex": "host-local's lock, about 30 kB",
}

// Modules that must never reach the production build: the plot library of
// test/bench, Kubernetes itself (test/k8s), the NAD client of test/multus.
// (The node agent legitimately brings k8s.io/kubelet and
// google.golang.org/grpc through cmd/, and its DRA binary
// k8s.io/dynamic-resource-allocation with k8s.io/client-go and k8s.io/api;
// they are not here, but draOnly keeps them out of the other two.)
var neverInProduction = []string{
	"gonum.org/v1/plot",
	"k8s.io/kubernetes",
	"github.com/k8snetworkplumbingwg/network-attachment-definition-client",
}

// draOnly are the modules only the agent's DRA mode needs, in its own
// binary, sriov-passthrough-dra. The CNI plugin, which the runtime execs
// for every attachment, must not carry them, nor the device-plugin agent,
// which runs on every node under a memory limit: they are most of the DRA
// binary's size (54 MB stripped, against the agent's 15 MB).
var draOnly = []string{
	"k8s.io/api",
	"k8s.io/apimachinery",
	"k8s.io/client-go",
	"k8s.io/dynamic-resource-allocation",
}

func TestOnlyTheDRABinaryCarriesTheKubernetesClient(t *testing.T) {
	root := repoRoot(t)
	for _, cmd := range []string{"./cmd/sriov-passthrough-cni", "./cmd/sriov-passthrough-agent"} {
		mods := strings.Fields(goOutput(t, root, "list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}", cmd))
		if len(mods) == 0 {
			t.Fatalf("%s depends on no module; the test proves nothing", cmd)
		}
		for _, bad := range draOnly {
			if slices.Contains(mods, bad) {
				t.Errorf("%s depends on %s, which only cmd/sriov-passthrough-dra may", cmd, bad)
			}
		}
	}
	mods := strings.Fields(goOutput(t, root, "list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}", "./cmd/sriov-passthrough-dra"))
	if !slices.Contains(mods, "k8s.io/dynamic-resource-allocation") {
		t.Error("cmd/sriov-passthrough-dra does not depend on k8s.io/dynamic-resource-allocation: the list above is stale")
	}
}

// The image build runs `go mod download`, which fetches every module the
// root go.mod requires, then builds ./cmd/...: so the root go.mod must
// require only modules the binaries import (plus the listed exceptions).
func TestProductionBuildDownloadsOnlyWhatTheBinariesUse(t *testing.T) {
	root := repoRoot(t)
	used := map[string]bool{}
	for _, mod := range strings.Fields(goOutput(t, root, "list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}", "./cmd/...")) {
		used[mod] = true
	}
	var gomod struct{ Require []struct{ Path string } }
	if err := json.Unmarshal([]byte(goOutput(t, root, "mod", "edit", "-json")), &gomod); err != nil {
		t.Fatalf("go mod edit -json: %v", err)
	}
	if len(gomod.Require) == 0 {
		t.Fatal("the root go.mod requires nothing; the test proves nothing")
	}
	for _, r := range gomod.Require {
		if !used[r.Path] && rootTestOnly[r.Path] == "" {
			t.Errorf("the root go.mod requires %s, which no binary under cmd/ uses: move the tests that need it into a module under test/ (or add it to rootTestOnly with a reason)", r.Path)
		}
	}
	for _, bad := range neverInProduction {
		for mod := range used {
			if mod == bad || strings.HasPrefix(mod, bad+"/") {
				t.Errorf("a binary under cmd/ depends on %s", mod)
			}
		}
		for _, r := range gomod.Require {
			if r.Path == bad || strings.HasPrefix(r.Path, bad+"/") {
				t.Errorf("the root go.mod requires %s", r.Path)
			}
		}
	}
}

func goOutput(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return string(out)
}
