package failpoint_test

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/failpoint"
)

// TestProductionBinaryHasNoFailpoints builds the plugin as `make build`
// does, once without and once with the failpoints tag, and looks for the
// failpoint code in each: the symbols (go tool nm) and the environment
// variable's name in the bytes. The tagged build is the control that shows
// the check would see the code if it were there. Symbols are kept (no -s)
// so that nm has something to look at.
func TestProductionBinaryHasNoFailpoints(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin twice")
	}
	dir := t.TempDir()
	build := func(tags ...string) (syms string, data []byte) {
		t.Helper()
		out := filepath.Join(dir, "plugin"+strings.Join(tags, ""))
		args := append([]string{"build", "-trimpath", "-o", out}, tags...)
		cmd := exec.Command("go", append(args, "github.com/kubevirt/sriov-passthrough-cni/cmd/sriov-passthrough-cni")...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %v: %v\n%s", args, err, b)
		}
		nm, err := exec.Command("go", "tool", "nm", out).CombinedOutput()
		if err != nil {
			t.Fatalf("go tool nm: %v\n%s", err, nm)
		}
		data, err = os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return string(nm), data
	}
	const pkg = "sriov-passthrough-cni/pkg/failpoint."

	syms, data := build()
	for _, line := range strings.Split(syms, "\n") {
		if strings.Contains(line, pkg) {
			t.Errorf("production binary has failpoint symbol: %s", line)
		}
	}
	if bytes.Contains(data, []byte(failpoint.Env)) {
		t.Errorf("production binary contains the string %q", failpoint.Env)
	}

	syms, data = build("-tags", "failpoints")
	if !strings.Contains(syms, pkg+"die") || !bytes.Contains(data, []byte(failpoint.Env)) {
		t.Errorf("control failed: the failpoints build shows no failpoint code, so the check above proves nothing")
	}
}

// TestAllListsEveryStep parses steps.go: a Step constant missing from All
// would never be killed at by test/stress.
func TestAllListsEveryStep(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "steps.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	declared := 0
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, spec := range g.Specs {
			v := spec.(*ast.ValueSpec)
			if id, ok := v.Type.(*ast.Ident); !ok || id.Name != "Step" {
				continue
			}
			for _, lit := range v.Values {
				declared++
				name, _ := strconv.Unquote(lit.(*ast.BasicLit).Value)
				if !slices.Contains(failpoint.All, failpoint.Step(name)) && !slices.Contains(failpoint.VMOnly, failpoint.Step(name)) {
					t.Errorf("step %q is declared but not in All or VMOnly", name)
				}
			}
		}
	}
	if declared != len(failpoint.All)+len(failpoint.VMOnly) || declared < 10 {
		t.Errorf("steps.go declares %d steps, All and VMOnly list %d", declared, len(failpoint.All)+len(failpoint.VMOnly))
	}
}
