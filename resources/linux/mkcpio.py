#!/usr/bin/env python3
"""Writes a gzip-compressed cpio "newc" archive (the initramfs format) from a list of entries.

Used by build-initramfs.sh instead of cpio(1) because it needs no root for device nodes, makes
every entry root-owned, and is deterministic (mtime 0, fixed inode numbers, gzip mtime 0): the
same inputs give the same bytes, so cached initramfs files are stable.

Usage: mkcpio.py OUTPUT.cpio.gz < LIST
LIST has one entry per line (blank lines and # comments are skipped), like the kernel's
gen_init_cpio:
    dir   NAME MODE
    file  NAME SOURCE MODE
    slink NAME TARGET MODE
    nod   NAME MODE c|b MAJOR MINOR
MODE is octal permission bits; NAME is the absolute path inside the archive.
"""

import gzip
import stat
import sys

# Header layout: magic then 13 eight-digit hex fields (see the kernel's
# Documentation/driver-api/early-userspace/buffer-format.rst).
MAGIC = b"070701"


def pad4(n):
    return (4 - n % 4) % 4


class Archive:
    def __init__(self):
        self.chunks = []
        self.ino = 1

    def add(self, name, mode, data=b"", rdev=(0, 0)):
        name_bytes = name.lstrip("/").encode() + b"\0"
        if name_bytes == b"\0":
            raise ValueError("empty entry name")
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = [
            self.ino, mode, 0, 0, nlink, 0, len(data),
            0, 0, rdev[0], rdev[1], len(name_bytes), 0,
        ]
        self.ino += 1
        header = MAGIC + b"".join(b"%08x" % f for f in fields)
        self.chunks.append(header + name_bytes + b"\0" * pad4(len(header) + len(name_bytes)))
        self.chunks.append(data + b"\0" * pad4(len(data)))

    def finish(self):
        self.ino = 0
        self.add("TRAILER!!!", 0)
        return b"".join(self.chunks)


def parse(archive, line_no, words):
    kind = words[0]
    try:
        if kind == "dir" and len(words) == 3:
            archive.add(words[1], stat.S_IFDIR | int(words[2], 8))
        elif kind == "file" and len(words) == 4:
            with open(words[2], "rb") as f:
                archive.add(words[1], stat.S_IFREG | int(words[3], 8), f.read())
        elif kind == "slink" and len(words) == 4:
            archive.add(words[1], stat.S_IFLNK | int(words[3], 8), words[2].encode())
        elif kind == "nod" and len(words) == 6 and words[3] in ("c", "b"):
            fmt = stat.S_IFCHR if words[3] == "c" else stat.S_IFBLK
            archive.add(words[1], fmt | int(words[2], 8), rdev=(int(words[4]), int(words[5])))
        else:
            raise ValueError("unknown entry or wrong number of fields")
    except (ValueError, OSError) as e:
        sys.exit(f"mkcpio: line {line_no}: {' '.join(words)}: {e}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    archive = Archive()
    for line_no, line in enumerate(sys.stdin, 1):
        words = line.split()
        if words and not words[0].startswith("#"):
            parse(archive, line_no, words)
    data = archive.finish()
    with open(sys.argv[1], "wb") as out:
        with gzip.GzipFile(filename="", fileobj=out, mode="wb", compresslevel=9, mtime=0) as gz:
            gz.write(data)


if __name__ == "__main__":
    main()
