#!/bin/bash
# make test: the make targets in TEST_STAGES (the Makefile's), one after
# the other, with two things in the background, where the stages leave
# the CPU idle or can spare it:
#
#   - From lint on until k8s-e2e: the one-node Kubernetes of k8s-e2e (the
#     control plane's version, test/k8s/build.sh). On a cold machine that
#     is 15-20 min of compiling and ~2 GB of module downloads; it runs at
#     nice 15 (bg_start), so lint and the VMs keep the CPU they ask for and
#     the build takes what they leave (lint's own downloads, the
#     VMs' waits), and the downloads overlap them entirely. Its output goes
#     to _output/k8s-build.log and is shown once stress-short is done,
#     following it to its end if it is still running. If it fails, k8s-e2e
#     builds again in the foreground and stops on the same error.
#   - During k8s-e2e, whose passes mostly wait on their cluster, once its
#     own background build (the older kubelet, containerd v2) is done:
#     make unit-compile (unit's -race test binaries, built and not run), so
#     that unit then only links and runs. test/k8s/e2e.sh runs it
#     (K8S_E2E_IDLE) at the lowest priority and stops it when the passes
#     end. Cold that is minutes of both cores; its output goes to
#     _output/unit-warm.log, and whatever it did not compile, unit does.
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
		bg_start 15 bash test/k8s/build.sh >"$log" 2>&1
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
			echo "make test: k8s-e2e compiles unit's -race tests in the background once its own build is done (log: $warm)"
			export K8S_E2E_IDLE="$MAKE unit-compile" K8S_E2E_IDLE_LOG=$PWD/$warm
		fi
		;;
	esac
	"$MAKE" "$stage"
done
