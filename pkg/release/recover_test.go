package release

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/sriov"
	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
)

const (
	vetPF = "0000:3b:00.0"
	vetVF = "0000:7b:00.0"
)

// vetWorld is a sysfs tree with one PF and its VF, and a state dir holding
// one record of both, with the PF's SR-IOV state.
func vetWorld(t *testing.T) (*Engine, *state.Record) {
	t.Helper()
	dir := t.TempDir()
	sys := filepath.Join(dir, "sys")
	devs := filepath.Join(sys, "bus", "pci", "devices")
	for _, d := range []string{vetPF, vetVF} {
		if err := os.MkdirAll(filepath.Join(devs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(devs, vetPF, "sriov_totalvfs"), "7\n")
	writeFile(t, filepath.Join(devs, vetPF, "sriov_numvfs"), "1\n")
	if err := os.Symlink("../"+vetVF, filepath.Join(devs, vetPF, "virtfn0")); err != nil {
		t.Fatal(err)
	}
	eng := &Engine{
		Log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Sys:   sriov.Sysfs{Root: sys},
		Store: state.Store{Dir: filepath.Join(dir, "state")},
	}
	rec := &state.Record{
		Version: state.Version, ContainerID: "c1", IfName: "net1", Phase: state.Attached,
		Devices: []state.Device{
			{PCIAddress: vetPF, OriginalName: "ens1f0", PodName: "net1", VFIndex: -1},
			{PCIAddress: vetVF, OriginalName: "ens1f0v0", PodName: "ens1f0v0", VFIndex: 0},
		},
		SRIOV: &state.SRIOV{NumVFs: 1, DriversAutoprobe: true, VFs: []state.VF{{Index: 0, PCIAddress: vetVF, Driver: "igbvf"}}},
	}
	if err := eng.Store.Save(rec); err != nil {
		t.Fatal(err)
	}
	return eng, rec
}

// unreadable makes a sysfs attribute fail to read with something other
// than "no such file" (EISDIR here, as EIO would on a sick device).
func unreadable(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
}

// A sysfs read that fails proves nothing about a record: it is kept whole
// (original names, SR-IOV state), still holding its PF, and the release
// reports the error so the runtime retries. Only proof sets it aside.
func TestVetKeepsRecordOnReadErrorsAndSetsAsideOnlyOnProof(t *testing.T) {
	devs := func(e *Engine) string { return filepath.Join(e.Sys.Root, "bus", "pci", "devices") }
	for _, c := range []struct {
		name  string
		spoil func(t *testing.T, e *Engine)
		aside bool
	}{
		{"sriov_totalvfs unreadable", func(t *testing.T, e *Engine) { unreadable(t, filepath.Join(devs(e), vetPF, "sriov_totalvfs")) }, false},
		{"sriov_numvfs unreadable", func(t *testing.T, e *Engine) { unreadable(t, filepath.Join(devs(e), vetPF, "sriov_numvfs")) }, false},
		{"PF is no SR-IOV PF", func(t *testing.T, e *Engine) { writeFile(t, filepath.Join(devs(e), vetPF, "sriov_totalvfs"), "0\n") }, true},
		{"PF has no sriov_totalvfs", func(t *testing.T, e *Engine) { _ = os.Remove(filepath.Join(devs(e), vetPF, "sriov_totalvfs")) }, true},
		{"device is not the PF's VF", func(t *testing.T, e *Engine) { _ = os.Remove(filepath.Join(devs(e), vetPF, "virtfn0")) }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			eng, rec := vetWorld(t)
			c.spoil(t, eng)
			trusted, err := eng.ReleaseRecord(rec, 0)
			if trusted {
				t.Fatalf("ReleaseRecord trusted a record it could not vet")
			}
			bad, _ := filepath.Glob(filepath.Join(eng.Store.Dir, "*.bad-*"))
			kept, gerr := eng.Store.Get(rec.Key())
			if c.aside {
				if len(bad) != 1 || kept != nil || err != nil {
					t.Fatalf("set aside %v, record %+v (%v), err %v; want it set aside and no error", bad, kept, gerr, err)
				}
				return
			}
			if len(bad) != 0 || kept == nil || gerr != nil {
				t.Fatalf("set aside %v, record %+v (%v); want the record kept where it was", bad, kept, gerr)
			}
			if !errors.Is(err, errCannotVet) {
				t.Errorf("ReleaseRecord = %v, want an error the runtime retries", err)
			}
			if !rec.Holds() || kept.SRIOV == nil || kept.PF().OriginalName != "ens1f0" {
				t.Errorf("record no longer holds its PF or lost its state: %+v", kept)
			}
		})
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
