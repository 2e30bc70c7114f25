//go:build k8s

package scenarios

import (
	"fmt"
	"os"
	"slices"
	"testing"
	"time"
)

// The TestBench* tests are make bench-k8s (issue 20's cluster figures):
// they measure and print, and assert nothing about time. They run only
// when run.sh is started with K8S_BENCH=1, which also deploys through
// test/k8s/overlay-bench (the plugin's debug log in a file) and has
// containerd log at debug level (its CNI setup times); in the suite they
// are skipped.
func requireBench(t *testing.T) {
	t.Helper()
	if os.Getenv("K8S_BENCH") != "1" {
		t.Skip("a benchmark: make bench-k8s runs it (K8S_BENCH=1)")
	}
}

// spread is a sample's median and quartiles.
type spread struct {
	n           int
	q1, med, q3 time.Duration
}

// spreadOf returns the quartiles of ds, linearly interpolated between
// order statistics (R's type 7, as a spreadsheet's QUARTILE).
func spreadOf(ds []time.Duration) spread {
	s := slices.Clone(ds)
	slices.Sort(s)
	q := func(p float64) time.Duration {
		if len(s) == 0 {
			return 0
		}
		h := p * float64(len(s)-1)
		i := int(h)
		if i+1 >= len(s) {
			return s[len(s)-1]
		}
		return s[i] + time.Duration((h-float64(i))*float64(s[i+1]-s[i]))
	}
	return spread{n: len(s), q1: q(0.25), med: q(0.5), q3: q(0.75)}
}

func (s spread) String() string {
	return fmt.Sprintf("median=%s (q1-q3 %s-%s, n=%d)", msStr(s.med), msStr(s.q1), msStr(s.q3), s.n)
}

// msStr is a duration in milliseconds, one decimal.
func msStr(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}
