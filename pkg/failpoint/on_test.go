//go:build failpoints

package failpoint

import "testing"

func TestParse(t *testing.T) {
	for in, want := range map[string]struct {
		name string
		n    int
	}{
		"":                 {"", 1},
		"add/to-pod":       {"add/to-pod", 1},
		"add/to-pod@3":     {"add/to-pod", 3},
		"add/to-pod@0":     {"", 0},
		"add/to-pod@x":     {"", 0},
		"release/renamed@": {"", 0},
	} {
		name, n := parse(in)
		if name != want.name || n != want.n {
			t.Errorf("parse(%q) = %q, %d; want %q, %d", in, name, n, want.name, want.n)
		}
	}
}
