// Package e2e holds the end-to-end suite (build tag e2e): it runs as root
// inside the test VM (test/vm/run.sh e2e) against QEMU's emulated igb SR-IOV
// NICs, driving the plugin through cnitool and libcni. Outside that VM it
// refuses to run: it moves real network devices.
package e2e
