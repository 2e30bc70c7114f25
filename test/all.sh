#!/bin/bash
# make test: the make targets in TEST_STAGES (the Makefile's), one after
# the other, with two things in the background, where the stages leave
# the CPU idle or can spare it:
#
#   - From lint on until k8s-e2e: the one-node Kubernetes of k8s-e2e (the
#     control plane's version, test/k8s/build.sh). On a cold machine that
#     is 15-20 min of compiling and ~2 GB of module downloads; it runs
#     under build.sh's nice 15, so lint and the VMs keep the CPU they ask
#     for and the build takes what they leave (lint's own downloads, the
#     VMs' waits), and the downloads overlap them entirely. Its output goes
#     to _output/k8s-build.log and is shown once stress-short is done,
#     following it to its end if it is still running. If it fails, k8s-e2e
#     builds again in the foreground and stops on the same error.
#   - During k8s-e2e, whose passes mostly wait on their cluster: make
#     unit-compile (unit's -race test binaries, built and not run), so that
#     unit then only links and runs. It runs under SCHED_IDLE (chrt --idle):
#     the cluster and k8s-e2e's own background build of the older kubelet
#     keep the CPU they want, and this takes only what is left. Cold that is
#     minutes of both cores; its output goes to _output/unit-warm.log, and a
#     failure there only means that unit compiles for itself.
#
# A warm cache makes both return at once. Each is stopped, with every
# process it started, if this script ends early.
set -euo pipefail

cd "$(dirname "$0")/.."
MAKE=${MAKE:-make}
: "${TEST_STAGES:?the stages of make test, in order, set by the Makefile}"
log=_output/k8s-build.log

# shellcheck source=test/background.sh
. test/background.sh
warm=_output/unit-warm.log

for stage in $TEST_STAGES; do
	case $stage in
	lint)
		mkdir -p _output
		echo "make test: building the one-node Kubernetes in the background from lint to k8s-e2e (log: $log)"
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
		if [[ " $TEST_STAGES " == *" unit "* ]]; then
			echo "make test: compiling unit's -race tests in the background during k8s-e2e (log: $warm)"
			bg_start chrt --idle 0 "$MAKE" unit-compile >"$warm" 2>&1
		fi
		;;
	unit)
		if [ -n "${bg:-}" ]; then
			warmed=0
			bg_wait || warmed=$?
			echo "make test: unit's background compile ended (exit $warmed; $warm)"
		fi
		;;
	esac
	"$MAKE" "$stage"
done
