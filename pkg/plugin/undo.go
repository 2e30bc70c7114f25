package plugin

import "errors"

// undoList collects the inverse of every step that changed the world, and
// runs them newest first when a later step fails.
type undoList []func() error

func (u *undoList) push(f func() error) { *u = append(*u, f) }

// run undoes everything and joins what failed to the original error.
func (u undoList) run(cause error) error {
	errs := []error{cause}
	for i := len(u) - 1; i >= 0; i-- {
		if err := u[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
