#!/usr/bin/env bash
# Builds everything the nested-KVM lab needs and prints the directory holding it on stdout:
#   DIR/vmlinuz          the L1 kernel (Debian 12 stock, run by QEMU TCG)
#   DIR/l1.cpio.gz       the L1 initramfs: busybox, modules, ferry, tools, L2 images, scenarios
# Everything lives under a cache directory outside the repository,
# ${FERRY_LAB_CACHE:-/var/cache/ferry-lab}; each product is keyed by a hash of its inputs and
# reused when they have not changed. Needs root and apt (Debian 12). Progress goes to stderr.
#
# Environment: FERRY_LAB_CACHE (cache dir), FERRY_LAB_KERNEL_PKG (a linux-image-6.1.0-N-amd64
# package instead of the newest), FERRY_BIN (a ferry binary instead of building target/release).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${FERRY_LAB_CACHE:-/var/cache/ferry-lab}"

log() { echo "lab-build: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get, device nodes in the initramfs)"
mkdir -p "$cache"
exec 8>"$cache/.build.lock"
flock 8

apt_updated=0
apt_install() {
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; then
        [ "$apt_updated" = 0 ] || die "apt-get install $* failed"
        apt_updated=1
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
    fi
}

# --- host tools and the userland copied into L1 -----------------------------------------------
# The host is Debian 12 like L1's userland, so binaries and their libraries are taken from the
# host's own installation (installed here when missing).
need=()
for pair in qemu-system-x86_64:qemu-system-x86 cpio:cpio ip:iproute2 lvm:lvm2 dmsetup:dmsetup \
    tgtd:tgt curl:curl mke2fs:e2fsprogs dpkg-deb:dpkg gzip:gzip python3:python3; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[ -e /usr/share/qemu/qboot.rom ] || need+=(qemu-system-data)
bb_static() { [ -x "$1" ] && ! readelf -l "$1" 2>/dev/null | grep -q INTERP; }
bb_static /bin/busybox || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt_install "${need[@]}"
fi
bb_static /bin/busybox || die "/bin/busybox is not static (apt-get install busybox-static)"
busybox=/bin/busybox

# --- the Debian stock kernel (L1, and L2's stock-kernel scenario) ------------------------------
kpkg="${FERRY_LAB_KERNEL_PKG:-}"
if [ -z "$kpkg" ]; then
    kpkg="$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -n1)"
    if [ -z "$kpkg" ]; then
        apt-get update -q >&2
        apt_updated=1
        kpkg="$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -n1)"
    fi
fi
[ -n "$kpkg" ] || die "no linux-image-6.1.0-N-amd64 package found"
kver="${kpkg#linux-image-}"
kdir="$cache/kernel-$kver"
if [ ! -f "$kdir/.done" ]; then
    log "downloading and unpacking $kpkg"
    rm -rf "$kdir"
    mkdir -p "$kdir/deb"
    (cd "$kdir/deb" && apt-get download "$kpkg" >&2 2>&1) || {
        apt-get update -q >&2
        (cd "$kdir/deb" && apt-get download "$kpkg" >&2)
    }
    dpkg-deb -x "$kdir"/deb/*.deb "$kdir/root"
    rm -rf "$kdir/deb"
    "$busybox" depmod -b "$kdir/root" "$kver"
    touch "$kdir/.done"
fi
vmlinuz="$kdir/root/boot/vmlinuz-$kver"
moddir="$kdir/root/lib/modules/$kver"
[ -f "$vmlinuz" ] || die "$vmlinuz missing"

# Prints the module files (relative to $moddir) for the named modules and all their dependencies.
module_closure() {
    local m rel
    for m in "$@"; do
        rel="$(awk -v m="$m" -F: '{ n=$1; sub(/.*\//, "", n); sub(/\.ko.*$/, "", n); gsub(/-/, "_", n);
              mm=m; gsub(/-/, "_", mm); if (n == mm) { print $1 ":" $2; exit } }' "$moddir/modules.dep")"
        [ -n "$rel" ] || die "module $m not found in $kver"
        echo "${rel%%:*}"
        for d in ${rel#*:}; do echo "$d"; done
    done | sort -u
}

# --- ferry -----------------------------------------------------------------------------------
ferry="${FERRY_BIN:-}"
if [ -z "$ferry" ]; then
    log "building ferry (cargo build --release -p ferry-vmm)"
    (cd "$repo" && cargo build --release -q -p ferry-vmm >&2)
    ferry="$repo/target/release/ferry"
fi
[ -x "$ferry" ] || die "ferry binary $ferry missing"

# --- the vsock tool (L2's AF_VSOCK echo server/client, L1's side of ferry's vsock socket) -------
log "building resources/lab/vsock-tool (static)"
(cd "$here/vsock-tool" && RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_TARGET_DIR="$repo/target/lab-vsock-tool" \
    cargo build --release -q --target x86_64-unknown-linux-gnu >&2)
vsock_tool="$repo/target/lab-vsock-tool/x86_64-unknown-linux-gnu/release/vsock-tool"
[ -x "$vsock_tool" ] || die "$vsock_tool missing"

# --- L2: the project's minimal kernel --------------------------------------------------------
export FERRY_LINUX_CACHE="${FERRY_LINUX_CACHE:-$cache/linux}"
log "L2 kernel (resources/linux/build-kernel.sh; ~6 minutes the first time)"
l2_kernel="$("$repo/resources/linux/build-kernel.sh")"

# --- L2 initramfs: busybox + the lab's guest /init + the stock virtio modules ----------------
# (and the ACPI power button driver with evdev, which the power-button scenario reads, and
# virtio_rng for the entropy scenario, the vsock transport and the balloon for theirs)
l2_mods="$(module_closure virtio_mmio virtio_blk virtio_net virtio_rng button evdev \
    vmw_vsock_virtio_transport virtio_balloon)"
# util-linux's blkdiscard (busybox's has no -z) for write-zeroes, with the libraries it needs.
l2_blkdiscard=/usr/sbin/blkdiscard
[ -x "$l2_blkdiscard" ] || die "$l2_blkdiscard missing (Debian package util-linux)"
l2_key="$( {
    sha256sum <"$busybox"; sha256sum <"$here/l2/init"; sha256sum <"$l2_blkdiscard"; echo "$kver $l2_mods"
    sha256sum <"$vsock_tool"
    sed -n '/^# --- L2 initramfs/,/^# --- end L2/p' "${BASH_SOURCE[0]}"
} | sha256sum | cut -c1-16)"
l2_dir="$cache/l2-$l2_key"
if [ ! -f "$l2_dir/initramfs.cpio.gz" ]; then
    log "building the L2 initramfs and rootfs image"
    rm -rf "$l2_dir"
    stage="$l2_dir/stage"
    mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,root,etc,mnt}
    cp "$busybox" "$stage/bin/busybox"
    for a in $("$busybox" --list); do
        [ "$a" = busybox ] || ln -sf busybox "$stage/bin/$a"
    done
    cp "$here/l2/init" "$stage/init"
    chmod 0755 "$stage/init"
    cp "$vsock_tool" "$stage/bin/vsock-tool"
    strip -s "$stage/bin/vsock-tool"
    mkdir -p "$stage/usr/sbin"
    cp -L "$l2_blkdiscard" "$stage/usr/sbin/blkdiscard"
    for lib in $(ldd "$l2_blkdiscard" | awk '/=> \// { print $3 } /^[ \t]*\/lib/ { print $1 }'); do
        mkdir -p "$stage$(dirname "$lib")"
        cp -L "$lib" "$stage$lib"
    done
    for f in $l2_mods; do
        mkdir -p "$stage/lib/modules/$kver/$(dirname "$f")"
        cp "$moddir/$f" "$stage/lib/modules/$kver/$f"
    done
    cp "$moddir/modules.builtin" "$moddir/modules.order" "$stage/lib/modules/$kver/"
    "$busybox" depmod -b "$stage" "$kver"
    # The ext4 root filesystem for the api-getting-started scenario: the same tree, with the
    # lab's init as /sbin/init (the kernel's default) and no device nodes (devtmpfs mounts /dev).
    cp "$stage/init" "$stage/sbin/init"
    mke2fs -q -t ext4 -L labroot -d "$stage" "$l2_dir/rootfs.ext4" 64M >&2
    rm "$stage/sbin/init"
    mknod -m 0600 "$stage/dev/console" c 5 1
    mknod -m 0666 "$stage/dev/null" c 1 3
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
        | gzip -6 >"$l2_dir/initramfs.cpio.gz.tmp"
    mv "$l2_dir/initramfs.cpio.gz.tmp" "$l2_dir/initramfs.cpio.gz"
    rm -rf "$stage"
fi
# --- end L2

# --- L1 initramfs ----------------------------------------------------------------------------
l1_mods="$(module_closure kvm kvm_amd tun tap macvlan macvtap veth bridge loop dm_mod)"
l1_bins=(/usr/bin/qemu-system-x86_64 /sbin/ip /sbin/lvm /sbin/dmsetup /usr/sbin/tgtd
    /usr/sbin/tgtadm /usr/bin/curl)
for b in "${l1_bins[@]}"; do [ -x "$b" ] || die "$b missing on the host"; done
qemu_fw=(qboot.rom bios-microvm.bin linuxboot.bin linuxboot_dma.bin pvh.bin kvmvapic.bin
    multiboot.bin multiboot_dma.bin bios-256k.bin)
l1_key="$( {
    sha256sum <"$busybox"; sha256sum <"$ferry"; sha256sum <"$vmlinuz"; sha256sum <"$vsock_tool"
    sha256sum <"$l2_kernel"; sha256sum <"$l2_dir/initramfs.cpio.gz"; sha256sum <"$l2_dir/rootfs.ext4"
    cat "$here"/l1/* ; echo "$l1_mods"
    for b in "${l1_bins[@]}"; do sha256sum <"$b"; done
    sed -n '/^# --- L1 initramfs/,$p' "${BASH_SOURCE[0]}"
} | sha256sum | cut -c1-16)"
out="$cache/l1-$l1_key"
if [ ! -f "$out/l1.cpio.gz" ]; then
    log "building the L1 initramfs"
    rm -rf "$out"
    stage="$out/stage"
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,lab,var/tmp,var/lock}
    cp "$busybox" "$stage/bin/busybox"
    for a in $("$busybox" --list); do
        [ "$a" = busybox ] || ln -sf busybox "$stage/bin/$a"
    done
    # A binary and the libraries ldd lists, at the same paths (and the dynamic loader).
    copy_elf() {
        local src="$1" dst="$2" lib
        mkdir -p "$(dirname "$stage$dst")"
        cp -L "$src" "$stage$dst"
        for lib in $(ldd "$src" | awk '/=> \// { print $3 } /^[ \t]*\/lib/ { print $1 }'); do
            if [ ! -e "$stage$lib" ]; then
                mkdir -p "$stage$(dirname "$lib")"
                cp -L "$lib" "$stage$lib"
            fi
        done
    }
    copy_elf "$ferry" /usr/bin/ferry
    strip -s "$stage/usr/bin/ferry"
    cp "$vsock_tool" "$stage/usr/bin/vsock-tool"
    strip -s "$stage/usr/bin/vsock-tool"
    for b in "${l1_bins[@]}"; do copy_elf "$b" "/usr/sbin/$(basename "$b")"; done
    for l in pvcreate vgcreate lvcreate lvextend lvs vgs pvs vgchange lvremove vgremove; do
        ln -sf lvm "$stage/usr/sbin/$l"
    done
    mkdir -p "$stage/usr/share/qemu"
    for f in "${qemu_fw[@]}"; do
        [ -e "/usr/share/qemu/$f" ] && cp -L "/usr/share/qemu/$f" "$stage/usr/share/qemu/$f"
    done
    # curl looks up CA files only for https; keep /etc minimal.
    echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
    echo "root:x:0:" >"$stage/etc/group"
    for f in $l1_mods; do
        mkdir -p "$stage/lib/modules/$kver/$(dirname "$f")"
        cp "$moddir/$f" "$stage/lib/modules/$kver/$f"
    done
    cp "$moddir/modules.builtin" "$moddir/modules.order" "$stage/lib/modules/$kver/"
    "$busybox" depmod -b "$stage" "$kver"
    # L2 images
    cp "$l2_kernel" "$stage/lab/vmlinux"
    cp "$vmlinuz" "$stage/lab/vmlinuz-stock"
    cp "$l2_dir/initramfs.cpio.gz" "$stage/lab/l2.cpio.gz"
    cp "$l2_dir/rootfs.ext4" "$stage/lab/rootfs.ext4"
    cp "$here"/l1/* "$stage/lab/"
    cp "$here/l1/init" "$stage/init"
    chmod 0755 "$stage/init" "$stage"/lab/*.sh
    mknod -m 0600 "$stage/dev/console" c 5 1
    mknod -m 0666 "$stage/dev/null" c 1 3
    # Uncompressed cpio inside a fast gzip: unpacking in TCG-emulated L1 costs seconds per level.
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
        | gzip -1 >"$out/l1.cpio.gz.tmp"
    mv "$out/l1.cpio.gz.tmp" "$out/l1.cpio.gz"
    cp "$vmlinuz" "$out/vmlinuz"
    rm -rf "$stage"
    # Keep only the newest few L1 builds.
    find "$cache" -maxdepth 1 -name 'l1-*' -type d ! -path "$out" -printf '%T@ %p\n' | sort -rn \
        | tail -n +3 | cut -d' ' -f2- | xargs -r rm -rf
fi
log "ready: $out ($(du -sh "$out/l1.cpio.gz" | cut -f1) initramfs)"
echo "$out"
