#!/usr/bin/env bash
# Builds a minimal x86_64 Linux 6.1 `vmlinux` for ferry and prints its path on stdout.
#
# Source: Debian's `linux-source-6.1` package (/usr/src/linux-source-6.1.tar.xz; installed with
# apt-get when missing and we are root), or the tarball named by $LINUX_SRC_TARBALL.
# Config: `make tinyconfig` + resources/linux/ferry.config, then `make olddefconfig`; every option
# the fragment asks for is checked in the final .config.
# Cache: resources/linux/cache/<hash>/vmlinux, where <hash> covers the fragment, this script, the
# source tarball and the compiler version. A cached kernel is reused; a build takes ~6 minutes on
# 2 cores. Concurrent callers serialise on a lock file, so parallel tests build it once.
#
# Environment: LINUX_SRC_TARBALL (source tarball), FERRY_LINUX_CACHE (cache directory),
# JOBS (make -j, default nproc). Progress goes to stderr; stdout carries only the path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fragment="$here/ferry.config"
cache="${FERRY_LINUX_CACHE:-$here/cache}"
tarball="${LINUX_SRC_TARBALL:-/usr/src/linux-source-6.1.tar.xz}"
jobs="${JOBS:-$(nproc)}"

log() { echo "build-kernel: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_tools() {
    local missing=()
    for tool in make gcc flex bison bc xz tar readelf flock sha256sum perl; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    # libelf headers are needed by objtool on x86_64.
    [ -e /usr/include/libelf.h ] || missing+=("libelf-dev")
    [ -e /usr/include/openssl/opensslv.h ] || missing+=("libssl-dev")
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            log "installing build dependencies (${missing[*]})"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                build-essential flex bison bc xz-utils libelf-dev libssl-dev binutils \
                util-linux perl >&2
        else
            die "missing tools: ${missing[*]} (apt-get install build-essential flex bison bc xz-utils libelf-dev libssl-dev)"
        fi
    fi
}

need_source() {
    [ -f "$tarball" ] && return 0
    if [ -z "${LINUX_SRC_TARBALL:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing linux-source-6.1"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-source-6.1 >&2
    fi
    [ -f "$tarball" ] || die "kernel source $tarball not found (apt-get install linux-source-6.1, or set LINUX_SRC_TARBALL)"
}

need_tools
need_source

# The cache key: anything that changes the produced kernel. The tarball's own hash (not a package
# version string) keeps the key right for a hand-supplied LINUX_SRC_TARBALL too.
src_hash="$(sha256sum "$tarball" | cut -c1-16)"
key="$( {
    cat "$fragment"
    cat "${BASH_SOURCE[0]}"
    echo "src=$src_hash"
    gcc --version | head -n1
} | sha256sum | cut -c1-16)"
out="$cache/$key"

if [ -f "$out/vmlinux" ]; then
    echo "$out/vmlinux"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/$key.lock"
flock 9
# Another caller may have finished the build while we waited for the lock.
if [ -f "$out/vmlinux" ]; then
    echo "$out/vmlinux"
    exit 0
fi

# The extracted tree is shared by every config built from the same tarball; the object tree is
# per key and deleted after the build (it is ~10x the size of vmlinux).
src_root="$cache/src-$src_hash"
if [ ! -f "$src_root/.extracted" ]; then
    log "extracting $tarball"
    rm -rf "$src_root"
    mkdir -p "$src_root"
    tar -xJf "$tarball" -C "$src_root" --strip-components=1
    touch "$src_root/.extracted"
fi

build="$cache/build-$key"
rm -rf "$build"
mkdir -p "$build"

# Fixed build identity so two builds of the same key produce the same bytes.
export KBUILD_BUILD_USER=ferry KBUILD_BUILD_HOST=ferry KBUILD_BUILD_TIMESTAMP="1970-01-01"
mk() { make -s -C "$src_root" O="$build" ARCH=x86_64 "$@" >&2; }

log "configuring (tinyconfig + $(basename "$fragment"))"
mk tinyconfig >"$build/tinyconfig.log" 2>&1 || { cat "$build/tinyconfig.log" >&2; die "make tinyconfig failed"; }
# merge_config.sh -m only merges the fragment into .config; olddefconfig then resolves the
# dependencies the same way `make` would.
(cd "$build" && "$src_root/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment") \
    >"$build/merge.log" 2>&1 || { cat "$build/merge.log" >&2; die "merge_config.sh failed"; }
mk olddefconfig

# Refuse a config that lost a requested option (a missing dependency drops it silently).
bad=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            grep -qxF "$line" "$build/.config" || { log "config: wanted $line, got: $(grep -E "^(# )?${line%%=*}[= ]" "$build/.config" || echo unset)"; bad=1; }
            ;;
        "# CONFIG_"*" is not set")
            opt="${line#\# }"; opt="${opt%% *}"
            if grep -qE "^$opt=[ym]" "$build/.config"; then log "config: wanted $opt off, got it on"; bad=1; fi
            ;;
    esac
done <"$fragment"
[ "$bad" = 0 ] || die "the final .config does not match $(basename "$fragment") (see above)"

log "building vmlinux with -j$jobs (takes minutes)"
mk -j"$jobs" vmlinux

# The PVH entry is an ELF note of owner "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18).
readelf -n "$build/vmlinux" | grep -qE 'Xen.*(0x00000012|PHYS32)' \
    || die "vmlinux has no PVH note (XEN_ELFNOTE_PHYS32_ENTRY); is CONFIG_PVH on?"

mkdir -p "$out"
cp "$build/.config" "$out/config"
cp "$build/vmlinux" "$out/vmlinux.tmp"
mv "$out/vmlinux.tmp" "$out/vmlinux"
rm -rf "$build"
log "done"
echo "$out/vmlinux"
