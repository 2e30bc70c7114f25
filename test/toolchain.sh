#!/usr/bin/env bash
# Makes sure this machine can build and test the project, and prints the go
# command to use. `make` runs it first.
#
# What the build needs beyond make and git:
#   - a Go of 1.21 or later: such a Go reads go.mod's `go` line and, when it is
#     older than that, fetches the exact toolchain go.mod names from the Go
#     module proxy by itself (GOTOOLCHAIN=auto, about 76 MB once per machine).
#     Debian 12's own golang-go is 1.19, which cannot; bookworm-backports has
#     golang-1.23-go.
#   - a C compiler, for `go test -race` (cgo).
# Whatever is missing is installed with apt (as root): bookworm-backports is added
# to apt's sources, on the mirror the machine's own Debian sources name, when
# the machine has no candidate for golang-1.23-go yet.
set -euo pipefail

BACKPORTS_GO=/usr/lib/go-1.23/bin/go
# Debian's Go may default to GOTOOLCHAIN=local, which refuses go.mod's newer
# go line instead of fetching that toolchain; the Makefile exports the same.
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}

log() { echo "toolchain: $*" >&2; }

# go_ok: the go command $1 exists and is 1.21 or later.
go_ok() {
	local v
	v=$(GOTOOLCHAIN=$GOTOOLCHAIN "$1" env GOVERSION 2>/dev/null) || return 1
	v=${v#go}
	local major=${v%%.*} rest=${v#*.}
	local minor=${rest%%.*}
	((major > 1 || (major == 1 && minor >= 21)))
}

# mirror: the URI of the machine's Debian sources (deb822 or one-line form).
mirror() {
	local f
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -e $f ]] || continue
		awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$f"
	done
	if [[ -e /etc/apt/sources.list ]]; then
		awk '$1 == "deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list
	fi
}

install() {
	if [[ $(id -u) != 0 ]]; then
		log "missing: $*; run make as root once, or install them yourself"
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	log "installing $* (apt)"
	apt-get -q update >/dev/null
	apt-get -q -y install --no-install-recommends "$@" >/dev/null
}

need=()
go=$(command -v go || true)
if [[ -n $go ]] && go_ok "$go"; then
	:
elif go_ok "$BACKPORTS_GO"; then
	go=$BACKPORTS_GO
else
	if ! apt-cache policy golang-1.23-go 2>/dev/null | grep -q 'Candidate: [0-9]'; then
		uri=$(mirror | head -n1)
		if [[ -z $uri || $(id -u) != 0 ]]; then
			log "no Go 1.21+ and no way to add bookworm-backports (mirror '${uri}', uid $(id -u))"
			exit 1
		fi
		log "adding bookworm-backports from $uri to apt's sources"
		printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
			"$uri" >/etc/apt/sources.list.d/bookworm-backports.sources
	fi
	need+=(golang-1.23-go)
	go=$BACKPORTS_GO
fi
command -v gcc >/dev/null || need+=(gcc libc6-dev)
((${#need[@]} == 0)) || install "${need[@]}"
go_ok "$go" || {
	log "$go is not a Go of 1.21 or later, or cannot switch to the toolchain go.mod names:"
	GOTOOLCHAIN=$GOTOOLCHAIN "$go" env GOVERSION >&2 || true
	exit 1
}
echo "$go"
