package deploy_test

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// The VM runner's verdicts (test/vm/selftest.sh): a VM that crashed after
// boot runs once more, nothing else does, and every end leaves a summary.
// No QEMU: the script replaces the boot with scripted consoles.
func TestVMRunnerVerdicts(t *testing.T) {
	needTool(t, "cpio", "cpio")
	cmd := exec.Command("bash", filepath.Join(repoRoot(t), "test", "vm", "selftest.sh"))
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("test/vm/selftest.sh: %v", err)
	}
}
