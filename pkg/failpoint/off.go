//go:build !failpoints

package failpoint

// Hit marks a world-changing step. Without the failpoints build tag it does
// nothing and compiles to nothing.
func Hit(Step) {}
