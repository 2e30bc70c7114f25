package config

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// ParseReserved reads interface names, one per line. Blank lines and
// everything after a '#' are ignored; several names on one line, separated
// by white space, are all reserved.
func ParseReserved(r io.Reader) ([]string, error) {
	var names []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		names = append(names, strings.Fields(line)...)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return names, nil
}

// LoadReserved reads the reserved-interfaces file. A missing file means that
// nothing is reserved; any other read error is returned, because silently
// un-reserving a node's uplink list would be worse than refusing to run.
func LoadReserved(path string) ([]string, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read reserved interfaces file: %w", err)
	}
	defer f.Close()
	names, err := ParseReserved(f)
	if err != nil {
		return nil, fmt.Errorf("read reserved interfaces file %q: %w", path, err)
	}
	return names, nil
}

// Reserved returns every reserved name: the config's list plus the file's.
func (c *NetConf) Reserved() (map[string]bool, error) {
	fromFile, err := LoadReserved(c.ReservedFile())
	if err != nil {
		return nil, err
	}
	set := make(map[string]bool, len(c.ReservedInterfaces)+len(fromFile))
	for _, n := range c.ReservedInterfaces {
		set[strings.TrimSpace(n)] = true
	}
	for _, n := range fromFile {
		set[n] = true
	}
	return set, nil
}
