#!/usr/bin/env bash
# Installs the Debian packages the host-side tests use, when they are missing:
# the shellcheck and busybox tools (installer and lint), util-linux's setpriv (least
# privilege test), iproute2, procps's sysctl (uplink tests; not in a minimal
# Debian 12). The VM harness (test/vm/run.sh) installs its own.
# Runs apt only when something is missing, and only as root.
set -euo pipefail
want=()
command -v shellcheck >/dev/null || want+=(shellcheck)
command -v busybox >/dev/null || want+=(busybox)
command -v setpriv >/dev/null || want+=(util-linux)
command -v ip >/dev/null || want+=(iproute2)
command -v sysctl >/dev/null || want+=(procps)
((${#want[@]})) || exit 0
if [[ $(id -u) != 0 ]]; then
	echo "test/deps.sh: missing ${want[*]}; run as root (or install them) to run every test" >&2
	exit 0
fi
echo "test/deps.sh: installing ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get -q update >/dev/null
apt-get -q -y install --no-install-recommends "${want[@]}" >/dev/null
