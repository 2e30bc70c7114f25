#!/bin/bash
# make test: the make targets in TEST_STAGES (the Makefile's), one after
# the other, with one thing in parallel: the one-node Kubernetes of k8s-e2e
# (the control plane's version, test/k8s/build.sh) is built in the
# background from the start of the VM stage (e2e) until k8s-e2e. On a cold machine
# that build is 15-20 min of compiling and ~2 GB of module downloads; it
# runs under build.sh's nice 15, so the VMs keep the CPU they ask for and
# the build takes what they leave, and the downloads overlap them entirely.
# A warm cache makes it return at once.
#
# Its output goes to _output/k8s-build.log and is shown once stress-short
# is done, following it to its end if it is still running. If it fails,
# k8s-e2e builds again in the foreground and stops on the same error.
# It is stopped, with every process it started, if this script ends early.
set -euo pipefail

cd "$(dirname "$0")/.."
MAKE=${MAKE:-make}
: "${TEST_STAGES:?the stages of make test, in order, set by the Makefile}"
log=_output/k8s-build.log

# shellcheck source=test/background.sh
. test/background.sh
for stage in $TEST_STAGES; do
	case $stage in
	e2e)
		mkdir -p _output
		echo "make test: building the one-node Kubernetes in the background while the VM stage runs (log: $log)"
		bg_start bash test/k8s/build.sh >"$log" 2>&1
		;;
	k8s-e2e)
		if [ -n "${bg:-}" ]; then
			echo "make test: the background build of the one-node Kubernetes ($log):"
			tail -n +1 -f --pid="$bg" "$log"
			built=0
			bg_wait || built=$?
			[ "$built" = 0 ] || echo "make test: the background build failed (exit $built); k8s-e2e builds again"
		fi
		;;
	esac
	"$MAKE" "$stage"
done
