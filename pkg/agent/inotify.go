package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dirWatch reports names created, removed, renamed or written in a set of
// directories. Watching a directory rather than a file is what sees an
// admin's atomic replace (write a temp file, rename it over): a watch on
// the old file's inode would see nothing.
type dirWatch struct {
	f    *os.File
	dirs map[int]string // watch descriptor -> directory
}

const dirEvents = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM |
	unix.IN_CLOSE_WRITE | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

func newDirWatch(dirs ...string) (*dirWatch, error) {
	// Non-blocking, so reads go through Go's poller and Close wakes them.
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	w := &dirWatch{f: os.NewFile(uintptr(fd), "inotify"), dirs: map[int]string{}}
	for _, d := range dirs {
		wd, err := unix.InotifyAddWatch(fd, d, dirEvents)
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("watch %s: %w", d, err)
		}
		w.dirs[wd] = d
	}
	return w, nil
}

// Next blocks until events arrive and returns the paths they name (the
// directory itself for events on it).
func (w *dirWatch) Next() ([]string, error) {
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	n, err := w.f.Read(buf)
	if err != nil {
		return nil, err
	}
	var paths []string
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
		for len(name) > 0 && name[len(name)-1] == 0 {
			name = name[:len(name)-1]
		}
		paths = append(paths, filepath.Join(w.dirs[int(ev.Wd)], string(name)))
		off += unix.SizeofInotifyEvent + int(ev.Len)
	}
	return paths, nil
}

// Close stops the watch and wakes a blocked Next.
func (w *dirWatch) Close() error { return w.f.Close() }
