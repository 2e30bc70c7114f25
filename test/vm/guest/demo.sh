#!/bin/sh
# make demo, inside the VM: a PF and its 7 VFs go into a pod's netns with
# cnitool and come back on DEL. Uses the repository's own plugin/*.conf.
set -u
export CNI_PATH=/opt/sriovpt NETCONFPATH=/etc/cni/net.d
NET=sriov-passthrough-cni
POD=demo-pod
# iproute2's ip: busybox sh would run its own, smaller ip applet.
IP=/usr/bin/ip
PODNS=/var/run/netns/$POD

say() { printf '\n==> %s\n' "$*"; }
cmd() {
	printf '$ %s\n' "$*"
	"$@"
}

# plugin_log: the plugin's stderr (slog) without the fields that repeat.
plugin_log() {
	sed -e 's/^time=[^ ]* level=\([A-Z]*\) /  plugin \1 /' \
		-e 's/ \(plugin\|cmd\|container\|ifname\|pod\|releasing\|owner\)=\("[^"]*"\|[^ ]*\)//g' \
		-e 's/msg="\([^"]*\)"/\1:/' "$1"
}
fail() {
	printf '\nDEMO FAILED: %s\n' "$*"
	exit 1
}

pf_pcis() {
	for f in /sys/bus/pci/devices/*/sriov_totalvfs; do
		[ "$(cat "$f")" -gt 0 ] && basename "$(dirname "$f")"
	done
}

# netdev_of PCI: the netdev's name if it is in this netns's sysfs view.
netdev_of() {
	for n in "/sys/bus/pci/devices/$1/net/"*; do
		[ -e "$n" ] && basename "$n"
	done
}

row() { printf '  %-4s %-3s %-8s %-13s %-18s %s\n' "$@"; }

# host_table: every PF and VF by PCI address, with its netdev if the host
# netns has it. PCI devices are not per-netns; netdevs are.
host_table() {
	row ROLE IDX NETDEV PCI MAC NOTE
	for pf in $(pf_pcis); do
		n=$(netdev_of "$pf")
		if [ -n "$n" ]; then
			row PF - "$n" "$pf" "$(cat "/sys/class/net/$n/address")" "$(cat "/sys/bus/pci/devices/$pf/sriov_numvfs") of $(cat "/sys/bus/pci/devices/$pf/sriov_totalvfs") VFs"
		else
			row PF - "-" "$pf" "-" "not in the host netns"
		fi
		i=0
		while [ -e "/sys/bus/pci/devices/$pf/virtfn$i" ]; do
			vf=$(basename "$(readlink "/sys/bus/pci/devices/$pf/virtfn$i")")
			n=$(netdev_of "$vf")
			if [ -n "$n" ]; then
				row VF "$i" "$n" "$vf" "$(cat "/sys/class/net/$n/address")" ""
			else
				row VF "$i" "-" "$vf" "-" "not in the host netns"
			fi
			i=$((i + 1))
		done
	done
}

# pod_table: the pod's own view (ip netns exec mounts its sysfs).
pod_table() {
	# shellcheck disable=SC2016 # expanded by the shell in the pod's view
	"$IP" netns exec "$POD" sh -c '
		# ADMIN is what the plugin sets (IFF_UP in flags); LINK is the
		# carrier, which the emulated NIC raises a moment after.
		admin() { if [ $(($(cat "$1/flags") & 1)) = 1 ]; then echo up; else echo down; fi; }
		printf "  %-8s %-13s %-18s %-5s %-5s %s\n" NETDEV PCI MAC ADMIN LINK NOTE
		for d in /sys/class/net/*; do
			# (bonding_masters, a file the bonding module adds, is no netdev)
			[ -d "$d" ] || continue
			n=${d##*/}
			[ -e "$d/device" ] || { printf "  %-8s %-13s %-18s %-5s %-5s %s\n" "$n" - "$(cat $d/address)" "$(admin $d)" "$(cat $d/operstate)" "virtual"; continue; }
			pci=$(basename "$(readlink "$d/device")")
			note=""
			[ -e "$d/device/sriov_totalvfs" ] && note="PF, sriov_totalvfs=$(cat "$d/device/sriov_totalvfs")"
			[ -e "$d/device/physfn" ] && note="VF of $(basename "$(readlink "$d/device/physfn")")"
			printf "  %-8s %-13s %-18s %-5s %-5s %s\n" "$n" "$pci" "$(cat $d/address)" "$(admin $d)" "$(cat $d/operstate)" "$note"
		done'
}

say "Enabling SR-IOV: 7 VFs on each emulated Intel 82576 (igb) PF"
for pf in $(pf_pcis); do
	echo 7 >"/sys/bus/pci/devices/$pf/sriov_numvfs" || fail "enable VFs on $pf"
done
i=0
while [ "$(find /sys/class/net -mindepth 1 -maxdepth 1 | wc -l)" -lt 25 ]; do
	i=$((i + 1))
	[ "$i" -lt 300 ] || fail "VF netdevs did not appear"
	sleep 0.1
done

say "Host before: the PFs and VFs the node has"
host_table | tee /tmp/host-before

say "The network config (plugin/90-sriov-passthrough-cni.conf from the repository)"
cat /etc/cni/net.d/*.conf

say "A pod: a fresh network namespace"
cmd "$IP" netns add "$POD" || fail "ip netns add"

say "ADD: hand the pod a PF and all its VFs"
printf '$ cnitool add %s %s -i net1\n' "$NET" "$PODNS"
ok=0
cnitool add "$NET" "$PODNS" -i net1 >/tmp/result.json 2>/tmp/add.err || ok=$?
plugin_log /tmp/add.err
[ "$ok" = 0 ] || fail "cnitool add"
say "The CNI result (cnitool's stdout)"
cat /tmp/result.json

say "What the pod sees (its own sysfs, through ip netns exec $POD)"
pod_table

say "Host after ADD: the PF and its VFs are gone from the host netns"
host_table

# The job's own work, as a KubeVirt SR-IOV lane does it: the PF moves on
# into a kind node's netns, the VFs are re-created, two are bound to
# vfio-pci for the VMs under test; at the end the cluster goes down and
# the PF comes back to the pod's netns.
KIND=demo-kind-node
PF_PCI=
for pf in $(pf_pcis); do
	[ -z "$(netdev_of "$pf")" ] && PF_PCI=$pf
done
[ -n "$PF_PCI" ] || fail "no PF left the host netns"
say "Inside the job: net1 moves on into a kind node's netns, the VFs are re-created, two go to vfio-pci"
cmd "$IP" netns add "$KIND" || fail "ip netns add $KIND"
cmd "$IP" -n "$POD" link set net1 netns "$KIND" || fail "move net1 into the kind node"
for n in 0 6; do
	cmd sh -c "echo $n > /sys/bus/pci/devices/$PF_PCI/sriov_numvfs" || fail "sriov_numvfs=$n"
done
for i in 0 1; do
	j=0
	while [ ! -e "/sys/bus/pci/devices/$PF_PCI/virtfn$i" ]; do
		j=$((j + 1))
		[ "$j" -lt 200 ] || fail "VF $i of $PF_PCI not re-created"
		sleep 0.1
	done
	vf=$(basename "$(readlink "/sys/bus/pci/devices/$PF_PCI/virtfn$i")")
	echo vfio-pci >"/sys/bus/pci/devices/$vf/driver_override" || fail "driver_override $vf"
	[ -e "/sys/bus/pci/devices/$vf/driver" ] && echo "$vf" >"/sys/bus/pci/devices/$vf/driver/unbind"
	echo "$vf" >/sys/bus/pci/drivers_probe
	printf '$ # VF %s (%s) -> %s\n' "$i" "$vf" "$(basename "$(readlink "/sys/bus/pci/devices/$vf/driver")")"
done
say "The node meanwhile: $(cat "/sys/bus/pci/devices/$PF_PCI/sriov_numvfs") new VFs, two on vfio-pci, the rest with fresh netdevs"
host_table
say "The job ends with cluster-down: the kind node's netns goes, net1 is back in the pod"
cmd "$IP" -n "$KIND" link set net1 netns "$POD" || fail "move net1 back to the pod"
cmd "$IP" netns delete "$KIND"

say "DEL: give everything back"
printf '$ cnitool del %s %s -i net1\n' "$NET" "$PODNS"
ok=0
cnitool del "$NET" "$PODNS" -i net1 2>/tmp/del.err || ok=$?
plugin_log /tmp/del.err
[ "$ok" = 0 ] || fail "cnitool del"

say "What the pod sees now"
pod_table

say "Host after DEL"
host_table | tee /tmp/host-after

"$IP" netns delete "$POD"
if cmp -s /tmp/host-before /tmp/host-after; then
	say "Host restored: every PF and VF is back under its original name and MAC"
else
	diff /tmp/host-before /tmp/host-after
	fail "the host differs from before ADD"
fi
