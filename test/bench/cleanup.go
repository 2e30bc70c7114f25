package main

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kubevirt/sriov-passthrough-cni/test/kerneltest"
)

// An interrupted bench must leave nothing behind: a node world holds
// thousands of links in a netns bind-mounted under /run/netns, and a temp
// dir with its fake sysfs. Everything the bench creates is tracked here
// from the moment it exists; on SIGINT, SIGTERM or SIGHUP the handler
// takes the lock for good (nothing new can be made), undoes what is
// tracked and exits.
var tracked = struct {
	sync.Mutex
	next  int
	undos map[int]func()
}{undos: map[int]func(){}}

// track runs make under the lock and, when it succeeds, keeps undo until
// the returned forget is called.
func track[T any](make func() (T, error), undo func(T)) (T, func(), error) {
	tracked.Lock()
	defer tracked.Unlock()
	v, err := make()
	if err != nil {
		return v, func() {}, err
	}
	id := tracked.next
	tracked.next++
	tracked.undos[id] = func() { undo(v) }
	return v, func() {
		tracked.Lock()
		defer tracked.Unlock()
		delete(tracked.undos, id)
	}, nil
}

// createNS is kerneltest.CreateNS, tracked; remove removes it.
func createNS() (n ns.NetNS, remove func(), err error) {
	n, forget, err := track(kerneltest.CreateNS, func(n ns.NetNS) { _ = kerneltest.RemoveNS(n) })
	return n, func() { _ = kerneltest.RemoveNS(n); forget() }, err
}

// mkdirTemp is os.MkdirTemp, tracked; remove removes it and all in it.
func mkdirTemp(pattern string) (dir string, remove func(), err error) {
	dir, forget, err := track(func() (string, error) { return os.MkdirTemp("", pattern) }, func(d string) { _ = os.RemoveAll(d) })
	return dir, func() { _ = os.RemoveAll(dir); forget() }, err
}

// cleanUpOnSignal undoes everything tracked when the bench is stopped.
func cleanUpOnSignal() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		sig := <-ch
		tracked.Lock() // kept: nothing more is made
		fmt.Fprintf(os.Stderr, "bench: %v: removing %d namespaces and directories\n", sig, len(tracked.undos))
		for _, undo := range tracked.undos {
			undo()
		}
		os.Exit(130)
	}()
}
