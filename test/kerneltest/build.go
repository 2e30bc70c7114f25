package kerneltest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// BuildBinaries puts into dir what tests run through libcni: the plugin and
// host-local (a tool of the plugin's module), both built in the plugin's own
// module exactly as a release is. It works from the plugin's module and from
// a test module that replaces it with the repository, whose own go.sum then
// need not hold their dependencies.
func BuildBinaries(dir string) error {
	root, err := goCmd("", "list", "-m", "-f", "{{.Dir}}", "github.com/kubevirt/sriov-passthrough-cni")
	if err != nil {
		return err
	}
	for name, pkg := range map[string]string{
		"sriov-passthrough-cni": "./cmd/sriov-passthrough-cni",
		"host-local":            "github.com/containernetworking/plugins/plugins/ipam/host-local",
	} {
		if _, err := goCmd(root, "build", "-o", filepath.Join(dir, name), pkg); err != nil {
			return err
		}
	}
	return nil
}

// RunWithBinaries is a TestMain's body for tests that exec the plugin:
// it builds the plugin and host-local into a new temp dir (named with
// prefix), points *dir at it, runs the tests, removes the dir and returns
// the exit code.
func RunWithBinaries(m *testing.M, prefix string, dir *string) int {
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(d)
	*dir = d
	if err := BuildBinaries(d); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// goCmd runs the go tool in dir and returns its trimmed output.
func goCmd(dir string, args ...string) (string, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, exit.Stderr)
	}
	if err != nil {
		return "", fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}
