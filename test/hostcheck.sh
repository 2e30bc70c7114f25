#!/usr/bin/env bash
# Host cleanliness around `make test`: what the tests leave behind.
#
#   test/hostcheck.sh snapshot FILE   record the host's state in FILE
#   test/hostcheck.sh compare FILE    list what is on the host now and was
#                                     not in FILE; exit 1 if anything is
#
# What is recorded, each item one line "KIND<TAB>ITEM":
#   netns    names under /var/run/netns (testutils.NewNS bind-mounts there)
#   link     links of the host's netns
#   mount    mount points with their file system type (a stacked mount
#            shows twice)
#   tmp      entries in /tmp (and $TMPDIR) named as tests name them: t.TempDir
#            (Test*, Fuzz*, Benchmark*, Example*), sriovpt-*, sriov-*, cnitest*,
#            runc-process* (runc exec in the Kubernetes test bed)
#   process  processes of ours: the plugin, its delegates and tools, test
#            binaries, QEMU, the Kubernetes test bed (pid and name)
#   cgroup   cgroups whose path has a component named sriovpt* or cnitest*
# It compares the whole host, so nothing else may be testing on it meanwhile
# (as on a CI machine). Needs root to see every mount and process; as root,
# snapshot first makes /var/run/netns a mount point (see netns_dir).
set -euo pipefail

tmp_names='^(Test|Fuzz|Benchmark|Example|sriovpt-|sriov-|cnitest|runc-process)'
proc_names='^(sriov-passthrou|host-local|host-device|cnitool|qemu-system-x86|.*\.test|kubelet|kube-apiserver|kube-schedule|kube-controller|kubectl|etcd|containerd.*|runc|multus|crictl)$'
cgroup_names='/(sriovpt|cnitest)[^/]*(/|$)'

snapshot() {
	local d
	{
		find /var/run/netns -mindepth 1 -maxdepth 1 -printf 'netns\t%f\n' 2>/dev/null || true
		find /sys/class/net -mindepth 1 -maxdepth 1 -printf 'link\t%f\n'
		findmnt -rn -o TARGET,FSTYPE | sed 's/^/mount\t/'
		for d in /tmp ${TMPDIR:+"$TMPDIR"}; do
			find "$d" -mindepth 1 -maxdepth 1 -printf '%p\n' 2>/dev/null |
				awk -F/ -v re="$tmp_names" '$NF ~ re { print "tmp\t" $0 }'
		done
		ps -e -o pid=,comm= | awk -v re="$proc_names" -v skip=" $(ancestors) " \
			'$2 ~ re && index(skip, " " $1 " ") == 0 { print "process\t" $1 " " $2 }'
		find /sys/fs/cgroup -mindepth 2 -type d 2>/dev/null | grep -E "$cgroup_names" | sed 's/^/cgroup\t/' || true
	} | LC_ALL=C sort -u
}

# netns_dir makes /var/run/netns the shared mount point that
# testutils.NewNS (and `ip netns add`) make it on first use and leave so, so
# that this mount is in the snapshot and only the run's own show up.
netns_dir() {
	mkdir -p /var/run/netns
	# Fails while the directory is not a mount point; then bind it on itself.
	mount --make-rshared /var/run/netns 2>/dev/null || {
		mount --rbind /var/run/netns /var/run/netns &&
			mount --make-rshared /var/run/netns
	}
}

# ancestors: this script's process and those above it (the go test binary
# that runs the comparison matches *.test).
ancestors() {
	local pid=$$ out=""
	while [[ -n $pid && $pid != 0 ]]; do
		out+="$pid "
		pid=$(awk '/^PPid:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || break
	done
	echo "$out"
}

compare() {
	local before=$1 left
	[[ -r $before ]] || { echo "hostcheck: no snapshot $before (make test takes it first)" >&2 && return 2; }
	left=$(snapshot | LC_ALL=C comm -13 "$before" -)
	if [[ -z $left ]]; then
		echo "hostcheck: the host is as it was at the start ($(wc -l <"$before") items compared)"
		return 0
	fi
	echo "hostcheck: the tests left these on the host (not there at the start):"
	# shellcheck disable=SC2001 # one substitution per line
	sed 's/^/  /' <<<"$left"
	return 1
}

case "${1:-}:${2:-}" in
snapshot:?*)
	[[ $(id -u) != 0 ]] || netns_dir
	snapshot >"$2"
	;;
compare:?*) compare "$2" ;;
*)
	echo "usage: $0 snapshot|compare FILE" >&2
	exit 2
	;;
esac
