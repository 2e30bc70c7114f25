#!/bin/bash
# Builds or fetches every piece of the one-node Kubernetes that `make k8s-e2e`
# runs, into a cache keyed by version: $K8S_CACHE/<kubernetes version>/.
#
#   Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler,
#   kubelet, kubectl), etcd and the CNI reference plugins (bridge, host-local,
#   loopback): built from the Go module proxy in test/k8s/components, a module
#   of its own (k8s.io/kubernetes pulls ~2 GB of dependencies; the project's
#   go.mod never sees them).
#   containerd, runc, busybox-static: Debian's packages, unpacked with
#   dpkg-deb -x (nothing is installed on the host).
#   multus v4 (thin plugin) and the NetworkAttachmentDefinition CRD: from their
#   upstream modules.
#   With K8S_KUBELET_VERSION set to an older release (make k8s-e2e's second
#   pass), that release's kubelet as well, into $K8S_CACHE/<its version>/bin,
#   from test/k8s/components-<its minor>: one go.mod holds one version of
#   k8s.io/kubernetes, so each older kubelet has a module of its own.
#   With K8S_CONTAINERD_VERSION set (make k8s-e2e's DRA pass), containerd of
#   that release (containerd, containerd-shim-runc-v2, ctr) into
#   $K8S_CACHE/containerd-<its version>/bin, from test/k8s/containerd:
#   Debian 12's containerd 1.6 has no CDI, which DRA needs to give a
#   container its environment. The other passes keep Debian's.
#
# A cold build takes 15-40 minutes of both cores and ~4 GB of Go build cache;
# it runs under `nice -n 15` and prints each piece as it goes. A warm cache
# (every piece present, stamped with its version) returns at once.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
K8S_VERSION=${K8S_VERSION:-v1.37.2}
K8S_KUBELET_VERSION=${K8S_KUBELET_VERSION:-$K8S_VERSION}
MULTUS_VERSION=${MULTUS_VERSION:-v4.2.2}
NAD_VERSION=${NAD_VERSION:-v1.7.7}
K8S_CACHE=${K8S_CACHE:-/var/cache/sriov-passthrough-cni-k8s}
cache=$K8S_CACHE/$K8S_VERSION
bin=$cache/bin
GO=${GO:-go}
NICE=(nice -n 15)

start=$(date +%s)
built=0

log() { printf 'k8s-build: [%4ds] %s\n' "$(($(date +%s) - start))" "$*"; }

# piece NAME STAMP CMD...: runs CMD unless $cache/stamps/NAME holds STAMP.
piece() {
	local name=$1 stamp=$2
	shift 2
	if [ "$(cat "$cache/stamps/$name" 2>/dev/null)" = "$stamp" ]; then
		return 0
	fi
	local t0
	t0=$(date +%s)
	log "$name ($stamp): building"
	"$@"
	mkdir -p "$cache/stamps"
	echo "$stamp" >"$cache/stamps/$name"
	built=$((built + 1))
	log "$name: done in $(($(date +%s) - t0))s"
}

# go_build OUTPUT PACKAGE [DIR]: builds PACKAGE of the module in DIR into
# $bin/OUTPUT, stamped with $VERSION_LDFLAGS and built with $GO_TAGS. A cold build of a Kubernetes command takes minutes: every 30 s
# it prints how many packages it has compiled of those it depends on (go
# build -v names each package as it compiles it; cached ones are skipped).
go_build() {
	local dir=${3:-$here/components} out total ticker rc=0
	out=$(mktemp)
	total=$(cd "$dir" && CGO_ENABLED=0 "$GO" list -tags "$GO_TAGS" -deps "$2" | wc -l)
	(
		while sleep 30; do
			kill -0 $$ 2>/dev/null || exit 0
			log "$1: $(grep -c . "$out") of $total packages compiled"
		done
	) &
	ticker=$!
	(cd "$dir" && CGO_ENABLED=0 "${NICE[@]}" "$GO" build -v -trimpath -tags "$GO_TAGS" \
		-gcflags "$GCFLAGS" -ldflags "-s -w $VERSION_LDFLAGS" -o "$bin/$1" "$2") 2>"$out" || rc=$?
	kill "$ticker" 2>/dev/null || true
	wait "$ticker" 2>/dev/null || true
	[ "$rc" = 0 ] || tail -n 40 "$out" >&2
	rm -f "$out"
	return "$rc"
}

# kube_ldflags VERSION: what Kubernetes' own build stamps into its binaries,
# so that each reports VERSION (the kubelet's node status, kubectl version).
kube_ldflags() {
	local v=$1 major minor
	major=${v%%.*} minor=$(echo "$v" | cut -d. -f2)
	echo "-X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=${major#v} -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
}
VERSION_LDFLAGS=$(kube_ldflags "$K8S_VERSION")
GO_TAGS=
# -s -w leave the binaries without debug info, so the compiler need not
# make it: a cold compile of client-go and the apiserver library took 262
# and 274 s this way, 291 and 303 s with it (2 cores, 2026-12-06).
GCFLAGS=all=-dwarf=false

debs() { # unpack Debian packages into $cache/deb
	local tmp
	tmp=$(mktemp -d)
	(cd "$tmp" && apt-get download "$@" >/dev/null 2>&1) ||
		{ apt-get update >/dev/null && (cd "$tmp" && apt-get download "$@" >/dev/null); }
	for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$cache/deb"; done
	rm -rf "$tmp"
}

multus() {
	local tmp src
	tmp=$(mktemp -d)
	# The module's version list is not served: fetch the exact version.
	src=$(cd "$here/components" && "$GO" mod download -json "gopkg.in/k8snetworkplumbingwg/multus-cni.v4@$MULTUS_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	cp -r "$src" "$tmp/multus" && chmod -R u+w "$tmp/multus" && rm -rf "$tmp/multus/vendor"
	(cd "$tmp/multus" && CGO_ENABLED=0 "${NICE[@]}" "$GO" build -mod=mod -trimpath -gcflags "$GCFLAGS" -ldflags "-s -w" -o "$bin/multus" ./cmd/multus)
	rm -rf "$tmp"
}

nad_crd() {
	local src
	src=$(cd "$here/components" && "$GO" mod download -json "github.com/k8snetworkplumbingwg/network-attachment-definition-client@$NAD_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	mkdir -p "$cache/manifests"
	cp "$src/artifacts/networks-crd.yaml" "$cache/manifests/"
}

# Go pieces are rebuilt when the version or test/k8s/components/go.sum changes.
go_stamp="$K8S_VERSION go.sum:$(sha256sum "$here/components/go.sum" | cut -c1-12)"

mkdir -p "$bin"
log "cache $cache (a cold build takes 15-40 min on 2 cores and ~4 GB of Go build cache)"
piece debs "containerd runc busybox-static" debs containerd runc busybox-static
piece nad-crd "$NAD_VERSION" nad_crd
piece etcd "$go_stamp" go_build etcd ./etcd
for c in bridge host-local loopback; do
	case $c in host-local) p=plugins/ipam/$c ;; *) p=plugins/main/$c ;; esac
	piece "$c" "$go_stamp" go_build "cni/$c" "github.com/containernetworking/plugins/$p"
done
piece multus "$MULTUS_VERSION" multus
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet; do
	piece "$c" "$go_stamp" go_build "$c" "k8s.io/kubernetes/cmd/$c"
done
log "all pieces present ($built built): kubernetes=$K8S_VERSION multus=$MULTUS_VERSION in $cache"

# An older kubelet, for a node that runs it under the $K8S_VERSION control
# plane (the version skew Kubernetes supports: up to three minors older).
if [ "$K8S_KUBELET_VERSION" != "$K8S_VERSION" ]; then
	mod=$here/components-${K8S_KUBELET_VERSION%.*}
	if [ "$(cd "$mod" 2>/dev/null && "$GO" list -m -f '{{.Version}}' k8s.io/kubernetes)" != "$K8S_KUBELET_VERSION" ]; then
		echo "k8s-build: no module for kubelet $K8S_KUBELET_VERSION: $mod/go.mod must require k8s.io/kubernetes $K8S_KUBELET_VERSION (make one as test/k8s/components-v1.34 is made)" >&2
		exit 1
	fi
	cache=$K8S_CACHE/$K8S_KUBELET_VERSION bin=$K8S_CACHE/$K8S_KUBELET_VERSION/bin
	VERSION_LDFLAGS=$(kube_ldflags "$K8S_KUBELET_VERSION")
	mkdir -p "$bin"
	piece kubelet "$K8S_KUBELET_VERSION go.sum:$(sha256sum "$mod/go.sum" | cut -c1-12)" \
		go_build kubelet k8s.io/kubernetes/cmd/kubelet "$mod"
	log "kubelet $K8S_KUBELET_VERSION present in $cache"
fi

# containerd with CDI, for the DRA pass: the kubelet hands a prepared
# claim's CDI devices to the runtime, which applies their edits (the
# driver's PCIDEVICE_PROW_SRIOV). Static, as containerd's own release
# build makes it (CGO off: no btrfs snapshotter, which the node never
# uses); the shim without the gRPC server it does not need.
if [ -n "${K8S_CONTAINERD_VERSION:-}" ]; then
	mod=$here/containerd
	if [ "$(cd "$mod" && "$GO" list -m -f '{{.Version}}' github.com/containerd/containerd/v2)" != "$K8S_CONTAINERD_VERSION" ]; then
		echo "k8s-build: $mod/go.mod must require github.com/containerd/containerd/v2 $K8S_CONTAINERD_VERSION" >&2
		exit 1
	fi
	cache=$K8S_CACHE/containerd-$K8S_CONTAINERD_VERSION bin=$cache/bin
	VERSION_LDFLAGS="-X github.com/containerd/containerd/v2/version.Version=$K8S_CONTAINERD_VERSION"
	mkdir -p "$bin"
	stamp="$K8S_CONTAINERD_VERSION go.sum:$(sha256sum "$mod/go.sum" | cut -c1-12)"
	for c in containerd ctr containerd-shim-runc-v2; do
		GO_TAGS="urfave_cli_no_docs osusergo netgo static_build"
		[ "$c" = containerd-shim-runc-v2 ] && GO_TAGS="$GO_TAGS no_grpc"
		piece "$c" "$stamp" go_build "$c" "github.com/containerd/containerd/v2/cmd/$c" "$mod"
	done
	log "containerd $K8S_CONTAINERD_VERSION present in $cache"
fi
