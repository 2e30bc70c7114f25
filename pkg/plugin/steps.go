package plugin

import (
	"fmt"
	"strings"
	"time"
)

// stepClock times the steps of one command for the debug log, so an
// engineer asking why an ADD or DEL is slow on a node sees where the time
// went (`logLevel: debug`; `make bench-vm` prints the same). Nearly all of
// it should be the kernel's: netns moves, each waiting for an RCU grace
// period, and SR-IOV writes.
type stepClock struct {
	start, last time.Time
	steps       strings.Builder
}

func newStepClock() *stepClock {
	now := time.Now()
	return &stepClock{start: now, last: now}
}

// mark ends the step called name.
func (c *stepClock) mark(name string) {
	now := time.Now()
	fmt.Fprintf(&c.steps, "%s=%s ", name, ms(now.Sub(c.last)))
	c.last = now
}

// log writes one debug line: the total and each step in order.
func (c *stepClock) log(o *op, err error) {
	o.log.Debug("steps", "ok", err == nil, "total", ms(time.Since(c.start)), "steps", strings.TrimSpace(c.steps.String()))
}

// ms is a duration in milliseconds with two decimals.
func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }
