// Package claims is the node-local checkpoint of the DRA claims the agent
// prepared: which pod each claim is reserved for and which PFs it was
// allocated. The agent writes it when the kubelet prepares a claim and
// removes the entry when the kubelet unprepares it; the plugin reads it to
// take exactly the PF the scheduler allocated, whatever multus passes.
//
// One file per claim, named by its UID, in a subdirectory of the state
// dir: every *.json directly in the state dir is an attachment record.
package claims

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

// Subdir is the checkpoint's directory under the state dir.
const Subdir = "dra-claims"

// Version of the entry format: fields are only added, never repurposed.
const Version = 1

const suffix = ".json"

// Ref names a Kubernetes object: a claim, or a pod it is reserved for.
type Ref struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

func (r Ref) String() string { return r.Namespace + "/" + r.Name + " (uid " + r.UID + ")" }

// Entry is one prepared claim.
type Entry struct {
	Version int   `json:"version"`
	Claim   Ref   `json:"claim"`
	Pods    []Ref `json:"pods"`
	// PFs are the PCI addresses of the PFs allocated to the claim on
	// this node, sorted.
	PFs      []string  `json:"pfs"`
	Prepared time.Time `json:"prepared"`
}

// Store keeps the entries in Dir (StateDir's Subdir).
type Store struct {
	Dir string
}

// For is the checkpoint of the node whose state dir is stateDir.
func For(stateDir string) Store { return Store{Dir: filepath.Join(stateDir, Subdir)} }

// Prepare records e, once per claim UID, and returns the entry that is on
// disk. A claim already prepared is not written again (the kubelet repeats
// Prepare after a restart of its own or of the agent): its entry is
// returned as it was, unless it names other PFs, which a claim's
// allocation never does, and that is an error.
func (s Store) Prepare(e Entry) (Entry, error) {
	if err := ValidUID(e.Claim.UID); err != nil {
		return Entry{}, err
	}
	if len(e.PFs) == 0 {
		return Entry{}, fmt.Errorf("claim %s: no PF to record", e.Claim)
	}
	e.PFs = slices.Sorted(slices.Values(e.PFs))
	old, err := s.Get(e.Claim.UID)
	if err != nil {
		return Entry{}, err
	}
	if old != nil {
		if !slices.Equal(old.PFs, e.PFs) {
			return Entry{}, fmt.Errorf("claim %s was prepared with PFs %v, now asked for %v", e.Claim, old.PFs, e.PFs)
		}
		return *old, nil
	}
	e.Version = Version
	if e.Prepared.IsZero() {
		e.Prepared = time.Now().UTC()
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return Entry{}, fmt.Errorf("create claim checkpoint dir: %w", err)
	}
	data, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return Entry{}, fmt.Errorf("encode claim %s: %w", e.Claim, err)
	}
	if err := state.WriteAtomic(s.Dir, e.Claim.UID+suffix, data); err != nil {
		return Entry{}, fmt.Errorf("claim checkpoint: %w", err)
	}
	return e, nil
}

// Unprepare removes the claim's entry; one that is not there is not an
// error (the kubelet repeats Unprepare too).
func (s Store) Unprepare(uid string) error {
	if err := ValidUID(uid); err != nil {
		return err
	}
	err := os.Remove(filepath.Join(s.Dir, uid+suffix))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("claim checkpoint: remove %s: %w", uid, err)
	}
	return state.SyncDir(s.Dir)
}

// Get reads the claim's entry; (nil, nil) when there is none.
func (s Store) Get(uid string) (*Entry, error) {
	if err := ValidUID(uid); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(s.Dir, uid+suffix))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("claim checkpoint: %w", err)
	}
	var e Entry
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, fmt.Errorf("claim checkpoint %s: %w", filepath.Join(s.Dir, uid+suffix), err)
	}
	if e.Claim.UID != uid {
		return nil, fmt.Errorf("claim checkpoint %s: holds claim %s", filepath.Join(s.Dir, uid+suffix), e.Claim)
	}
	return &e, nil
}

// List reads every entry, oldest first. An entry that cannot be read is
// an error: the plugin must not pin by a checkpoint it read in part.
func (s Store) List() ([]Entry, error) {
	dirents, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("claim checkpoint: %w", err)
	}
	var out []Entry
	for _, d := range dirents {
		name := d.Name()
		if !strings.HasSuffix(name, suffix) || strings.HasPrefix(name, ".") {
			continue
		}
		e, err := s.Get(strings.TrimSuffix(name, suffix))
		if err != nil {
			return nil, err
		}
		if e != nil {
			out = append(out, *e)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Prepared.Before(out[j].Prepared) })
	return out, nil
}

// ValidUID refuses what is not a file name of its own: a claim UID is a
// UUID, and nothing it says may reach another directory.
func ValidUID(uid string) error {
	if uid == "" || strings.HasPrefix(uid, ".") || strings.ContainsAny(uid, "/\x00") || len(uid) > 200 {
		return fmt.Errorf("claim UID %q is not a valid checkpoint name", uid)
	}
	return nil
}
