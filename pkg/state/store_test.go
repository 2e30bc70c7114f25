package state

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/config"
)

func sample() *Record {
	return &Record{
		Version: Version, ContainerID: "abc", IfName: "net1", Netns: "/var/run/netns/x",
		Pod: config.Pod{Namespace: "ci", Name: "job"}, Phase: Attached, Created: time.Unix(10, 0).UTC(),
		Devices: []Device{
			{PCIAddress: "0000:3b:00.0", OriginalName: "ens1f0", PodName: "net1", VFIndex: -1},
			{PCIAddress: "0000:3b:10.0", OriginalName: "ens1f0v0", PodName: "ens1f0v0", VFIndex: 0},
		},
	}
}

func TestSaveGetRemove(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "state")}
	r := sample()
	if err := s.Save(r); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(r.Key())
	if err != nil || got == nil || got.PF().OriginalName != "ens1f0" || len(got.Pending()) != 2 {
		t.Fatalf("Get: %+v %v", got, err)
	}
	fi, _ := os.Stat(s.path(r.Key()))
	di, _ := os.Stat(s.Dir)
	if fi.Mode().Perm() != 0o600 || di.Mode().Perm() != 0o700 {
		t.Errorf("modes: record %v dir %v", fi.Mode(), di.Mode())
	}
	leftovers, _ := filepath.Glob(filepath.Join(s.Dir, ".tmp-*"))
	if len(leftovers) != 0 {
		t.Errorf("temp files left: %v", leftovers)
	}
	if err := s.Remove(r.Key()); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(r.Key()); got != nil || err != nil {
		t.Fatalf("after Remove: %v %v", got, err)
	}
	if err := s.Remove(r.Key()); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

func TestValidateRejects(t *testing.T) {
	for name, mutate := range map[string]func(*Record){
		"bad pci":       func(r *Record) { r.Devices[1].PCIAddress = "../../etc" },
		"dup pci":       func(r *Record) { r.Devices[1].PCIAddress = r.Devices[0].PCIAddress },
		"no devices":    func(r *Record) { r.Devices = nil },
		"pf not first":  func(r *Record) { r.Devices[0].VFIndex = 3 },
		"two pfs":       func(r *Record) { r.Devices[1].VFIndex = -1 },
		"bad name":      func(r *Record) { r.Devices[0].OriginalName = "a/b" },
		"bad phase":     func(r *Record) { r.Phase = "dancing" },
		"bad version":   func(r *Record) { r.Version = 99 },
		"bad container": func(r *Record) { r.ContainerID = "../x" },
	} {
		r := sample()
		mutate(r)
		if err := r.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := sample().Validate(); err != nil {
		t.Errorf("valid sample rejected: %v", err)
	}
}

func TestListSetsCorruptRecordsAside(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	if err := s.Save(sample()); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"trunc:net1.json": `{"version":1,`, "edited:net1.json": `{"version":1,"containerID":"edited","ifName":"net1","phase":"attached","devices":[{"pciAddress":"/dev/sda"}]}`} {
		if err := os.WriteFile(filepath.Join(s.Dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	recs, bad, err := s.List()
	if err != nil || len(recs) != 1 || len(bad) != 2 {
		t.Fatalf("List: %d records, %d bad, %v", len(recs), len(bad), err)
	}
	for _, b := range bad {
		if !strings.Contains(b.Path, ".bad-") {
			t.Errorf("bad record path %q", b.Path)
		}
		if _, err := os.Stat(b.Path); err != nil {
			t.Errorf("bad record not kept: %v", err)
		}
	}
	if recs, bad, _ = s.List(); len(recs) != 1 || len(bad) != 0 {
		t.Errorf("second List: %d records, %d bad", len(recs), len(bad))
	}
}

func TestLockExcludesAndTimesOut(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	unlock, err := s.Lock(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// flock locks belong to the open file description, so a second open
	// in the same process contends like another process would.
	if _, err := s.Lock(30 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "state lock busy") {
		t.Fatalf("second lock: want busy, got %v", err)
	}
	unlock()
	unlock2, err := s.Lock(time.Second)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}
