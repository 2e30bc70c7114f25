//go:build stress

package stress

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/state"
	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// badRecords are ways a record file can be wrong: cut short by a full disk
// or a crash of something other than the plugin (the plugin itself writes
// atomically), corrupted, edited by hand, or tampered with to make the
// plugin move a device it never took. base is a good record of an
// attachment "bad" holding the second PF; plain is the node's ordinary NIC.
var badRecords = map[string]func(base []byte, rec map[string]any, pf1 kerneltest.PF) []byte{
	"empty":         func(b []byte, _ map[string]any, _ kerneltest.PF) []byte { return nil },
	"truncated-1":   func(b []byte, _ map[string]any, _ kerneltest.PF) []byte { return b[:1] },
	"truncated-3rd": func(b []byte, _ map[string]any, _ kerneltest.PF) []byte { return b[:len(b)/3] },
	"truncated-end": func(b []byte, _ map[string]any, _ kerneltest.PF) []byte { return b[:len(b)-2] },
	"garbage":       func([]byte, map[string]any, kerneltest.PF) []byte { return []byte("\x00\xff{{{\x7f") },
	"null":          func([]byte, map[string]any, kerneltest.PF) []byte { return []byte("null") },
	"array":         func([]byte, map[string]any, kerneltest.PF) []byte { return []byte("[]") },
	"deeply-nested": func([]byte, map[string]any, kerneltest.PF) []byte {
		return []byte(strings.Repeat("[", 100000) + strings.Repeat("]", 100000))
	},
	"wrong-types": func(_ []byte, r map[string]any, _ kerneltest.PF) []byte {
		r["devices"] = "eth0"
		return mustJSON(r)
	},
	"phase-bogus":  edit(func(r map[string]any) { r["phase"] = "detaching" }),
	"version-2":    edit(func(r map[string]any) { r["version"] = 2 }),
	"no-devices":   edit(func(r map[string]any) { r["devices"] = []any{} }),
	"key-mismatch": edit(func(r map[string]any) { r["containerID"] = "someone-else" }),
	"pci-path-traversal": editDev(0, func(d map[string]any) {
		d["pciAddress"] = "../../../../etc"
	}),
	"name-with-slash":  editDev(0, func(d map[string]any) { d["originalName"] = "a/b" }),
	"name-too-long":    editDev(1, func(d map[string]any) { d["podName"] = "abcdefghijklmnopq" }),
	"vf-index-as-pf":   editDev(1, func(d map[string]any) { d["vfIndex"] = -1 }),
	"plain-nic-as-pf":  editDev(0, func(d map[string]any) { d["pciAddress"], d["originalName"] = plainPCI, plainName }),
	"plain-nic-as-vf":  editDev(1, func(d map[string]any) { d["pciAddress"], d["originalName"] = plainPCI, plainName }),
	"absent-pci-as-pf": editDev(0, func(d map[string]any) { d["pciAddress"] = "0000:99:00.0" }),
	// A PF that is gone takes its VFs with it: a "VF" that still exists is
	// someone else's device.
	"absent-pf-plain-nic-as-vf": edit(func(r map[string]any) {
		devs := r["devices"].([]any)
		devs[0].(map[string]any)["pciAddress"] = "0000:99:00.0"
		vf := devs[1].(map[string]any)
		vf["pciAddress"], vf["originalName"], vf["mtu"], vf["up"] = plainPCI, plainName, 1280, true
	}),
	// SR-IOV state is written back at release: a tampered record must not
	// rebind, or re-create the VFs of, anything but its own PF's VFs.
	"sriov-plain-nic-as-vf": editSRIOV(func(s map[string]any, vf map[string]any) {
		vf["pciAddress"], vf["driver"], vf["driverOverride"] = plainPCI, "vfio-pci", "vfio-pci"
	}),
	"sriov-pf-as-its-own-vf": func(_ []byte, r map[string]any, pf1 kerneltest.PF) []byte {
		return editSRIOV(func(_ map[string]any, vf map[string]any) {
			vf["pciAddress"], vf["driver"] = pf1.PCI, "vfio-pci"
		})(nil, r, pf1)
	},
	"sriov-driver-path":     editSRIOV(func(_ map[string]any, vf map[string]any) { vf["driverOverride"] = "../../../../module/igb" }),
	"sriov-numvfs-negative": editSRIOV(func(s map[string]any, _ map[string]any) { s["numVFs"] = -1 }),
	"duplicate-pci": func(_ []byte, r map[string]any, _ kerneltest.PF) []byte {
		devs := r["devices"].([]any)
		dup := map[string]any{}
		for k, v := range devs[1].(map[string]any) {
			dup[k] = v
		}
		dup["vfIndex"] = 7
		r["devices"] = append(devs, dup)
		return mustJSON(r)
	},
}

const (
	plainPCI  = "0000:05:00.0"
	plainName = "uplink0"
)

func edit(f func(map[string]any)) func([]byte, map[string]any, kerneltest.PF) []byte {
	return func(_ []byte, r map[string]any, _ kerneltest.PF) []byte { f(r); return mustJSON(r) }
}

func editDev(i int, f func(map[string]any)) func([]byte, map[string]any, kerneltest.PF) []byte {
	return edit(func(r map[string]any) { f(r["devices"].([]any)[i].(map[string]any)) })
}

// editSRIOV edits the record's SR-IOV state and its first VF, made up
// when the record has none to edit.
func editSRIOV(f func(s, vf map[string]any)) func([]byte, map[string]any, kerneltest.PF) []byte {
	return edit(func(r map[string]any) {
		s, ok := r["sriov"].(map[string]any)
		if !ok {
			s = map[string]any{"numVFs": 1, "driversAutoprobe": true}
			r["sriov"] = s
		}
		vfs, _ := s["vfs"].([]any)
		if len(vfs) == 0 {
			vfs = []any{map[string]any{"index": 0}}
			s["vfs"] = vfs
		}
		f(s, vfs[0].(map[string]any))
	})
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// TestBadRecordsThroughTheBinary puts each bad record next to a working
// attachment, then runs ADD of another pod, DEL of the bad record's
// attachment, GC and the DELs of the good ones through the binary. No run
// may panic; ADD must still hand out a PF; the log must name the bad
// file; the file must be kept aside (*.bad-*) for a person; the node's
// plain NIC must not move; at the end every device is home and no record
// is left.
func TestBadRecordsThroughTheBinary(t *testing.T) {
	kerneltest.RequireRoot(t)
	var names []string
	for name := range badRecords {
		names = append(names, name)
	}
	sort.Strings(names)
	for i, name := range names {
		mk := badRecords[name]
		for _, stale := range []bool{false, true} {
			if !*long && stale != (i%2 == 1) {
				continue // short form: one variant per record, alternating
			}
			variant := name + "/pod-alive"
			if stale {
				variant = name + "/pod-gone"
			}
			t.Run(variant, func(t *testing.T) {
				t.Parallel()
				badRecord(t, mk, stale)
			})
		}
	}
}

// badRecord runs one bad record. With stale, the bad record's pod is gone
// before the ADD of another pod, so that ADD's repair meets the record;
// otherwise the record's own DEL does.
func badRecord(t *testing.T, mk func([]byte, map[string]any, kerneltest.PF) []byte, stale bool) {
	w := newWorld(t)
	w.addPF("sp0", 1)
	pf1 := w.addPF("sp1", 1)
	w.AddPlainNetdev(plainPCI, plainName)
	w.ready()
	plainBefore := w.linkState(plainName)
	good := w.mustAdd("good")
	bad := w.mustAdd("bad")
	file := filepath.Join(w.StateDir, state.Key("bad", "net1")+".json")
	base, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	w.mustDel(bad) // its devices are home; the record comes back, damaged
	var rec map[string]any
	if err := json.Unmarshal(base, &rec); err != nil {
		t.Fatal(err)
	}
	data := mk(base, rec, pf1)
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if stale {
		w.deletePod(bad.pod)
	}

	sysfsBefore := sysfsFiles(t, w.SysfsRoot)
	other := attachment{"other", "net1", w.newPod()}
	r := w.exec("ADD", other, opts{})
	_, decodes := state.Decode(data)
	if r.err != nil && (stale || decodes != nil || code(r) != 11) {
		// Only a record that decodes, of a pod still alive, may keep its
		// PF busy until its DEL.
		t.Errorf("ADD of another pod next to a bad record: %v", r)
	}
	runs := []run{r,
		w.exec("DEL", bad, opts{}),
		w.exec("GC", attachment{}, opts{conf: w.gcConf(good, other)}),
		w.exec("DEL", good, opts{}),
		w.exec("DEL", other, opts{})}
	for _, r := range runs {
		if bytes.Contains(r.out, []byte("panic")) || (r.err != nil && strings.Contains(r.err.Error(), "exit status 2")) {
			t.Errorf("%s panicked: %v", r.cmd, r)
		}
	}
	for _, r := range runs[1:] {
		if r.err != nil {
			t.Errorf("%s: %v", r.cmd, r)
		}
	}
	logs, _ := os.ReadFile(w.logFile)
	if !bytes.Contains(logs, []byte(filepath.Base(file))) {
		t.Errorf("the log never names the bad file %s", filepath.Base(file))
	}
	if aside, _ := filepath.Glob(file + ".bad-*"); len(aside) != 1 {
		t.Errorf("bad record not kept aside exactly once: %v", aside)
	}
	if after := sysfsFiles(t, w.SysfsRoot); after != sysfsBefore {
		t.Errorf("a sysfs file was written:\nbefore: %s\nafter:  %s", sysfsBefore, after)
	}
	if after := w.linkState(plainName); after != plainBefore {
		t.Errorf("the plain NIC was touched: before %s, after %s", plainBefore, after)
	}
	w.assert(true, "after the bad record was handled")
}

// linkState sums up what a tampered record could change on a host link.
func (w *world) linkState(name string) string {
	for _, l := range w.links(w.Host) {
		if a := l.Attrs(); a.Name == name {
			return fmt.Sprintf("name=%s mtu=%d flags=%v altnames=%v", a.Name, a.MTU, a.Flags, a.AltNames)
		}
	}
	return "absent from the host"
}

// TestStateModes checks through the binary that the state dir is 0700 and
// the records and lock 0600: they say which pod holds which PF.
func TestStateModes(t *testing.T) {
	kerneltest.RequireRoot(t)
	w := newWorld(t)
	w.addPF("sp0", 1)
	w.ready()
	a := w.mustAdd("a")
	want := map[string]os.FileMode{w.StateDir: 0o700 | os.ModeDir}
	files, _ := filepath.Glob(filepath.Join(w.StateDir, "*"))
	for _, f := range files {
		want[f] = 0o600
	}
	if len(files) < 2 {
		t.Fatalf("want a record and a lock file, got %v", files)
	}
	for path, mode := range want {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != mode {
			t.Errorf("%s has mode %v, want %v", path, st.Mode(), mode)
		}
	}
	w.mustDel(a)
	w.assert(true, "after DEL")
}

// sysfsFiles is every regular file of the fake sysfs tree with its
// content: what a release could have written (driver_override, unbind,
// sriov_numvfs, ...).
func sysfsFiles(t *testing.T, root string) string {
	t.Helper()
	var out []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		out = append(out, fmt.Sprintf("%s=%q", strings.TrimPrefix(p, root), b))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, " ")
}
