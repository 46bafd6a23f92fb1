#!/usr/bin/env bash
# Builds ferry's test initramfs (gzip-compressed cpio newc) and prints its path on stdout.
#
# Contents: a statically linked busybox (Debian package `busybox-static`, installed with apt-get
# when missing and we are root, or the binary named by $BUSYBOX) with a symlink per applet in /bin,
# the /init script beside this file, mount points, and /dev/console so the kernel can hand /init
# its console before devtmpfs is mounted.
# Cache: resources/linux/cache/initramfs-<hash>/initramfs.cpio.gz, where <hash> covers busybox,
# /init, this script and mkcpio.py. The archive is deterministic (see mkcpio.py).
#
# Environment: BUSYBOX (static busybox binary), FERRY_LINUX_CACHE (cache directory).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${FERRY_LINUX_CACHE:-$here/cache}"
init="$here/init"
mkcpio="$here/mkcpio.py"

log() { echo "build-initramfs: $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v python3 >/dev/null || die "python3 is needed (apt-get install python3)"

busybox="${BUSYBOX:-/bin/busybox}"
# Debian's plain `busybox` package is dynamically linked; only `busybox-static` works without
# a libc in the initramfs. A dynamic binary has a PT_INTERP (INTERP) program header.
static_ok() { [ -x "$1" ] && readelf -l "$1" 2>/dev/null | grep -q 'LOAD' && ! readelf -l "$1" | grep -q 'INTERP'; }
if ! static_ok "$busybox"; then
    if [ -z "${BUSYBOX:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing busybox-static"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2
    fi
    static_ok "$busybox" || die "$busybox is not a static busybox (apt-get install busybox-static, or set BUSYBOX)"
fi

key="$( {
    sha256sum <"$busybox"
    sha256sum <"$init"
    sha256sum <"$mkcpio"
    sha256sum <"${BASH_SOURCE[0]}"
} | sha256sum | cut -c1-16)"
out="$cache/initramfs-$key"
if [ -f "$out/initramfs.cpio.gz" ]; then
    echo "$out/initramfs.cpio.gz"
    exit 0
fi

mkdir -p "$out"
list="$out/list.$$"
tmp="$out/initramfs.cpio.gz.tmp.$$"
trap 'rm -f "$list" "$tmp"' EXIT
{
    for d in /bin /dev /proc /sys /tmp /root; do echo "dir $d 0755"; done
    echo "nod /dev/console 0600 c 5 1"
    echo "nod /dev/null 0666 c 1 3"
    echo "file /bin/busybox $busybox 0755"
    echo "file /init $init 0755"
    # One link per applet, sorted so the archive does not depend on busybox's list order.
    "$busybox" --list | LC_ALL=C sort -u | while read -r applet; do
        case "$applet" in
            busybox | */* | "") ;;
            *) echo "slink /bin/$applet busybox 0777" ;;
        esac
    done
} >"$list"

# Write under a temporary name and rename, so a concurrent reader never sees half a file.
python3 "$mkcpio" "$tmp" <"$list"
mv "$tmp" "$out/initramfs.cpio.gz"
echo "$out/initramfs.cpio.gz"
