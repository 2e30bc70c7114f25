package claims

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

func entry(uid, podName, podUID string, pfs ...string) Entry {
	return Entry{Claim: Ref{Namespace: "ci", Name: podName + "-sriov", UID: uid},
		Pods: []Ref{{Namespace: "ci", Name: podName, UID: podUID}}, PFs: pfs}
}

// The checkpoint lives in its own directory: the state dir's attachment
// records are every *.json directly in it, and a claim must never be read
// as one (or set aside as a bad one).
func TestCheckpointIsNotInTheStateDirItself(t *testing.T) {
	stateDir := t.TempDir()
	s := For(stateDir)
	if _, err := s.Prepare(entry("u1", "job", "p1", "0000:3b:00.0")); err != nil {
		t.Fatal(err)
	}
	if direct, _ := filepath.Glob(filepath.Join(stateDir, "*.json")); len(direct) != 0 {
		t.Errorf("checkpoint wrote into the state dir: %v", direct)
	}
	recs, bad, err := state.Store{Dir: stateDir}.List()
	if err != nil || len(recs) != 0 || len(bad) != 0 {
		t.Errorf("the state store read the checkpoint: %v %v %v", recs, bad, err)
	}
	fi, err := os.Stat(filepath.Join(stateDir, Subdir, "u1.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("entry file: %v %v", fi, err)
	}
}

// The kubelet repeats Prepare (after its own restart or the agent's): the
// same claim UID gives the same entry, prepared time included, and one
// file. A repeat naming other PFs is refused and changes nothing.
func TestPrepareIsIdempotent(t *testing.T) {
	s := For(t.TempDir())
	first, err := s.Prepare(entry("u1", "job", "p1", "0000:3c:00.0", "0000:3b:00.0"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(first.PFs, []string{"0000:3b:00.0", "0000:3c:00.0"}) || first.Prepared.IsZero() || first.Version != Version {
		t.Fatalf("first: %+v", first)
	}
	time.Sleep(2 * time.Millisecond)
	again, err := s.Prepare(entry("u1", "job", "p1", "0000:3b:00.0", "0000:3c:00.0"))
	if err != nil || !again.Prepared.Equal(first.Prepared) || !slices.Equal(again.PFs, first.PFs) {
		t.Errorf("again: %+v %v, want %+v", again, err, first)
	}
	if _, err := s.Prepare(entry("u1", "job", "p1", "0000:3d:00.0")); err == nil || !strings.Contains(err.Error(), "0000:3d:00.0") {
		t.Errorf("other PFs for the same claim: %v", err)
	}
	all, err := s.List()
	if err != nil || len(all) != 1 || !slices.Equal(all[0].PFs, first.PFs) {
		t.Errorf("list: %+v %v", all, err)
	}
	if files, _ := os.ReadDir(s.Dir); len(files) != 1 {
		t.Errorf("files: %v", files)
	}
}

func TestUnprepareRemovesByClaimUID(t *testing.T) {
	s := For(t.TempDir())
	for _, e := range []Entry{entry("u1", "a", "p1", "0000:3b:00.0"), entry("u2", "b", "p2", "0000:3c:00.0")} {
		if _, err := s.Prepare(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Unprepare("u1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Unprepare("u1"); err != nil {
		t.Errorf("repeated Unprepare: %v", err)
	}
	if err := s.Unprepare("never-prepared"); err != nil {
		t.Errorf("Unprepare of an unknown claim: %v", err)
	}
	all, err := s.List()
	if err != nil || len(all) != 1 || all[0].Claim.UID != "u2" {
		t.Errorf("left: %+v %v", all, err)
	}
	if err := For(filepath.Join(t.TempDir(), "none")).Unprepare("u1"); err != nil {
		t.Errorf("Unprepare without a checkpoint dir: %v", err)
	}
}

// A claim UID names a file: nothing it says may reach another directory.
func TestBadClaimUIDsAreRefused(t *testing.T) {
	s := For(t.TempDir())
	for _, uid := range []string{"", "../x", ".hidden", "a/b", "a\x00b"} {
		if _, err := s.Prepare(entry(uid, "job", "p", "0000:3b:00.0")); err == nil {
			t.Errorf("Prepare %q: no error", uid)
		}
		if err := s.Unprepare(uid); err == nil {
			t.Errorf("Unprepare %q: no error", uid)
		}
	}
	if _, err := s.Prepare(entry("u1", "job", "p")); err == nil {
		t.Errorf("a claim without PFs was recorded")
	}
}

// A half-written or foreign file is an error, not silence: the plugin must
// not pin by a checkpoint it read in part. Temp files are not read.
func TestListRefusesAnEntryItCannotRead(t *testing.T) {
	s := For(t.TempDir())
	if _, err := s.Prepare(entry("u1", "a", "p1", "0000:3b:00.0")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, ".tmp-u2.json-123"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if all, err := s.List(); err != nil || len(all) != 1 {
		t.Fatalf("temp file read: %v %v", all, err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "u3.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.List(); err == nil || !strings.Contains(err.Error(), "u3.json") {
		t.Errorf("corrupt entry: %v", err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "u3.json"), []byte(`{"claim":{"uid":"u9"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.List(); err == nil || !strings.Contains(err.Error(), "u9") {
		t.Errorf("entry under another claim's name: %v", err)
	}
}

// The two-entry rule: a force-deleted pod whose claim is not unprepared
// yet, and its successor of the same name, each with a claim here.
func TestForPodNeverGivesTheSuccessorItsPredecessorsClaim(t *testing.T) {
	old := entry("claim-old", "job", "pod-old", "0000:3b:00.0")
	old.Prepared = time.Unix(1, 0)
	succ := entry("claim-new", "job", "pod-new", "0000:3c:00.0")
	succ.Prepared = time.Unix(2, 0)
	other := entry("claim-other", "other", "pod-other", "0000:3d:00.0")
	both := []Entry{old, succ, other}

	// With the pod's UID (the kubelet's own CNI call, multus v4): exact.
	for uid, want := range map[string]string{"pod-new": "claim-new", "pod-old": "claim-old"} {
		e, err := ForPod(both, "ci", "job", uid)
		if err != nil || e == nil || e.Claim.UID != want {
			t.Errorf("uid %s: %+v %v, want %s", uid, e, err, want)
		}
	}
	// A UID no claim is reserved for matches nothing, not the name.
	if e, err := ForPod([]Entry{old}, "ci", "job", "pod-new"); e != nil || err != nil {
		t.Errorf("successor by UID, only the old claim here: %+v %v", e, err)
	}
	// Without it (multus v3.x): one claim under the name is the pod's.
	if e, err := ForPod([]Entry{succ, other}, "ci", "job", ""); err != nil || e == nil || e.Claim.UID != "claim-new" {
		t.Errorf("one claim by name: %+v %v", e, err)
	}
	// Two are ambiguous, and the error names both claims and PFs.
	e, err := ForPod(both, "ci", "job", "")
	var amb *AmbiguousError
	if e != nil || !errors.As(err, &amb) || len(amb.Claims) != 2 {
		t.Fatalf("two claims by name: %+v %v", e, err)
	}
	for _, s := range []string{"claim-old", "claim-new", "0000:3b:00.0", "0000:3c:00.0", "pod-old", "pod-new", "ci/job"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("ambiguity error does not name %s: %v", s, err)
		}
	}
	if strings.Contains(err.Error(), "claim-other") {
		t.Errorf("ambiguity error names an unrelated claim: %v", err)
	}
	// Another namespace, or no pod identity at all, matches nothing.
	if e, err := ForPod(both, "other-ns", "job", ""); e != nil || err != nil {
		t.Errorf("other namespace: %+v %v", e, err)
	}
	if e, err := ForPod(both, "", "", ""); e != nil || err != nil {
		t.Errorf("no pod identity: %+v %v", e, err)
	}
}
