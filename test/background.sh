#!/bin/bash
# Sourced by test/all.sh and test/k8s/e2e.sh: one command in the background
# (a build) while the script runs something else, stopped whole if the
# script ends early.

# bg_start NICE CMD...: runs CMD in the background in a session of its own
# (setsid: it and everything it starts share one process group), and stops
# that group if the script exits, on SIGINT or SIGTERM, before bg_wait.
#
# The session's autogroup gets nice NICE. With autogroup scheduling (on in
# Debian's kernels: /proc/sys/kernel/sched_autogroup_enabled) the kernel
# shares the CPU between sessions first and by nice only within one, and
# setsid starts a new session: a command niced inside it alone would still
# take a session's full share from the foreground (a cold make test showed
# it: two background compiles, each niced, split the CPU half and half).
bg_start() {
	local nice=$1
	shift
	# shellcheck disable=SC2016 # the inner shell expands its own arguments
	setsid bash -c 'echo "$0" >/proc/self/autogroup 2>/dev/null || true; exec "$@"' "$nice" "$@" </dev/null &
	bg=$!
	trap bg_stop EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

bg_stop() {
	kill -TERM -- "-$bg" 2>/dev/null || true
	wait "$bg" 2>/dev/null || true
}

# bg_wait: waits for the command and returns its exit status.
bg_wait() {
	local rc=0
	wait "$bg" || rc=$?
	trap - EXIT
	return "$rc"
}
