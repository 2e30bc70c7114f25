// Package hostcheck_test is the last step of `make test`: it compares the
// host with the snapshot test/hostcheck.sh took when the run began, and
// fails with the list of what the tests left behind (network namespaces,
// links, mounts, temp dirs, processes, cgroups). Being a go test, it keeps
// go test's summary as the last line of the run.
package hostcheck_test

import (
	"os"
	"os/exec"
	"testing"
)

// SnapshotEnv names the snapshot file; make test sets it for this package
// alone, after every other stage has finished.
const SnapshotEnv = "SRIOVPT_HOST_SNAPSHOT"

func TestHostAsAtTheStart(t *testing.T) {
	snap := os.Getenv(SnapshotEnv)
	if snap == "" {
		t.Skip("skipped: runs as the last step of make test, which sets " + SnapshotEnv)
	}
	out, err := exec.Command("bash", "../hostcheck.sh", "compare", snap).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("%s", out)
}
