package state

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzDecode feeds the record decoder anything a state file could hold
// after a full disk, a bad editor or a tamperer. It must never panic. A
// record it accepts validates, survives an encode/decode round trip
// unchanged, and has a key that is a plain file name in the state dir.
func FuzzDecode(f *testing.F) {
	good := `{"version":1,"containerID":"c1","ifName":"net1","netns":"/var/run/netns/p","netnsID":{"dev":4,"ino":4026532000},` +
		`"pod":{"namespace":"ci","name":"job"},"phase":"attached","created":"2026-01-01T00:00:00Z",` +
		`"devices":[{"pciAddress":"0000:3b:00.0","originalName":"ens1f0","podName":"net1","mac":"aa:bb:cc:dd:ee:ff","mtu":1500,"up":true,"vfIndex":-1},` +
		`{"pciAddress":"0000:3b:02.0","originalName":"ens1f0v0","podName":"ens1f0v0","mac":"","mtu":1500,"vfIndex":0,"released":true}],` +
		`"result":{"cniVersion":"1.1.0"}}`
	for _, s := range []string{good, good[:len(good)/2], "", "null", "[]", `{"version":1}`,
		strings.Replace(good, `"c1"`, `"../../etc/x"`, 1), strings.Replace(good, `"vfIndex":0`, `"vfIndex":-1`, 1)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Decode(data)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("Decode accepted an invalid record: %v", err)
		}
		if name := r.Key() + recordSuffix; filepath.Base(name) != name || strings.HasPrefix(name, ".") {
			t.Fatalf("key %q is not a plain file name", r.Key())
		}
		enc, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		r2, err := Decode(enc)
		if err != nil {
			t.Fatalf("round trip: %v\n%s", err, enc)
		}
		enc2, _ := json.Marshal(r2)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("round trip changed the record:\n%s\n%s", enc, enc2)
		}
		_ = r.PF()
		_ = r.Pending()
	})
}
