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
#
# A cold build takes 15-40 minutes of both cores and ~4 GB of Go build cache;
# it runs under `nice -n 15` and prints each piece as it goes. A warm cache
# (every piece present, stamped with its version) returns at once.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
K8S_VERSION=${K8S_VERSION:-v1.37.2}
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

go_build() { # OUTPUT PACKAGE [DIR]
	(cd "${3:-$here/components}" && CGO_ENABLED=0 "${NICE[@]}" "$GO" build -trimpath \
		-ldflags "-s -w $KUBE_LDFLAGS" -o "$bin/$1" "$2")
}

KUBE_LDFLAGS="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=${K8S_VERSION%%.*} -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean"
KUBE_LDFLAGS=${KUBE_LDFLAGS/gitMajor=v/gitMajor=}

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
	(cd "$tmp/multus" && CGO_ENABLED=0 "${NICE[@]}" "$GO" build -mod=mod -trimpath -ldflags "-s -w" -o "$bin/multus" ./cmd/multus)
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
