package deploy_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// The VM runner's verdicts (test/vm/selftest.sh): a VM that crashed after
// boot runs once more, nothing else does, and every end leaves a summary.
// No QEMU: the script replaces the boot with scripted consoles.
func TestVMRunnerVerdicts(t *testing.T) {
	needTool(t, "cpio", "cpio")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := finish(t, exec.CommandContext(ctx, "bash", filepath.Join(repoRoot(t), "test", "vm", "selftest.sh")), nil)
	t.Logf("%s", r.stdout)
	if r.code != 0 {
		t.Fatalf("test/vm/selftest.sh: %v", r)
	}
}
