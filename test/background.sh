#!/bin/bash
# Sourced by test/all.sh and test/k8s/e2e.sh: one command in the background
# (a build) while the script runs something else, stopped whole if the
# script ends early.

# bg_start CMD...: runs CMD in the background in a session of its own
# (setsid: it and everything it starts share one process group), and stops
# that group if the script exits, on SIGINT or SIGTERM, before bg_wait.
bg_start() {
	setsid "$@" </dev/null &
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
