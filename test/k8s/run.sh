#!/bin/bash
# make k8s-e2e: a real one-node Kubernetes (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, containerd, runc, multus)
# in throwaway namespaces, the project deployed with `kubectl apply -k`, and
# the scenarios in test/k8s/scenarios driven through it. The machine is left
# as it was found: processes, mounts, cgroups, links and files, also when a
# scenario fails or the run is interrupted (SIGINT, SIGTERM).
#
# Environment:
#   K8S_E2E_RUN=REGEXP   run only the scenarios whose test name matches
#   K8S_E2E_SHUFFLE=SEED the scenarios' order (default "on": a new random
#                        order each run, its seed printed first; "off": source order)
#   K8S_E2E_SHELL=1      bring the cluster up, print how to enter it, and wait
#                        (Ctrl-C tears it down)
#   K8S_E2E_TMP=DIR      where the run's work dir is made (default /tmp)
#   K8S_E2E_FAIL_AFTER=deploy  fail on purpose once deployed (cleanup test)
#   K8S_KUBELET_VERSION=V the node's kubelet from release V (default: the
#                        control plane's, K8S_VERSION); build.sh builds it
#                        from test/k8s/components-<its minor>
#   K8S_PFS=N K8S_VFS=M  the node's fake PFs and VFs per PF (default 2 and 2)
#   K8S_DRA=1            make k8s-e2e's DRA pass: containerd
#                        K8S_CONTAINERD_VERSION (default v2.4.2, built by
#                        build.sh: it has CDI) instead of Debian's 1.6, the
#                        project deployed through test/k8s/overlay-dra
#                        (deploy/components/dra), the agent a DRA kubelet
#                        plugin; the scenarios TestDRA* (the default
#                        K8S_E2E_RUN then) run only then
#   K8S_BENCH=1          make bench-k8s: deploy through test/k8s/overlay-bench
#                        (the plugin's debug log in a file) and log containerd
#                        at debug level (its CNI setup times); the scenarios'
#                        TestBench* run only then
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/test/k8s
K8S_VERSION=${K8S_VERSION:-v1.37.2}
K8S_KUBELET_VERSION=${K8S_KUBELET_VERSION:-$K8S_VERSION}
export K8S_VERSION K8S_KUBELET_VERSION
K8S_CACHE=${K8S_CACHE:-/var/cache/sriov-passthrough-cni-k8s}
K8S_DRA=${K8S_DRA:-}
CONTAINERD_BIN="" pass=""
if [ "$K8S_DRA" = 1 ]; then
	export K8S_CONTAINERD_VERSION=${K8S_CONTAINERD_VERSION:-v2.4.2}
	CONTAINERD_BIN=$K8S_CACHE/containerd-$K8S_CONTAINERD_VERSION/bin
	pass=" containerd=$K8S_CONTAINERD_VERSION allocation=dra"
	K8S_E2E_RUN=${K8S_E2E_RUN:-^TestDRA}
fi
export K8S_DRA CONTAINERD_BIN K8S_E2E_RUN
C=$K8S_CACHE/$K8S_VERSION
GO=${GO:-go}
start=$(date +%s)
log() { printf 'k8s-e2e: [%4ds] %s\n' "$(($(date +%s) - start))" "$*"; }

if [ "$(id -u)" != 0 ]; then
	if [ "${CI:-}" = true ]; then
		echo "k8s-e2e: needs root (namespaces, mounts, cgroups) and CI=true: run CI as root" >&2
		exit 1
	fi
	echo "k8s-e2e: skipped: needs root (namespaces, mounts, cgroups)"
	exit 0
fi

bash "$here/build.sh"

W=$(mktemp -d "${K8S_E2E_TMP:-/tmp}/sriovpt-k8s.XXXXXX")
cgroup_name=$(basename "$W")
unshare_pid=
pidns=

# teardown kills the namespaces' init (every process in them dies with it),
# waits until none is left, removes the cgroups the kubelet and runc made,
# deepest first, and the work dir. Mounts and links lived in the private
# namespaces and are gone with them. Nothing may stop it halfway: it goes on
# past a failed command, and a write to an output nobody reads any more
# fails instead of killing the shell.
teardown() {
	local rc=$? n
	set +e
	trap - EXIT INT TERM
	trap '' PIPE
	if [ -n "$unshare_pid" ] && kill -0 "$unshare_pid" 2>/dev/null; then
		kill -KILL "$unshare_pid" 2>/dev/null || true
	fi
	for ((n = 0; n < 300; n++)); do
		[ -z "$pidns" ] || [ -z "$(ns_members "$pidns")" ] && break
		sleep 0.1
	done
	if [ -n "$pidns" ] && [ -n "$(ns_members "$pidns")" ]; then
		echo "k8s-e2e: processes of the node still alive: $(ns_members "$pidns")" >&2
		rc=1
	fi
	for ((n = 0; n < 50; n++)); do
		remove_cgroups && break
		sleep 0.2
	done
	remove_cgroups || { echo "k8s-e2e: cgroups left: $(cgroups_and_tasks)" >&2 && rc=1; }
	if grep -q " $W/" /proc/self/mountinfo; then
		echo "k8s-e2e: mounts left under $W" >&2
		rc=1
	fi
	if [ "$rc" != 0 ] && [ -d "$W/logs" ]; then
		for f in "$W"/logs/*.log; do
			echo "--- last lines of ${f##*/}"
			tail -n 15 "$f"
		done
	fi
	[ -f "$W/summary" ] && summary=$(cat "$W/summary")
	rm -rf "$W"
	if [ "$rc" = 0 ] && [ -n "${summary:-}" ]; then
		log "torn down: no process, mount, cgroup, link or file of the run left"
		echo "k8s-e2e: kubernetes=$K8S_VERSION kubelet=$K8S_KUBELET_VERSION$pass $summary"
	fi
	exit "$rc"
}

# ns_members PIDNS prints the pids of the processes in that pid namespace.
ns_members() {
	local p
	for p in /proc/[0-9]*; do
		[ "$(readlink "$p/ns/pid" 2>/dev/null)" = "$1" ] && printf '%s ' "${p#/proc/}"
	done
	return 0
}

# cgroups_and_tasks lists the run's cgroups still there, each with the
# tasks (pid and name) in it and below it.
cgroups_and_tasks() {
	local d p
	for d in /sys/fs/cgroup/*/"$cgroup_name"; do
		[ -d "$d" ] || continue
		printf '%s [' "$d"
		while read -r p; do
			printf ' %s(%s)' "$p" "$(cat "/proc/$p/comm" 2>/dev/null)"
		done < <(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
		printf ' ] '
	done
}

remove_cgroups() {
	local d ok=0
	for d in /sys/fs/cgroup/*/"$cgroup_name"; do
		[ -d "$d" ] || continue
		find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[ -d "$d" ] && ok=1
	done
	return $ok
}

trap teardown EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM
# Whoever reads the output went away (go test killed, a closed pipe): the
# shell would die of SIGPIPE without tearing down; end through teardown.
# A handler, not an ignore: the node's processes keep the default.
trap 'exit 141' PIPE

build_images() {
	local b=$W/build bb=$C/deb/bin/busybox applets=() a tag
	mkdir -p "$b" "$W/images"
	(cd "$here" && "$GO" build -o "$b/mkimage" ./mkimage && CGO_ENABLED=0 "$GO" build -o "$b/pause" ./pause &&
		"$GO" test -c -tags k8s -o "$b/scenarios.test" ./scenarios)
	for a in $("$bb" --list | grep -vx busybox); do applets+=(-link "bin/$a=busybox"); done
	local busybox=(-file "$bb=bin/busybox:0755" "${applets[@]}")
	"$b/mkimage" -name "$PAUSE_IMAGE" -out "$W/images/pause.tar" -file "$b/pause=pause:0755" -entrypoint /pause
	"$b/mkimage" -name "$BUSYBOX_IMAGE" -out "$W/images/busybox.tar" "${busybox[@]}" -cmd sh
	local overlay=$here/overlay
	[ "${K8S_BENCH:-}" = 1 ] && overlay=$here/overlay-bench
	[ "$K8S_DRA" = 1 ] && overlay=$here/overlay-dra
	# The plugin image, laid out as the Dockerfile's final stage: busybox, the
	# static binary and conf under /plugin-src, the agent and the agent with
	# its DRA mode (which the agent execs on a DRA node), install-plugin as
	# entrypoint.
	for tag in "$PLUGIN_TAG_A" "$PLUGIN_TAG_B"; do
		mkdir -p "$b/$tag"
		for cmd in sriov-passthrough-cni sriov-passthrough-agent sriov-passthrough-dra; do
			(cd "$repo" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w -X main.version=$tag" \
				-o "$b/$tag/$cmd" "./cmd/$cmd")
		done
		"$b/mkimage" -name "$PLUGIN_IMAGE:$tag" -out "$W/images/plugin-$tag.tar" "${busybox[@]}" \
			-file "$b/$tag/sriov-passthrough-cni=plugin-src/sriov-passthrough-cni:0755" \
			-file "$repo/plugin/90-sriov-passthrough-cni.conf=plugin-src/90-sriov-passthrough-cni.conf:0644" \
			-file "$repo/install-plugin=usr/local/bin/install-plugin:0755" \
			-file "$b/$tag/sriov-passthrough-agent=usr/local/bin/sriov-passthrough-agent:0755" \
			-file "$b/$tag/sriov-passthrough-dra=usr/local/bin/sriov-passthrough-dra:0755" \
			-label "org.opencontainers.image.version=$tag" \
			-entrypoint /usr/local/bin/install-plugin -cmd /host/opt/cni/bin
		# What an admin does: point deploy/ (through the test's overlay, which
		# only adds the fake sysfs tree) at the image.
		mkdir -p "$W/overlay-$tag"
		cat >"$W/overlay-$tag/kustomization.yaml" <<-YAML
			apiVersion: kustomize.config.k8s.io/v1beta1
			kind: Kustomization
			resources:
			- $(realpath --relative-to="$W/overlay-$tag" "$overlay")
			images:
			- name: sriov-passthrough-cni
			  newName: $PLUGIN_IMAGE
			  newTag: $tag
		YAML
	done
}

export W C REPO=$repo KUBELET=$K8S_CACHE/$K8S_KUBELET_VERSION/bin/kubelet
export PAUSE_IMAGE=localhost/pause:k8s-e2e BUSYBOX_IMAGE=localhost/busybox:k8s-e2e
export PLUGIN_IMAGE=localhost/sriov-passthrough-cni PLUGIN_TAG_A=k8s-e2e-a PLUGIN_TAG_B=k8s-e2e-b
export IMAGES=$W/images SCENARIOS=$W/build/scenarios.test
export K8S_PFS=${K8S_PFS:-2} K8S_VFS=${K8S_VFS:-2}
build_images
log "images: pause, busybox, plugin $PLUGIN_TAG_A and $PLUGIN_TAG_B; work dir $W"

unshare --mount --net --pid --uts --ipc --fork --kill-child --mount-proc --propagation private \
	bash "$here/node.sh" &
unshare_pid=$!
for ((n = 0; n < 50; n++)); do
	init=$(cat "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null || true)
	[ -n "$init" ] && break
	sleep 0.1
done
init=${init%% *}
pidns=$(readlink "/proc/$init/ns/pid")
echo "$init" >"$W/init.pid"
wait "$unshare_pid"
