#!/usr/bin/env bash
# make bootstrap-check: proves the README's set-up on a fresh Debian 12. It
# builds a bare Debian 12 root file system (debootstrap, variant minbase, from
# the mirror this machine's apt sources name), does in it exactly what the
# README's "Two commands" section says (one apt-get line, then make), and runs
# `make build` and `make unit` there, timing each step. On demand only: it
# downloads a few hundred MB and takes a quarter of an hour or more.
#
# The root file system gets this machine's network configuration (apt's sources
# and apt.conf.d, resolv.conf, local certificate authorities), as a fresh install
# on this network would have, and nothing else from the host: no Go, no
# compiler, no Go module or build cache.
#
# Needs root. Leaves nothing behind: the root file system and its mounts are
# removed on exit, also on failure or interrupt.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
[[ $(id -u) == 0 ]] || {
	echo "bootstrap-check: needs root (debootstrap, chroot, mounts)" >&2
	exit 1
}
start=$(date +%s)
log() { printf 'bootstrap-check: [%4ds] %s\n' "$(($(date +%s) - start))" "$*"; }

if ! command -v debootstrap >/dev/null; then
	log "installing debootstrap"
	DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends debootstrap >/dev/null
fi
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
	[[ -e $f ]] || continue
	mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$f")
	[[ -z $mirror ]] || break
done
[[ -n $mirror ]] || mirror=$(awk '$1 == "deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list)

root=$(mktemp -d /var/tmp/sriovpt-bootstrap.XXXXXX)
mounts=()
cleanup() {
	local i
	for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
		umount -l "${mounts[i]}" 2>/dev/null || true
	done
	rm -rf --one-file-system "$root"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "debootstrap --variant=minbase bookworm into $root"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
	tail -20 "$root.log" >&2
	rm -f "$root.log"
	exit 1
}
rm -f "$root.log"
# This network's apt configuration, as a fresh install here would have it.
rm -f "$root"/etc/apt/sources.list
cp -a /etc/apt/sources.list.d/. "$root/etc/apt/sources.list.d/"
rm -f "$root"/etc/apt/sources.list.d/*backports* "$root"/etc/apt/sources.list.d/*.disabled*
cp -a /etc/apt/apt.conf.d/. "$root/etc/apt/apt.conf.d/"
# And its local certificate authorities, if any (a TLS-inspecting egress
# proxy's, say): ca-certificates, which the set-up line installs, adds them.
if [[ -d /usr/local/share/ca-certificates ]]; then
	mkdir -p "$root/usr/local/share/ca-certificates"
	cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
# / is a mount point on a real machine (the tests make it rslave and read
# mountinfo): make the root file system one too.
mount --bind "$root" "$root"
mounts+=("$root")
for m in proc sys dev; do
	mount --rbind "/$m" "$root/$m"
	mount --make-rslave "$root/$m"
	mounts+=("$root/$m")
done
# A /run of its own: the tests' netns mounts stay inside.
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mounts+=("$root/run")
log "root file system ready; copying the repository (git clone of $(git -C "$repo" rev-parse --short HEAD))"

in_root() { chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	LANG=C.UTF-8 bash -c "$1"; }

# The README's set-up line, verbatim.
setup=$(sed -n 's/^apt-get install -y \(.*\)$/apt-get install -y \1/p' "$repo/README.md" | head -n1)
[[ -n $setup ]] || {
	echo "bootstrap-check: README has no 'apt-get install -y ...' line" >&2
	exit 1
}
t=$(date +%s)
in_root "export DEBIAN_FRONTEND=noninteractive; apt-get -q update >/dev/null && $setup >/dev/null"
log "README set-up ($setup): $(($(date +%s) - t))s"
git clone -q "$repo" "$root/src"

t=$(date +%s)
in_root "cd /src && make build"
log "make build on a bare Debian 12 (toolchain included): $(($(date +%s) - t))s"
t=$(date +%s)
in_root "cd /src && make unit"
log "make unit: $(($(date +%s) - t))s"
log "done: the README's set-up, make build and make unit pass on a fresh Debian 12 in $(($(date +%s) - start))s"
