#!/usr/bin/env bash
# The VM runner's verdicts, without QEMU: run_vm from lib.sh, with boot_vm
# replaced by one that writes a scripted console and QEMU exit code. Checks
# that a run whose QEMU or guest kernel crashed after boot runs once more,
# that nothing else does, and that every way a VM can end leaves a summary
# line (a VM without a result line once left none, and CI's tail only said
# "no result"). Run by test/deploy (TestVMRunnerVerdicts); needs cpio.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=test/vm/lib.sh
source "$here/lib.sh"

work=$(mktemp -d /tmp/sriovpt-vm-selftest.XXXXXX)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$work/kernel/modules"
echo "6.1.0-test" >"$work/kernel/release"
: >"$work/kernel/modules/igb.ko"
: >"$work/base.cpio"
kernel_dir[6.1]=$work/kernel

# boot_vm's stand-in: each boot takes the next line of $work/script, "RC
# CONSOLE-LINES" with \n between lines, and counts itself in $work/boots.
boot_vm() {
	local job=$1 console=$2 n line
	n=$(($(cat "$work/boots" 2>/dev/null || echo 0) + 1))
	echo "$n" >"$work/boots"
	line=$(sed -n "${n}p" "$work/script")
	[[ -n $line ]] || line="255 "
	printf '%b\n' "${line#* }" >"$console"
	echo "${line%% *}" >"$work/qemu-$job.rc"
}

up='guest: 3 SR-IOV PFs up after 0.0s'
pass="$up\n--- PASS: TestX (0.01s)\nPASS\nSRIOVPT-VM-RESULT rc=0"
fail="$up\n--- FAIL: TestX (0.01s)\nFAIL\nSRIOVPT-VM-RESULT rc=1"
assertion="qemu-system-x86_64: system/physmem.c:2678: iotlb_to_section: Assertion \`section_index < d->map.sections_nb' failed."
panic='[   16.886169] Kernel panic - not syncing: Fatal exception in interrupt'

failures=0
# check NAME WANT-RC WANT-BOOTS SUMMARY-REGEX BOOT...: run one VM whose boots
# go as scripted and compare its exit code, boots and summary.
check() {
	local name=$1 want_rc=$2 want_boots=$3 want_summary=$4 rc=0 boots summary
	shift 4
	printf '%s\n' "$@" >"$work/script"
	rm -f "$work/boots" "$work/summary-6.1-main"
	# In the background, as run.sh runs it: set -e holds there (in a
	# "|| rc=$?" it would not).
	run_vm e2e 6.1 main >"$work/out" 2>&1 &
	wait $! || rc=$?
	boots=$(cat "$work/boots" 2>/dev/null || echo 0)
	summary=$(cat "$work/summary-6.1-main" 2>/dev/null || echo "(no summary)")
	if [[ $rc != "$want_rc" || $boots != "$want_boots" ]] || ! grep -qE "$want_summary" <<<"$summary"; then
		echo "FAIL $name: exit $rc (want $want_rc), boots $boots (want $want_boots), summary:"
		echo "$summary"
		echo "runner output:"
		cat "$work/out"
		failures=$((failures + 1))
		return
	fi
	echo "ok   $name"
}

tab=$'\t'
check "a passing run" 0 1 "^ok  ${tab}.*\(linux 6.1, main\)" "0 $pass"
check "a failing test is the verdict" 1 1 "^--- FAIL: TestX" "0 $fail"
check "QEMU aborts mid-run, the rerun passes" 0 2 "the first VM crashed \(qemu-system-x86_64: .*Assertion" \
	"134 $up\n=== RUN   TestX\n$assertion" "0 $pass"
check "the guest kernel panics mid-run, the rerun passes" 0 2 "the first VM crashed \(Kernel panic" \
	"0 $up\n$panic" "0 $pass"
check "a second crash is the verdict" 1 2 "^FAIL${tab}.*\(linux 6.1, main\)" \
	"134 $up\n$assertion" "134 $up\n$assertion"
check "a crash is no excuse for a failed test after it" 1 2 "^--- FAIL: TestX" \
	"134 $up\n$assertion" "0 $fail"
check "no result line and no crash: the end of the console is shown" 1 1 "linux-6.1/main\| last words" \
	"0 $up\nlast words"
check "a timeout is not rerun" 1 1 "^FAIL${tab}" "124 $up\n$panic"
check "a crash in boot is booted once more, not rerun as well" 1 2 "^FAIL${tab}" \
	"134 $assertion" "134 $assertion"

if ((failures)); then
	echo "$failures of the VM runner's verdicts are wrong"
	exit 1
fi
