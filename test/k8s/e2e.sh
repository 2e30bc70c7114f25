#!/bin/bash
# make k8s-e2e: every pass of the one-node Kubernetes suite, in an order that
# hides the slow builds behind a running cluster.
#
#   1. build.sh for the control plane's version: every piece the first pass
#      needs (a cold build takes 15-20 min of both cores).
#   2. In the background, at nice 15 (bg_start): the older kubelet
#      (K8S_OLD_KUBELET) and containerd v2 (K8S_DRA_CONTAINERD). Cold they
#      take another 11 min of both cores; the first pass mostly waits on its
#      cluster (polls, the kubelet's sync periods), so the two overlap it.
#   3. The first pass (run.sh: the control plane's kubelet, every scenario).
#   4. Once the background build is done: TestTeardown (interrupted runs of
#      all three kinds leave the host clean), the older kubelet's pass
#      (K8S_OLD_KUBELET_RUN) and the DRA pass. Beside them, if K8S_E2E_IDLE
#      is set (make test sets it to make unit-compile), that command, at the
#      lowest priority (autogroup nice 19, SCHED_IDLE), output to
#      K8S_E2E_IDLE_LOG; it is stopped when the passes end, done or not.
#
# The background build's lines start with "k8s-build:" like the first
# build's. It is stopped, with every process it started, if this script
# ends early (the first pass failed, or SIGINT/SIGTERM); a failed background
# build fails the run after the first pass.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
GO=${GO:-go}
: "${K8S_OLD_KUBELET:?the version of the older kubelet, set by the Makefile}"
: "${K8S_OLD_KUBELET_RUN:?the scenarios of the older kubelet, set by the Makefile}"
: "${K8S_DRA_CONTAINERD:?the containerd version of the DRA pass, set by the Makefile}"

bash "$here/build.sh"

# shellcheck source=test/background.sh
. "$here/../background.sh"
K8S_KUBELET_VERSION=$K8S_OLD_KUBELET K8S_CONTAINERD_VERSION=$K8S_DRA_CONTAINERD \
	bg_start 15 bash "$here/build.sh"

bash "$here/run.sh"
built=0
bg_wait || built=$?
if [ "$built" != 0 ]; then
	echo "k8s-e2e: building kubelet $K8S_OLD_KUBELET and containerd $K8S_DRA_CONTAINERD failed (exit $built)" >&2
	exit "$built"
fi

if [ -n "${K8S_E2E_IDLE:-}" ]; then
	bg_start 19 chrt --idle 0 bash -c "$K8S_E2E_IDLE" >"${K8S_E2E_IDLE_LOG:-/dev/null}" 2>&1
fi

K8S_CONTAINERD_VERSION=$K8S_DRA_CONTAINERD "$GO" -C "$here" test -count=1 -timeout 20m -tags k8s -run '^TestTeardown$' .
K8S_KUBELET_VERSION=$K8S_OLD_KUBELET K8S_E2E_RUN=$K8S_OLD_KUBELET_RUN bash "$here/run.sh"
K8S_DRA=1 K8S_CONTAINERD_VERSION=$K8S_DRA_CONTAINERD bash "$here/run.sh"
