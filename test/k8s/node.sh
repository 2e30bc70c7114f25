#!/bin/bash
# The node: runs as init of the private namespaces run.sh makes (unshare
# --mount --net --pid --uts --ipc), so every process below dies with it, every
# mount it makes stays in its mount namespace and every link in its netns.
# It brings up etcd, the control plane, containerd and the kubelet, deploys
# multus and the project, then runs the scenario tests (or, with
# K8S_E2E_SHELL=1, waits for a person to drive the cluster).
#
# Inputs (from run.sh): W work dir, C component cache, IMAGES dir of OCI
# archives, SCENARIOS test binary, PLUGIN_TAG_A/B image tags, REPO checkout,
# KUBELET the kubelet binary and K8S_KUBELET_VERSION its release (an older
# one than the control plane's in make k8s-e2e's second pass); K8S_DRA=1 and
# CONTAINERD_BIN (the DRA pass: containerd v2 from there, the agent a DRA
# kubelet plugin).
set -euo pipefail

NODE=sriovpt-node
NODE_IP=192.0.2.10 # documentation range, only ever inside this netns
SYSFS=/run/sriovpt-sys
CGROUP_ROOT=/$(basename "$W")
export PATH=$C/bin:$C/deb/usr/bin:$C/deb/usr/sbin:$C/deb/bin:$PATH
# containerd v2 (and its ctr and runc shim, which containerd finds on PATH)
# before Debian's 1.6: it has CDI.
[ "${K8S_DRA:-}" = 1 ] && PATH=$CONTAINERD_BIN:$PATH
export KUBECONFIG=$W/pki/admin.kubeconfig
# Temporary files of everything the node runs stay in its work dir: runc
# exec (kubectl exec) writes a runc-process* file to the temp dir and leaves
# it when the exec is killed, and /tmp is the host's.
export TMPDIR=$W/tmp
mkdir -p "$TMPDIR"

private_mounts() {
	mount -t tmpfs -o mode=0755 tmpfs /run
	local d
	for d in var etc opt; do
		mkdir -p "$W/upper/$d" "$W/ovwork/$d"
		mount -t overlay overlay -o "lowerdir=/$d,upperdir=$W/upper/$d,workdir=$W/ovwork/$d" "/$d"
	done
	# containerd's overlay snapshots and the kubelet's volumes need a real
	# filesystem under them, not an overlay.
	for d in containerd kubelet etcd; do
		mkdir -p "$W/data/$d" "/var/lib/$d"
		mount --bind "$W/data/$d" "/var/lib/$d"
	done
	mkdir -p /opt/cni/bin /etc/cni/net.d /var/log/pods
	# Shared within this mount namespace only (its mounts are copies, private
	# to the host's), as on a node: the agent's HostToContainer mount of
	# /var/run/netns needs it to see the pods made after it started.
	mount --make-rshared /
	# With protectKernelDefaults the kubelet changes no sysctl and refuses to
	# start unless these read as it wants them; the files hold its values so
	# that the host's (shared by every netns-less namespace) stay untouched.
	mkdir -p "$W/sysctl"
	local kv k v
	for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
		kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
		k=${kv%=*} v=${kv#*=}
		if [ "$(cat "/proc/sys/$k")" != "$v" ]; then
			echo "$v" >"$W/sysctl/${k//\//.}"
			mount --bind "$W/sysctl/${k//\//.}" "/proc/sys/$k"
		fi
	done
}

node_network() {
	hostname "$NODE"
	echo "$NODE_IP $NODE" >>/etc/hosts
	ip link set lo up
	ip link add node0 type ifb
	ip addr add "$NODE_IP/24" dev node0
	ip link set node0 up
	ip route add default via 192.0.2.1 dev node0 onlink
}

# fake_pfs makes K8S_PFS PFs with K8S_VFS VFs each: ifb links in this netns and
# the sysfs tree test/kerneltest builds (class/net/<name>/device -> the PCI
# function, sriov_totalvfs, sriov_numvfs, virtfnN, physfn), each function on
# its driver (igb, igbvf) as a node's are: a declared sriovBaseline judges a
# VF without one off its default driver.
fake_pfs() {
	local i j bus pf pci vf vpci
	mkdir -p "$SYSFS/class/net" "$SYSFS/bus/pci/devices" "$SYSFS/devices/pci0000:00" \
		"$SYSFS/bus/pci/drivers/igb" "$SYSFS/bus/pci/drivers/igbvf"
	for ((i = 0; i < K8S_PFS; i++)); do
		bus=$((0x3b + i)) pf=ens1f$i
		pci=$(printf '0000:%02x:00.0' "$bus")
		pci_dir "$pci"
		echo "$K8S_VFS" >"$SYSFS/devices/pci0000:00/$pci/sriov_totalvfs"
		echo "$K8S_VFS" >"$SYSFS/devices/pci0000:00/$pci/sriov_numvfs"
		ln -s ../../../bus/pci/drivers/igb "$SYSFS/devices/pci0000:00/$pci/driver"
		netdev "$pci" "$pf"
		for ((j = 0; j < K8S_VFS; j++)); do
			vpci=$(printf '0000:%02x:%02x.%d' $((bus + 0x40)) $((j / 8)) $((j % 8)))
			vf=${pf}v$j
			pci_dir "$vpci"
			ln -s "../$pci" "$SYSFS/devices/pci0000:00/$vpci/physfn"
			ln -s "../$vpci" "$SYSFS/devices/pci0000:00/$pci/virtfn$j"
			ln -s ../../../bus/pci/drivers/igbvf "$SYSFS/devices/pci0000:00/$vpci/driver"
			netdev "$vpci" "$vf"
		done
	done
	ip -o link | awk -F': ' '$2 ~ /^ens1f/ {print $1, $2}' >"$W/devices"
}

pci_dir() {
	mkdir -p "$SYSFS/devices/pci0000:00/$1"
	ln -s "../../../devices/pci0000:00/$1" "$SYSFS/bus/pci/devices/$1"
}

# netdev PCI NAME makes the function's netdev, listed in the tree as /sys
# lists it: under the function with its ifindex, the function on the pci
# bus. That is what names a netdev's PCI function where netlink does not
# (an ifb never has a parent device), as after a VF's driver is rebound.
netdev() {
	ip link add "$2" type ifb
	mkdir -p "$SYSFS/devices/pci0000:00/$1/net/$2"
	ln -s ../../ "$SYSFS/devices/pci0000:00/$1/net/$2/device"
	ip -o link show dev "$2" | cut -d: -f1 >"$SYSFS/devices/pci0000:00/$1/net/$2/ifindex"
	ln -s ../../../bus/pci "$SYSFS/devices/pci0000:00/$1/subsystem"
	ln -s "../../devices/pci0000:00/$1/net/$2" "$SYSFS/class/net/$2"
}

t0=$(date +%s)
step() { printf 'k8s-e2e: [%4ds] %s\n' "$(($(date +%s) - t0))" "$*"; }

# wait_for WHAT SECONDS CMD...: polls CMD once a second.
wait_for() {
	local what=$1 n=$2
	shift 2
	for ((; n > 0; n--)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 1
	done
	echo "k8s-e2e: timed out waiting for $what" >&2
	return 1
}

# supervise NAME CMD...: runs CMD in the background and starts it again
# whenever it exits, as a service manager would; $W/pids/NAME holds the pid of
# the running instance so that a scenario can kill it.
supervise() {
	local name=$1
	shift
	mkdir -p "$W/pids" "$W/logs"
	(
		while true; do
			"$@" >>"$W/logs/$name.log" 2>&1 &
			echo $! >"$W/pids/$name"
			wait $! || true
			echo "--- $name exited, restarting" >>"$W/logs/$name.log"
			sleep 1
		done
	) &
}

pki() {
	local p=$W/pki
	mkdir -p "$p" /etc/cni/net.d/multus.d
	openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
	openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
	ADMIN_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
	NODE_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
	cat >"$p/tokens.csv" <<-CSV
		$ADMIN_TOKEN,admin,admin,system:masters
		$NODE_TOKEN,system:node:$NODE,node,system:nodes
	CSV
	kubeconfig "$ADMIN_TOKEN" >"$p/admin.kubeconfig"
	kubeconfig "$NODE_TOKEN" >"$p/node.kubeconfig"
	cp "$p/admin.kubeconfig" /etc/cni/net.d/multus.d/multus.kubeconfig
}

kubeconfig() {
	cat <<-KC
		apiVersion: v1
		kind: Config
		clusters:
		- name: local
		  cluster: {server: "https://$NODE_IP:6443", insecure-skip-tls-verify: true}
		users:
		- name: u
		  user: {token: "$1"}
		contexts:
		- name: local
		  context: {cluster: local, user: u}
		current-context: local
	KC
}

control_plane() {
	local p=$W/pki
	supervise etcd etcd --data-dir /var/lib/etcd/data --name node \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster node=http://127.0.0.1:2380 --log-level warn
	supervise kube-apiserver kube-apiserver --etcd-servers http://127.0.0.1:2379 \
		--advertise-address "$NODE_IP" --secure-port 6443 --cert-dir "$p/apiserver" \
		--token-auth-file "$p/tokens.csv" --authorization-mode Node,RBAC --allow-privileged \
		--service-cluster-ip-range 10.96.0.0/16 --service-account-issuer https://kubernetes.default.svc \
		--service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
		--kubelet-preferred-address-types InternalIP
	wait_for "kube-apiserver /readyz" 120 kubectl get --raw /readyz
	step "control plane: etcd and kube-apiserver ready"
	supervise kube-controller-manager kube-controller-manager --kubeconfig "$p/admin.kubeconfig" \
		--service-account-private-key-file "$p/sa.key" --root-ca-file "$p/apiserver/apiserver.crt" \
		--leader-elect=false --use-service-account-credentials=false
	supervise kube-scheduler kube-scheduler --kubeconfig "$p/admin.kubeconfig" --leader-elect=false
}

containerd_up() {
	mkdir -p /etc/containerd
	# make bench-k8s reads each sandbox's CNI setup time from containerd's
	# debug lines ("begin cni setup", "cni result").
	local level=info
	[ "${K8S_BENCH:-}" = 1 ] && level=debug
	if [ "${K8S_DRA:-}" = 1 ]; then
		containerd_v2_config "$level" >/etc/containerd/config.toml
	else
		containerd_config "$level" >/etc/containerd/config.toml
	fi
	cp "$C"/bin/cni/* "$C/bin/multus" /opt/cni/bin/
	cat >/etc/cni/net.d/00-multus.conf <<-JSON
		{
		  "cniVersion": "1.0.0", "name": "multus-cni-network", "type": "multus",
		  "kubeconfig": "/etc/cni/net.d/multus.d/multus.kubeconfig",
		  "delegates": [{
		    "cniVersion": "1.0.0", "name": "cluster", "type": "bridge", "bridge": "cni0",
		    "isGateway": true, "ipam": {"type": "host-local", "subnet": "10.244.0.0/24"}
		  }]
		}
	JSON
	supervise containerd containerd --config /etc/containerd/config.toml
	wait_for containerd 60 ctr version
	local a
	for a in "$IMAGES"/*.tar; do
		ctr_logged -n k8s.io images import "$a" >/dev/null
	done
	step "containerd $(containerd --version | awk '{print $3}') up, images imported: $(ctr_logged -n k8s.io images ls -q | grep -c localhost/ | tr "\n" " ")"
}

# ctr_logged runs ctr with its stderr in the node's logs: containerd v2's
# ctr repeats the daemon's deprecation warnings (cgroup v1) on every call.
# A failed run prints the last lines of every log.
ctr_logged() {
	ctr "$@" 2>>"$W/logs/ctr.log"
}

# containerd_config LEVEL: Debian's containerd 1.6 (config version 2).
containerd_config() {
	cat <<-TOML
		version = 2
		root = "/var/lib/containerd"
		state = "/run/containerd"
		[debug]
		  level = "$1"
		[grpc]
		  address = "/run/containerd/containerd.sock"
		[plugins."io.containerd.grpc.v1.cri"]
		  sandbox_image = "$PAUSE_IMAGE"
		  # runc cannot lower oom_score_adj without CAP_SYS_RESOURCE, which
		  # this sandbox lacks; with this set containerd never asks it to.
		  restrict_oom_score_adj = true
		  [plugins."io.containerd.grpc.v1.cri".containerd]
		    snapshotter = "overlayfs"
		    default_runtime_name = "runc"
		    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
		      runtime_type = "io.containerd.runc.v2"
		      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
		        BinaryName = "$C/deb/usr/sbin/runc"
		  [plugins."io.containerd.grpc.v1.cri".cni]
		    bin_dir = "/opt/cni/bin"
		    conf_dir = "/etc/cni/net.d"
	TOML
}

# containerd_v2_config LEVEL: containerd v2 (config version 3, where the
# CRI plugin is split into images and runtime), for the DRA pass. The same
# node as containerd_config's: the pause image, no lowered oom_score_adj,
# cgroupfs (the kubelet asks the runtime for its cgroup driver, and
# SystemdCgroup off is cgroupfs), Debian's runc. CDI is always on in v2;
# cdi_spec_dirs names where the DRA driver writes a claim's spec.
containerd_v2_config() {
	cat <<-TOML
		version = 3
		root = "/var/lib/containerd"
		state = "/run/containerd"
		[debug]
		  level = "$1"
		[grpc]
		  address = "/run/containerd/containerd.sock"
		[plugins.'io.containerd.cri.v1.images']
		  snapshotter = "overlayfs"
		  [plugins.'io.containerd.cri.v1.images'.pinned_images]
		    sandbox = "$PAUSE_IMAGE"
		[plugins.'io.containerd.cri.v1.runtime']
		  restrict_oom_score_adj = true
		  cdi_spec_dirs = ["/etc/cdi", "/var/run/cdi"]
		  [plugins.'io.containerd.cri.v1.runtime'.containerd]
		    default_runtime_name = "runc"
		    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
		      runtime_type = "io.containerd.runc.v2"
		      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
		        BinaryName = "$C/deb/usr/sbin/runc"
		        SystemdCgroup = false
		  [plugins.'io.containerd.cri.v1.runtime'.cni]
		    bin_dirs = ["/opt/cni/bin"]
		    conf_dir = "/etc/cni/net.d"
	TOML
}

# cgroup_root makes the kubelet's cgroupRoot in every hierarchy (it refuses
# a root that does not exist); a new cpuset cgroup has no CPUs or memory
# nodes until given its parent's. run.sh removes them all, deepest first.
cgroup_root() {
	local h
	for h in /sys/fs/cgroup/*/; do
		mkdir -p "$h$CGROUP_ROOT"
	done
	cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset$CGROUP_ROOT/cpuset.cpus"
	cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset$CGROUP_ROOT/cpuset.mems"
}

kubelet_up() {
	cgroup_root
	cat >"$W/kubelet.yaml" <<-YAML
		apiVersion: kubelet.config.k8s.io/v1beta1
		kind: KubeletConfiguration
		# cgroup v1 is all this machine has; Kubernetes 1.35+ refuses it unless told.
		failCgroupV1: false
		cgroupDriver: cgroupfs
		cgroupRoot: $CGROUP_ROOT
		# Never write the host's sysctls (node.sh shows the kubelet its values).
		protectKernelDefaults: true
		failSwapOn: false
		containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
		authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
		authorization: {mode: AlwaysAllow}
		nodeStatusUpdateFrequency: 4s
		evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
		imageGCHighThresholdPercent: 100
		imageGCLowThresholdPercent: 99
	YAML
	supervise kubelet "$KUBELET" --config "$W/kubelet.yaml" --kubeconfig "$W/pki/node.kubeconfig" \
		--hostname-override "$NODE" --node-ip "$NODE_IP"
	wait_for "node $NODE Ready" 180 node_ready
	# The node reports the kubelet's own version: proof of which one runs.
	local v
	v=$(kubectl get node "$NODE" -o jsonpath='{.status.nodeInfo.kubeletVersion}')
	if [ "$v" != "$K8S_KUBELET_VERSION" ]; then
		echo "k8s-e2e: node $NODE reports kubelet $v, want $K8S_KUBELET_VERSION" >&2
		return 1
	fi
	step "kubelet $v: node $NODE Ready"
}

node_ready() {
	[ "$(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

deploy() {
	kubectl apply -f "$C/manifests/networks-crd.yaml" >/dev/null
	kubectl create namespace multus-cni-ns >/dev/null
	kubectl label node "$NODE" hardwareSupport=sriov-nic >/dev/null
	wait_for "NetworkAttachmentDefinition CRD" 60 kubectl get network-attachment-definitions -A
	kubectl apply -k "$W/overlay-$PLUGIN_TAG_A"
	kubectl -n sriov-passthrough-cni rollout status ds/sriov-passthrough-cni --timeout 180s
	wait_for "default service account" 60 kubectl get serviceaccount default
	if [ "${K8S_DRA:-}" = 1 ]; then
		# The agent, a DRA kubelet plugin, publishes one device per PF in the
		# node's ResourceSlice; the scheduler serves prow/sriov from it
		# through the DeviceClass.
		wait_for "$K8S_PFS devices in the node's ResourceSlice" 60 slice_devices
		step "deployed: multus, NAD CRD, kubectl apply -k (image $PLUGIN_TAG_A, components/dra); the agent publishes $K8S_PFS PFs in a ResourceSlice"
		return
	fi
	# The agent (deploy/'s second container) advertises one prow/sriov per PF
	# through the kubelet's device-plugin API.
	wait_for "prow/sriov in allocatable" 60 allocatable
	step "deployed: multus, NAD CRD, kubectl apply -k (image $PLUGIN_TAG_A); the agent advertises prow/sriov=$K8S_PFS"
}

allocatable() {
	[ "$(kubectl get node "$NODE" -o jsonpath='{.status.allocatable.prow/sriov}')" = "$K8S_PFS" ]
}

slice_devices() {
	[ "$(kubectl get resourceslices --field-selector "spec.nodeName=$NODE,spec.driver=sriov-passthrough.kubevirt.io" \
		-o jsonpath='{range .items[*].spec.devices[*]}{.name}{"\n"}{end}' | grep -c .)" = "$K8S_PFS" ]
}

shell_hint() {
	scenario_env >"$W/env"
	echo 'PS1="k8s-e2e node# "' >>"$W/env"
	step "cluster up; enter the node from another shell with:"
	echo "  nsenter -t $(cat "$W/init.pid") -a bash --rcfile $W/env -i"
	echo "  then: kubectl get pods -A; \$SCENARIOS -test.v -test.run TestReadmeProwJobs"
}

# scenario_env prints what the scenario tests (and a person) need.
scenario_env() {
	local v
	for v in PATH KUBECONFIG W SCENARIOS REPO BUSYBOX_IMAGE PLUGIN_TAG_A PLUGIN_TAG_B K8S_DRA; do
		printf 'export %s=%q\n' "$v" "${!v}"
	done
	printf 'export K8S_E2E_NODE=%q K8S_E2E_WORK=%q K8S_E2E_DEVICES=%q\n' "$NODE" "$W" "$W/devices"
}

scenarios() {
	step "scenarios"
	(
		eval "$(scenario_env)"
		# Shuffled: no scenario may depend on what an earlier one left. go
		# test prints the seed first; K8S_E2E_SHUFFLE=SEED replays an order.
		"$SCENARIOS" -test.v -test.count=1 -test.timeout 20m -test.shuffle="${K8S_E2E_SHUFFLE:-on}" \
			${K8S_E2E_RUN:+"-test.run=$K8S_E2E_RUN"}
	)
}

main() {
	private_mounts
	node_network
	fake_pfs
	step "node: private mounts, netns with $K8S_PFS fake PFs x $K8S_VFS VFs"
	pki
	control_plane
	containerd_up
	kubelet_up
	deploy
	if [ "${K8S_E2E_FAIL_AFTER:-}" = deploy ]; then
		echo "k8s-e2e: failing after deploy on purpose (K8S_E2E_FAIL_AFTER)" >&2
		exit 1
	fi
	if [ "${K8S_E2E_SHELL:-}" = 1 ]; then
		shell_hint
		sleep infinity
	fi
	scenarios
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
