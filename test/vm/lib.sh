# shellcheck shell=bash
# Functions for run.sh: host packages, kernels, binaries, initramfs, QEMU.
# Globals set by run.sh: here, repo, work.
# shellcheck disable=SC2154

cache=${SRIOVPT_VM_CACHE:-/var/cache/sriov-passthrough-cni-vm}
vm_timeout=${SRIOVPT_VM_TIMEOUT:-1500}
# A guest that has not found its SR-IOV PFs by then is stuck in boot (6.1
# under TCG sometimes stalls in a module's init with RCU warnings, before
# any test runs): it is stopped and booted once more.
boot_timeout=${SRIOVPT_VM_BOOT_TIMEOUT:-240}
backports_sources=/etc/apt/sources.list.d/sriov-passthrough-cni-backports.sources
module_path=github.com/kubevirt/sriov-passthrough-cni/test/e2e
apt_updated=
# Bump when ensure_kernel packs something else, so caches are rebuilt.
kernel_recipe=5
declare -A kernel_dir=()

log() { printf '[vm] %s\n' "$*"; }
die() {
	log "error: $*"
	exit 1
}

# step NAME CMD...: run CMD and say how long it took.
step() {
	local name=$1 t=$SECONDS
	shift
	"$@"
	log "$name: ok ($((SECONDS - t))s)"
}

# quietly CMD...: run CMD with its output kept aside; show it only on failure.
quietly() {
	local out=$work/quietly.log
	if ! "$@" >"$out" 2>&1; then
		cat "$out"
		die "failed: $*"
	fi
}

apt_env=(env DEBIAN_FRONTEND=noninteractive)
apt_opts=(-q -y -o DPkg::Lock::Timeout=300 -o APT::Get::Show-Versions=0)

apt_update() {
	[[ -z $apt_updated ]] || return 0
	log "apt-get update"
	# One retry: a mirror mid-sync can fail one update.
	"${apt_env[@]}" apt-get "${apt_opts[@]}" update >"$work/apt-update.log" 2>&1 ||
		{ sleep 5 && quietly "${apt_env[@]}" apt-get "${apt_opts[@]}" update; }
	apt_updated=1
}

qemu_has_igb() {
	command -v qemu-system-x86_64 >/dev/null &&
		qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"'
}

pkg_installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'
}

# The mirror this machine already uses for bookworm, from deb822 sources or a
# one-line sources.list: the backports suite lives on the same mirror.
# Prints "URI [SIGNED-BY]".
debian_mirror_uri() {
	local f
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] || continue
		awk '
			function flush() {
				if (uri != "" && suites ~ /(^| )bookworm( |$)/ && enabled != "no") { print uri, key; found = 1; exit }
				uri = ""; suites = ""; key = ""; enabled = ""
			}
			/^[[:space:]]*$/ { flush(); next }
			/^URIs:/ { uri = $2 }
			/^Signed-By:/ { key = $2 }
			/^Enabled:/ { enabled = $2 }
			/^Suites:/ { suites = $0; sub(/^Suites:[[:space:]]*/, "", suites) }
			END { if (!found) flush() }
		' "$f"
	done | head -n1 | grep . && return 0
	cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
		awk '$1 == "deb" && $0 ~ / bookworm( |$)/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' |
		head -n1 | grep .
}

backports_configured() {
	grep -Eqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources
}

ensure_backports_source() {
	backports_configured && return 0
	local uri key
	read -r uri key < <(debian_mirror_uri) ||
		die "no bookworm entry in the apt sources to derive bookworm-backports from"
	log "adding bookworm-backports on the configured mirror ($backports_sources)"
	cat >"$backports_sources" <<EOF
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: ${key:-/usr/share/keyrings/debian-archive-keyring.gpg}
EOF
	apt_updated=
}

# apt_field PKG/SUITE FIELD: one field of the package's record in that suite.
# apt-cache show prints deb822 records; --no-all-versions keeps the one apt
# picks from the suite. Fails when the suite does not have the package.
apt_field() {
	apt-cache "${kapt[@]}" show --no-all-versions "$1" 2>/dev/null |
		awk -v f="$2: " 'index($0, f) == 1 { print substr($0, length(f) + 1); exit }' | grep .
}

# apt's lists must know bookworm-backports before we ask it for versions.
ensure_apt_lists() {
	ensure_backports_source
	apt_field linux-image-amd64/bookworm-backports Version >/dev/null || apt_update
}

ensure_host_packages() {
	local want=()
	pkg_installed busybox-static || want+=(busybox-static)
	command -v cpio >/dev/null || want+=(cpio)
	command -v xz >/dev/null || want+=(xz-utils)
	command -v ip >/dev/null || want+=(iproute2)
	# bench counts the plugin's syscalls and netlink round trips in the VM.
	[[ ${mode:-} != bench ]] || command -v strace >/dev/null || want+=(strace)
	if ((${#want[@]} == 0)) && qemu_has_igb; then
		return 0
	fi
	ensure_apt_lists
	apt_update
	if ((${#want[@]})); then
		log "installing ${want[*]}"
		quietly "${apt_env[@]}" apt-get "${apt_opts[@]}" install --no-install-recommends "${want[@]}"
	fi
	if ! qemu_has_igb; then
		log "installing qemu-system-x86 from bookworm-backports"
		quietly "${apt_env[@]}" apt-get "${apt_opts[@]}" install --no-install-recommends \
			-t bookworm-backports qemu-system-x86
		qemu_has_igb || die "qemu-system-x86_64 has no igb device"
	fi
}

# kernel_suites LABEL: the suites a kernel label comes from.
kernel_suites() {
	case "$1" in
	5.10) echo "bullseye" ;;
	6.1) echo "bookworm bookworm-security bookworm-updates" ;;
	6.12) echo "bookworm-backports" ;;
	*) die "unknown kernel $1 (want 5.10, 6.1 or 6.12)" ;;
	esac
}

# Debian 11 (bullseye) is a suite this bookworm host does not use: apt reads
# it through a sources file and lists of our own under the cache, so the
# host's apt never sees it. bullseye lives on the same mirror as bookworm.
oldstable_dir=$cache/apt-bullseye
oldstable_apt=()
oldstable_updated=

ensure_oldstable_source() {
	((${#oldstable_apt[@]} == 0)) || return 0
	local uri key
	read -r uri key < <(debian_mirror_uri) ||
		die "no bookworm entry in the apt sources to derive bullseye from"
	mkdir -p "$oldstable_dir/lists/partial" "$oldstable_dir/cache" "$oldstable_dir/parts"
	echo "deb [signed-by=${key:-/usr/share/keyrings/debian-archive-keyring.gpg}] $uri bullseye main" \
		>"$oldstable_dir/sources.list"
	oldstable_apt=(
		-o "Dir::Etc::SourceList=$oldstable_dir/sources.list"
		-o "Dir::Etc::SourceParts=$oldstable_dir/parts"
		-o "Dir::State::Lists=$oldstable_dir/lists"
		-o "Dir::Cache=$oldstable_dir/cache"
	)
}

# kapt holds the apt options for the kernel being resolved: none for the
# host's own suites, the private lists for bullseye.
kapt=()

# kernel_apt LABEL: make apt able to answer for LABEL's suites; sets kapt.
kernel_apt() {
	case "$1" in
	5.10)
		ensure_oldstable_source
		kapt=("${oldstable_apt[@]}")
		;;
	*)
		kapt=()
		ensure_apt_lists
		;;
	esac
}

# kernel_apt_update: refresh the lists kapt reads, at most once per run.
kernel_apt_update() {
	if ((${#kapt[@]} == 0)); then
		apt_update
		return
	fi
	[[ -z $oldstable_updated ]] || return 0
	log "apt-get update (bullseye, lists under $oldstable_dir)"
	"${apt_env[@]}" apt-get "${apt_opts[@]}" "${kapt[@]}" update >"$work/apt-update-bullseye.log" 2>&1 ||
		{ sleep 5 && quietly "${apt_env[@]}" apt-get "${apt_opts[@]}" "${kapt[@]}" update; }
	oldstable_updated=1
}

# kernel_lists_fresh: whether kernel_apt_update has run for kapt.
kernel_lists_fresh() {
	if ((${#kapt[@]} == 0)); then
		[[ -n $apt_updated ]]
	else
		[[ -n $oldstable_updated ]]
	fi
}

# resolve_kernel SUITE...: print "PACKAGE VERSION" of the versioned image
# package that linux-image-amd64 depends on, from the suite with the highest
# linux-image-amd64.
resolve_kernel() {
	local s v best="" best_ver="" dep
	for s in "$@"; do
		v=$(apt_field "linux-image-amd64/$s" Version) || continue
		if [[ -z $best_ver ]] || dpkg --compare-versions "$v" gt "$best_ver"; then
			best=$s best_ver=$v
		fi
	done
	[[ -n $best ]] || return 1
	dep=$(apt_field "linux-image-amd64/$best" Depends) || return 1
	# The meta package's first dependency is its image: "linux-image-X (= V)".
	local re='^(linux-image-[^ ,]+) \(= ([^)]+)\)'
	[[ $dep =~ $re ]] || return 1
	echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
}

# ensure_kernel LABEL: vmlinuz and the igb/igbvf modules (plain .ko, with
# their dependencies, in load order) under $cache/kernels/LABEL/PKG_VERSION_rN;
# sets kernel_dir[LABEL].
ensure_kernel() {
	local label=$1 suites pkg ver dir deb
	local dl=$work/deb-$label
	suites=$(kernel_suites "$label") || exit 1
	kernel_apt "$label"
	# At most twice: the lists are refreshed only once per run.
	while :; do
		# shellcheck disable=SC2086 # suites is a word list
		if ! read -r pkg ver < <(resolve_kernel $suites); then
			kernel_apt_update
			# shellcheck disable=SC2086
			read -r pkg ver < <(resolve_kernel $suites) || {
				use_cached_kernel "$label"
				return
			}
		fi
		dir=$cache/kernels/$label/${pkg}_${ver}_r$kernel_recipe
		kernel_dir[$label]=$dir
		if [[ -f $dir/.complete ]]; then
			log "linux $label: $pkg $ver (cached)"
			return 0
		fi
		log "linux $label: downloading $pkg $ver"
		rm -rf "$dl"
		mkdir -p "$dl"
		(cd "$dl" && apt-get -q "${kapt[@]}" download "$pkg=$ver" >"$work/download.log" 2>&1) && break
		if kernel_lists_fresh; then
			cat "$work/download.log"
			die "linux $label: apt-get download $pkg=$ver failed"
		fi
		# Old lists can name a version the mirror has since dropped.
		log "linux $label: download failed; refreshing apt's lists"
		kernel_apt_update
	done
	deb=$(find "$dl" -name '*.deb' | head -n1)
	unpack_kernel "$label" "$deb" "$dir"
	rm -rf "$dl"
}

# use_cached_kernel LABEL: when apt cannot name a kernel, the newest complete
# one in the cache.
use_cached_kernel() {
	local label=$1 dir
	dir=$(find "$cache/kernels/$label" -mindepth 2 -maxdepth 2 -name .complete -printf '%h\n' 2>/dev/null | sort -V | tail -n1)
	[[ -n $dir ]] || die "cannot resolve the linux-image package for $label"
	log "apt cannot resolve linux $label; using cached $(basename "$dir")"
	kernel_dir[$label]=$dir
}

# unpack_kernel LABEL DEB DIR: vmlinuz, the release name and the modules the
# VM loads, from the image package DEB into DIR, keeping no other version.
unpack_kernel() {
	local label=$1 deb=$2 dir=$3 x=$work/kx-$1 tmp=$3.tmp
	[[ -f $deb ]] || die "linux $label: apt-get download gave no .deb"
	rm -rf "$x" "$tmp"
	mkdir -p "$x" "$tmp/modules"
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$x" --wildcards \
		'*/vmlinuz-*' '*/kernel/drivers/net/ethernet/intel/*' '*/kernel/drivers/dma/*' '*/kernel/drivers/dca/*' \
		'*/kernel/drivers/i2c/*' '*/kernel/drivers/ptp/*' '*/kernel/drivers/pps/*' \
		'*/kernel/drivers/hwmon/*' '*/kernel/lib/*' '*/kernel/drivers/net/veth.ko*' \
		'*/kernel/drivers/vfio/*' '*/kernel/virt/*' \
		'*/kernel/net/*' \
		'*/kernel/drivers/net/macvlan.ko*' '*/kernel/drivers/net/bonding/*'
	cp "$(find "$x" -name 'vmlinuz-*' | head -n1)" "$tmp/vmlinuz"
	basename "$(find "$x" -type d -path '*/lib/modules/*' -prune -print -quit)" >"$tmp/release"
	# veth: the e2e suite makes name clashes in pods with veth. A kind-sriov
	# job binds VFs to vfio-pci; vfio_iommu_type1 is the container backend,
	# requested at run time rather than a dependency; 6.1 also needs
	# vfio_virqfd, which 6.12 folded into vfio (a dependency, found below).
	# The uplink tests stack a VLAN, a macvlan and a bond on a real PF.
	copy_modules "$x" "$tmp/modules" igb igbvf veth vfio_iommu_type1 vfio-pci 8021q macvlan bonding
	# guest/init loads each line's module with the rest of the line as its
	# parameters: bonding makes a bond0 of its own unless max_bonds=0.
	# QEMU's VT-d runs without interrupt remapping here (intremap=off), and
	# the type1 IOMMU backend refuses a VM monitor (VFIO_SET_IOMMU: EPERM)
	# without it unless told to trust MSIs, as on such hosts.
	sed -i -e 's/^bonding$/bonding max_bonds=0/' \
		-e 's/^vfio_iommu_type1$/vfio_iommu_type1 allow_unsafe_interrupts=1/' "$tmp/modules/order"
	touch "$tmp/.complete"
	rm -rf "$dir"
	mv "$tmp" "$dir"
	find "$cache/kernels/$label" -mindepth 1 -maxdepth 1 -type d ! -path "$dir" -exec rm -rf {} +
	rm -rf "$x"
	log "linux $label: $(cat "$dir/release") modules: $(tr '\n' ' ' <"$dir/modules/order")"
}

# copy_modules SRC DEST NAME...: the modules NAME and what they depend on,
# found under SRC (plain or .xz), as plain DEST/NAME.ko, and DEST/order: one
# name per line, every module after its dependencies (the order to load them).
copy_modules() {
	local src=$1 dest=$2
	shift 2
	local todo=("$@") order=() name dep missing
	while ((${#todo[@]})); do
		name=${todo[0]}
		if [[ " ${order[*]} " == *" $name "* ]]; then
			todo=("${todo[@]:1}")
			continue
		fi
		[[ -f $dest/$name.ko ]] || extract_module "$src" "$name" "$dest/$name.ko"
		missing=()
		for dep in $(module_depends "$dest/$name.ko"); do
			[[ " ${order[*]} " == *" $dep "* ]] || missing+=("$dep")
		done
		if ((${#missing[@]})); then
			# Its dependencies first; module dependencies have no cycles.
			todo=("${missing[@]}" "${todo[@]}")
		else
			order+=("$name")
			todo=("${todo[@]:1}")
		fi
	done
	printf '%s\n' "${order[@]}" >"$dest/order"
}

# extract_module SRC NAME OUT: module NAME (a "-" and a "_" match each other,
# as in module names) found under SRC, decompressed to OUT.
extract_module() {
	local src=$1 name=$2 out=$3 f
	f=$(find "$src" -regextype posix-extended -regex ".*/${name//[-_]/[-_]}\\.ko(\\.xz)?" | head -n1)
	[[ -n $f ]] || die "module $name not found in $src"
	if [[ $f == *.xz ]]; then
		xz -dc "$f" >"$out"
	else
		cp "$f" "$out"
	fi
}

# module_depends KO: the module names in KO's modinfo "depends=" entry (the
# .modinfo section is NUL-separated key=value strings).
module_depends() {
	tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | tr ',' ' '
}

# build_binaries MODE: static plugin, cnitool and (for e2e) the test binary,
# then the base initramfs that every VM of this run shares.
build_binaries() {
	local mode=$1 out=$work/root/opt/sriovpt
	mkdir -p "$out"
	if [[ -n ${SRIOVPT_VM_PLUGIN:-} ]]; then
		cp "$SRIOVPT_VM_PLUGIN" "$out/sriov-passthrough-cni"
	else
		(cd "$repo" && quietly make build)
		cp "$repo/bin/sriov-passthrough-cni" "$out/"
	fi
	local cniver
	cniver=$(cd "$repo" && go list -m -f '{{.Version}}' github.com/containernetworking/cni)
	(cd "$repo" && GOBIN="$work/gobin" CGO_ENABLED=0 quietly go install -trimpath -ldflags '-s -w' \
		"github.com/containernetworking/cni/cnitool@$cniver")
	cp "$work/gobin/cnitool" "$out/"
	if [[ $mode == e2e || $mode == bench ]]; then
		(cd "$repo" && CGO_ENABLED=0 quietly go test -c -trimpath -tags e2e -o "$out/e2e.test" ./test/e2e)
	fi
	if [[ $mode == e2e ]]; then
		# The IPAM test delegates to host-local, a tool of the root module
		# (go.mod), as it is for test/integration.
		(cd "$repo" && CGO_ENABLED=0 quietly go build -trimpath -ldflags '-s -w' -o "$out/host-local" \
			github.com/containernetworking/plugins/plugins/ipam/host-local)
		# The crash tests kill this build at named steps (pkg/failpoint).
		(cd "$repo" && CGO_ENABLED=0 quietly go build -trimpath -tags failpoints \
			-o "$out/failpoints/sriov-passthrough-cni" ./cmd/sriov-passthrough-cni)
	fi
	if [[ $mode == bench ]]; then
		# The floor exec'd like a plugin (test/e2e/floorcni), or BENCH_FLOOR.
		if [[ -n ${BENCH_FLOOR:-} ]]; then
			cp "$BENCH_FLOOR" "$out/floor"
		else
			(cd "$repo" && CGO_ENABLED=0 quietly go build -trimpath -ldflags '-s -w' -o "$out/floor" ./test/e2e/floorcni)
		fi
		if [[ -n ${BENCH_PLUGIN_BASE:-} ]]; then
			cp "$BENCH_PLUGIN_BASE" "$out/plugin-base"
		fi
	fi
	cp "$here/guest/"*.sh "$out/"
	build_base_initramfs
}

# copy_with_libs BIN DEST: a dynamic host binary and the libraries ldd lists.
copy_with_libs() {
	local bin=$1 root=$2 lib
	install -D -m 0755 "$bin" "$root/usr/bin/$(basename "$bin")"
	for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
		[[ -e $root$lib ]] || install -D -m 0755 "$lib" "$root$lib"
	done
}

build_base_initramfs() {
	local root=$work/root a
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc,var/lib,lib/modules,root}
	ln -sfn ../run "$root/var/run"
	cp /bin/busybox "$root/bin/busybox"
	for a in $("$root/bin/busybox" --list); do
		[[ -e $root/bin/$a ]] || ln -s busybox "$root/bin/$a"
	done
	rm -f "$root/bin/ip"
	copy_with_libs "$(command -v ip)" "$root"
	if [[ ${mode:-} == bench ]]; then
		copy_with_libs "$(command -v strace)" "$root"
	fi
	install -m 0755 "$here/guest/init" "$root/init"
	mkdir -p "$root/etc/cni/net.d"
	cp "$repo"/plugin/*.conf "$root/etc/cni/net.d/"
	echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
	(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) >"$work/base.cpio"
}

# guest_conf MODE LABEL RUN SKIP: shell assignments the guest's init sources.
guest_conf() {
	local q="'\\''" run=$3 skip=$4
	printf "SRIOVPT_MODE='%s'\n" "$1"
	printf "SRIOVPT_KERNEL='%s'\n" "$2"
	printf "SRIOVPT_NICS=3\n"
	printf "E2E_RUN='%s'\n" "${run//\'/$q}"
	printf "E2E_SKIP='%s'\n" "${skip//\'/$q}"
	printf "E2E_TIMEOUT='%s'\n" "$((vm_timeout - 30))s"
	printf "BENCH_ROUNDS='%s'\n" "${BENCH_ROUNDS:-10}"
	local v
	for v in E2E_CHAOS_SEED E2E_CHAOS_ROUNDS E2E_JOBS_SEED; do
		[[ -z ${!v:-} ]] || printf "%s='%s'\n" "$v" "${!v//[^0-9]/}"
	done
}

# run_vm MODE LABEL [SHARD]: boot the VM, stream its console, return its
# result. SHARD splits the e2e suite: "main" is all but the two long
# tests, "chaos" and "jobs" are one each; none runs E2E_RUN/E2E_SKIP as given. The go-test-like
# summary goes to $work/summary-JOB for run.sh to print.
# boot_vm JOB CONSOLE MODE TAG QEMU-ARGS... runs one QEMU to its end, its
# console in CONSOLE, its exit code in $work/qemu-JOB.rc. A watchdog stops
# a guest stuck in boot and leaves CONSOLE.stuck behind.
boot_vm() {
	local job=$1 console=$2 mode=$3 tag=$4
	shift 4
	# e2e: every console line, labelled with the kernel. demo, bench: from
	# the guest's first line on, as it is (the firmware's chatter is noise).
	local show=(sed -u "s|^|$tag\| |")
	if [[ $mode != e2e ]]; then
		show=(awk '/guest: / { on = 1 } on { print; fflush() }')
	fi
	# In the background, so that a signal to us runs cleanup (which stops
	# QEMU through its pid file) at once instead of after the pipeline.
	local pidfile=$work/qemu-$job.pid rcfile=$work/qemu-$job.rc
	rm -f "$rcfile" "$pidfile" "$console"
	{
		timeout -k 10 "$vm_timeout" qemu-system-x86_64 "$@" </dev/null &
		echo $! >"$pidfile"
		wait $!
		echo $? >"$rcfile"
	} 2>&1 |
		sed -u -e 's/\r//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' |
		tee "$console" | "${show[@]}" &
	local pipeline=$!
	watch_boot "$console" "$pidfile" "$rcfile" &
	local watchdog=$!
	wait "$pipeline" || true
	kill "$watchdog" 2>/dev/null || true
	wait "$watchdog" 2>/dev/null || true
	rm -f "$pidfile"
}

# booted CONSOLE: the guest got as far as reporting its PFs. QEMU 10's
# emulated VT-d under TCG sometimes aborts during boot
# (iotlb_to_section assertion) before that.
booted() {
	grep -aqE 'guest: ([0-9]+ SR-IOV PFs up|only [0-9]+ of)' "$1" 2>/dev/null
}

# watch_boot CONSOLE PIDFILE RCFILE stops QEMU when the guest has not said
# how many PFs it found within boot_timeout seconds.
watch_boot() {
	local console=$1 pidfile=$2 rcfile=$3 waited=0
	while ((waited < boot_timeout)); do
		sleep 2
		waited=$((waited + 2))
		[[ -e $rcfile ]] && return 0
		booted "$console" && return 0
	done
	[[ -s $pidfile ]] || return 0
	touch "$console.stuck"
	kill "$(cat "$pidfile")" 2>/dev/null || true
}

run_vm() {
	local mode=$1 label=$2 shard=${3:-} dir=${kernel_dir[$2]}
	local job=$2${3:+-$3} tag=linux-$2${3:+/$3}
	local kroot=$work/kroot-$job initrd=$work/initrd-$job.cpio console=$work/console-$job.log
	local run=${E2E_RUN:-} skip=${E2E_SKIP:-}
	case "$shard" in
	main) run="" skip='Chaos|JobsInARow' ;;
	chaos) run=Chaos skip="" ;;
	jobs) run=JobsInARow skip="" ;;
	esac
	rm -rf "$kroot"
	mkdir -p "$kroot/lib/modules" "$kroot/etc"
	cp "$dir/modules/"* "$kroot/lib/modules/"
	guest_conf "$mode" "$label" "$run" "$skip" >"$kroot/etc/sriovpt-vm.conf"
	(cd "$kroot" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) |
		cat "$work/base.cpio" - >"$initrd"

	local smp=${SRIOVPT_VM_SMP:-$(nproc)}
	((smp > 4)) && smp=4
	# vfio-pci needs an IOMMU group per VF: QEMU's emulated VT-d gives them
	# under TCG (interrupt remapping off, it would need a split irqchip).
	# shellcheck disable=SC2054 # commas are QEMU's
	local args=(
		-machine q35 -accel tcg,thread=multi -cpu max -smp "$smp" -m 1024
		-nographic -no-reboot -no-user-config
		-kernel "$dir/vmlinuz" -initrd "$initrd"
		-append "console=ttyS0 net.ifnames=0 panic=-1 quiet loglevel=4 intel_iommu=on iommu=pt"
		-device intel-iommu,intremap=off
	)
	local i
	for i in 0 1 2; do
		args+=(
			-device "pcie-root-port,id=rp$i,slot=$i,chassis=$((i + 1))"
			-device "igb,bus=rp$i,netdev=n$i,romfile=,mac=52:54:00:5a:00:0$i"
			-netdev "user,id=n$i,restrict=on"
		)
	done

	log "=== linux $label ($(cat "$dir/release")): $mode${shard:+ ($shard)} ==="
	local t=$SECONDS rc=0 run qrc result crash first_crash=
	# A run that crashed after boot (QEMU aborted, the guest kernel
	# panicked) ended before its tests could pass or fail: it runs once
	# more, and the summary says so. A failed test, a hang to the timeout
	# or a second crash is the verdict.
	for run in 1 2; do
		boot_until_up "$job" "$console" "$mode" "$tag" "${args[@]}"
		qrc=$(cat "$work/qemu-$job.rc" 2>/dev/null || echo 255)
		result=$(grep -a -o 'SRIOVPT-VM-RESULT rc=[0-9]*' "$console" | tail -n1 | cut -d= -f2) || true
		crash=$(crash_line "$console")
		if [[ -n $result || $qrc == 124 || -z $crash || $run == 2 || -e $work/stopping ]] || ! booted "$console"; then
			break
		fi
		first_crash=$crash
		log "$tag: the VM crashed mid-run (QEMU or the guest kernel died, no test had failed): $crash; running it once more"
	done
	local secs=$((SECONDS - t))
	if ((qrc == 124)); then
		log "$tag: VM timed out after ${vm_timeout}s"
		rc=1
	elif [[ -z $result ]]; then
		log "$tag: VM ended (qemu exit $qrc) without a result line${crash:+: $crash}"
		rc=1
	elif ((result != 0)); then
		rc=1
	fi

	{
		local name="linux $label${shard:+ ($shard)}"
		[[ -z $first_crash ]] || echo "# $name: the first VM crashed ($first_crash); the result is its rerun's"
		if [[ -z $result ]]; then
			# Its lines are scattered among the other VMs' above: the end
			# of its console is what says why.
			echo "# $name: the last lines of its console"
			tail -n 25 "$console" | sed "s|^|$tag\| |"
		fi
		if [[ $mode == e2e ]]; then
			grep -a -E '^\s*--- (FAIL|SKIP)' "$console" || true
			if ((rc == 0)); then
				printf 'ok  \t%s (linux %s%s)\t%ss\n' "$module_path" "$label" "${shard:+, $shard}" "$secs"
			else
				printf 'FAIL\t%s (linux %s%s)\t%ss\n' "$module_path" "$label" "${shard:+, $shard}" "$secs"
			fi
		else
			[[ $mode != bench ]] || grep -a '^bench' "$console" || true
			log "linux $label: $mode $([[ $rc == 0 ]] && echo ok || echo FAILED) (${secs}s)"
		fi
	} >"$work/summary-$job"
	return "$rc"
}

# boot_until_up JOB CONSOLE MODE TAG QEMU-ARGS...: boot_vm, and once more if
# the guest never found its PFs (stuck, or QEMU ended first).
boot_until_up() {
	local console=$2 tag=$4 boot
	for boot in 1 2; do
		boot_vm "$@"
		booted "$console" || [[ -e $work/stopping ]] && return 0
		if [[ -e $console.stuck ]]; then
			log "$tag: the guest did not find its PFs within ${boot_timeout}s of starting (stuck in boot)$( ((boot == 1)) && echo '; booting it once more')"
		else
			log "$tag: QEMU ended before the guest found its PFs$( ((boot == 1)) && echo '; booting it once more')"
		fi
		rm -f "$console.stuck"
	done
}

# crash_line CONSOLE prints the first line that shows QEMU or the guest
# kernel died, if any: QEMU 10's VT-d under multi-threaded TCG sometimes
# fails an assertion (iotlb_to_section), and a guest kernel sometimes oopses
# on a torn int3 patch (text_poke) and panics.
crash_line() {
	grep -a -m1 -E 'qemu-system-x86_64: .*[Aa]ssertion|Kernel panic - not syncing' "$1" |
		sed -E 's/^.*(qemu-system-x86_64: |Kernel panic)/\1/' || true
}
