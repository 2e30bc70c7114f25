#!/usr/bin/env bash
# Runs shellcheck on every shell script in the tree: files named *.sh and
# files whose first line is a sh or bash shebang (install-plugin, .ci/run,
# the VM's init), tracked or new (what .gitignore keeps out is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v shellcheck >/dev/null ||
	{ echo "test/shellcheck.sh: shellcheck is missing (make deps, as root, installs it)" >&2 && exit 1; }
scripts=()
while IFS= read -r -d '' f; do
	[[ -f $f ]] || continue
	if [[ $f == *.sh ]] || head -n1 "$f" | grep -qE '^#!.*[/ ](ba|da)?sh( |$)'; then
		scripts+=("$f")
	fi
done < <(git ls-files -z --cached --others --exclude-standard)
((${#scripts[@]})) || { echo "test/shellcheck.sh: no shell scripts found" >&2 && exit 1; }
echo "shellcheck ${scripts[*]}"
# -x: follow the files a script sources (run.sh's lib.sh).
shellcheck -x "${scripts[@]}"
