package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	recordSuffix = ".json"
	lockName     = "lock"
	dirMode      = 0o700
	fileMode     = 0o600
)

// Store keeps records in Dir.
type Store struct {
	Dir string
}

// BadRecord is a record file that could not be read; it has been renamed
// aside (Path) for a person to look at, and no longer counts.
type BadRecord struct {
	Path string
	Err  error
}

func (s Store) ensureDir() error {
	if err := os.MkdirAll(s.Dir, dirMode); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	return nil
}

// Lock takes the exclusive lock that serialises every plugin process on the
// node. It gives up after timeout. The kernel drops an flock when its
// holder dies, so a killed plugin never leaves the node locked.
func (s Store) Lock(timeout time.Duration) (unlock func(), err error) {
	if err := s.ensureDir(); err != nil {
		return nil, err
	}
	path := filepath.Join(s.Dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, fileMode)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %q: %w", path, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %q: another plugin process held it for %s: %w", path, timeout, ErrLockTimeout)
		}
		time.Sleep(wait)
	}
}

// ErrLockTimeout says the state lock stayed busy.
var ErrLockTimeout = errors.New("state lock busy")

func (s Store) path(key string) string {
	return filepath.Join(s.Dir, key+recordSuffix)
}

// Save writes a record atomically: temp file, fsync, rename, fsync of the
// directory. Readers see the old record or the new one, never half.
func (s Store) Save(r *Record) error {
	if err := s.ensureDir(); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode record %s: %w", r.Key(), err)
	}
	if err := WriteAtomic(s.Dir, r.Key()+recordSuffix, data); err != nil {
		return fmt.Errorf("record %s: %w", r.Key(), err)
	}
	return nil
}

// WriteAtomic writes data to dir/name as the state package writes its
// records: a hidden temp file of mode 0600, fsync, rename over name, fsync
// of dir. A reader sees the old content or the new, never half, and a
// crash leaves at most a hidden temp file, which no listing reads.
func WriteAtomic(dir, name string, data []byte) error {
	tmp, err := os.CreateTemp(dir, ".tmp-"+name+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(fileMode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("commit %s: %w", name, err)
	}
	return SyncDir(dir)
}

func (s Store) syncDir() error { return SyncDir(s.Dir) }

// SyncDir makes a rename or removal in dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// Remove deletes a record; a missing one is not an error.
func (s Store) Remove(key string) error {
	if err := os.Remove(s.path(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove record %s: %w", key, err)
	}
	return s.syncDir()
}

// Absent reports whether the record for key provably does not exist: its
// file, the state dir, or a directory above it is missing (or is not a
// directory). It reads nothing and writes nothing, so it answers when the
// state dir cannot be used for anything else.
func (s Store) Absent(key string) bool {
	_, err := os.Lstat(s.path(key))
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR)
}

// Get reads one record; (nil, nil) when there is none.
func (s Store) Get(key string) (*Record, error) {
	data, err := os.ReadFile(s.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read record %s: %w", key, err)
	}
	r, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", s.path(key), err)
	}
	if r.Key() != key {
		return nil, fmt.Errorf("record %s: holds attachment %s", s.path(key), r.Key())
	}
	return r, nil
}

// List reads every record, oldest first. A file that does not decode is
// renamed aside with a ".bad" suffix and reported, so one corrupt record
// cannot block the node's other PFs.
func (s Store) List() ([]*Record, []BadRecord, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list state dir: %w", err)
	}
	var recs []*Record
	var bad []BadRecord
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, recordSuffix) || strings.HasPrefix(name, ".") {
			continue
		}
		key := strings.TrimSuffix(name, recordSuffix)
		r, err := s.Get(key)
		if err == nil && r == nil {
			continue // removed meanwhile
		}
		if err != nil {
			aside, rerr := s.SetAside(key)
			if rerr != nil {
				return nil, nil, errors.Join(err, rerr)
			}
			bad = append(bad, BadRecord{Path: aside, Err: err})
			continue
		}
		recs = append(recs, r)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Created.Before(recs[j].Created) })
	return recs, bad, nil
}

// Writable checks that records can be written in Dir (for STATUS).
func (s Store) Writable() error {
	if err := s.ensureDir(); err != nil {
		return err
	}
	f, err := os.CreateTemp(s.Dir, ".status-*")
	if err != nil {
		return fmt.Errorf("state dir %q is not writable: %w", s.Dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// SetAside renames a record file to <name>.bad-<time> so it no longer
// counts, and returns the new path.
func (s Store) SetAside(key string) (string, error) {
	aside := s.path(key) + fmt.Sprintf(".bad-%d", time.Now().UnixNano())
	if err := os.Rename(s.path(key), aside); err != nil {
		return "", fmt.Errorf("set record %s aside: %w", key, err)
	}
	return aside, nil
}

// Peek reads every record that decodes, oldest first, without the lock and
// without setting anything aside: a view for observers (the node agent,
// status), which must never change the state. Records are replaced by
// rename, so each one read is whole, but the set may be a moment old.
func (s Store) Peek() ([]*Record, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list state dir: %w", err)
	}
	var recs []*Record
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, recordSuffix) || strings.HasPrefix(name, ".") {
			continue
		}
		if r, err := s.Get(strings.TrimSuffix(name, recordSuffix)); err == nil && r != nil {
			recs = append(recs, r)
		}
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Created.Before(recs[j].Created) })
	return recs, nil
}
