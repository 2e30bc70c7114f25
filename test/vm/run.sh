#!/usr/bin/env bash
# Boot emulated SR-IOV NICs (QEMU's igb, an Intel 82576 with 7 VFs) in a
# throwaway VM and run the plugin against them.
#
#   test/vm/run.sh e2e     the e2e suite (test/e2e) on Debian 12's 6.1 kernel,
#                          on bookworm-backports' 6.12 kernel and on Debian
#                          11's 5.10 kernel (not its chaos test)
#   test/vm/run.sh demo    a guided ADD/DEL of one PF with its 7 VFs
#   test/vm/run.sh bench   ADD+DEL timings on 6.1 and 6.12, one VM after the
#                          other: the plugin against the floor in process and
#                          the floor exec'd like a plugin, and a profile
#
# Runs as root on Debian 12. Installs what it needs (QEMU with igb from
# bookworm-backports, busybox-static, cpio, xz-utils), caches kernels under
# $SRIOVPT_VM_CACHE and never touches the host's network devices: the VM's
# NICs are user-mode back ends with restrict=on.
#
# Environment:
#   SRIOVPT_VM_CACHE    cache directory (default /var/cache/sriov-passthrough-cni-vm)
#   SRIOVPT_VM_KERNELS  kernels to run e2e on, space separated (default "6.1 6.12 5.10")
#   SRIOVPT_VM_CHAOS_KERNELS  of those, the kernels the split run gives a chaos
#                       VM (default "6.1 6.12": the chaos test proves the
#                       release's logic, which 5.10 does not change, and CI
#                       time is dear)
#   SRIOVPT_VM_BOOT_TIMEOUT  seconds a guest may take to find its PFs before it
#                       is stopped and booted once more (default 240)
#   SRIOVPT_VM_TIMEOUT  seconds one VM may run (default 1500; the eight e2e VMs side
#                       by side on two cores took 460-800 s each in one run, 340-580 s
#                       in another: 900 left too thin a margin)
#   SRIOVPT_VM_SMP      guest CPUs (default: host CPUs, at most 4)
#   SRIOVPT_VM_SERIAL   set: boot the e2e VMs one after the other, not side by side
#   SRIOVPT_VM_NO_SPLIT set: one VM per kernel (default: the chaos test and the
#                       twenty kind-sriov jobs each in a VM of their own)
#   E2E_RUN, E2E_SKIP   passed to the e2e binary as -test.run, -test.skip
#   E2E_CHAOS_SEED, E2E_CHAOS_ROUNDS  passed to the guest for the chaos test
#   E2E_JOBS_SEED       passed to the guest for the twenty kind-sriov jobs
#   SRIOVPT_VM_PLUGIN   use this plugin binary instead of building one (make build)
#   BENCH_FLOOR         path of a static floor program for bench mode
#                       (default: test/e2e/floorcni, built here)
#   SRIOVPT_VM_BENCH_KERNELS  kernels bench runs on (default "6.1 6.12")
#   BENCH_ROUNDS        ADD+DEL cycles per method and kernel (default 10)
#   BENCH_PLUGIN_BASE   another static plugin build (an older commit) timed
#                       in the same rounds: vs_base is the plugin's ratio to it
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=test/vm/lib.sh
source "$here/lib.sh"

main() {
	local mode=${1:-}
	case "$mode" in
	e2e | demo | bench) ;;
	*)
		echo "usage: $0 e2e|demo|bench" >&2
		exit 2
		;;
	esac
	if [[ $(id -u) -ne 0 ]]; then
		die "must run as root (it installs packages and boots a VM)"
	fi

	work=$(mktemp -d /tmp/sriovpt-vm.XXXXXX)
	trap cleanup EXIT
	trap 'exit 130' INT TERM

	local t0=$SECONDS
	step "host packages" ensure_host_packages

	# e2e runs on every kernel named, bench on its own list, demo on the
	# first.
	local kernels=()
	read -r -a kernels <<<"${SRIOVPT_VM_KERNELS:-6.1 6.12 5.10}"
	[[ $mode != bench ]] || read -r -a kernels <<<"${SRIOVPT_VM_BENCH_KERNELS:-6.1 6.12}"
	((${#kernels[@]})) || kernels=(6.1)
	[[ $mode != demo ]] || kernels=("${kernels[0]}")

	local k failed=()
	for k in "${kernels[@]}"; do
		step "kernel $k" ensure_kernel "$k"
	done
	step "static binaries" build_binaries "$mode"
	# One VM per job, KERNEL[:SHARD]. The full e2e suite is split in three
	# VMs per kernel, the long chaos test and the twenty kind-sriov jobs
	# apart, unless E2E_RUN/E2E_SKIP pick tests; the chaos VM only on the
	# chaos kernels.
	local jobs=() j chaos=" ${SRIOVPT_VM_CHAOS_KERNELS:-6.1 6.12} "
	for k in "${kernels[@]}"; do
		if [[ $mode == e2e && -z ${E2E_RUN:-}${E2E_SKIP:-}${SRIOVPT_VM_NO_SPLIT:-} ]]; then
			jobs+=("$k:main")
			[[ $chaos != *" $k "* ]] || jobs+=("$k:chaos")
			jobs+=("$k:jobs")
		else
			jobs+=("$k:")
		fi
	done
	# A benchmark shares the machine with nothing: its VMs boot in turn.
	if ((${#jobs[@]} > 1)) && [[ -z ${SRIOVPT_VM_SERIAL:-} && $mode != bench ]]; then
		# Side by side: a TCG guest mostly waits (RCU grace periods on every
		# netns move), so several fit on two cores in little more than one's time.
		log "booting ${jobs[*]} side by side; their lines are labelled (SRIOVPT_VM_SERIAL=1: one at a time)"
		local pids=() i
		for j in "${jobs[@]}"; do
			run_vm "$mode" "${j%%:*}" "${j#*:}" &
			pids+=($!)
		done
		for i in "${!jobs[@]}"; do
			wait "${pids[$i]}" || failed+=("${jobs[$i]%:}")
		done
	else
		for j in "${jobs[@]}"; do
			run_vm "$mode" "${j%%:*}" "${j#*:}" || failed+=("${j%:}")
		done
	fi
	for j in "${jobs[@]}"; do
		k=${j%%:*} j=${j#*:}
		cat "$work/summary-$k${j:+-$j}" 2>/dev/null ||
			printf 'FAIL\t%s (linux %s%s)\tno result\n' "$module_path" "$k" "${j:+, $j}"
	done

	log "VM stage took $((SECONDS - t0))s"
	if ((${#failed[@]})); then
		log "FAILED on linux ${failed[*]}"
		exit 1
	fi
}

cleanup() {
	local rc=$?
	local f
	# No VM may boot again once we stop them (run_vm retries a failed boot).
	[[ -n ${work:-} && -d $work ]] && touch "$work/stopping"
	for f in "${work:-/nonexistent}"/qemu-*.pid; do
		[[ -s $f ]] || continue
		kill "$(cat "$f")" 2>/dev/null || true
		sleep 1
	done
	[[ -n ${work:-} && -d $work ]] && rm -rf "$work"
	exit "$rc"
}

main "$@"
