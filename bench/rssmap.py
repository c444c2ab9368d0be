#!/usr/bin/env python3
"""Where a Go process's file-backed RSS sits: which pages of its binary are
resident, by mapping (text, read-only data), by ELF section, and the text
by Go package.

    python3 bench/rssmap.py <pid> [binary]   # as root (reads /proc/<pid>/pagemap)

The binary defaults to /proc/<pid>/exe. It needs `go tool nm` (symbol
addresses and sizes; the binary must not be stripped) and `readelf`.
Resident is per 4 KiB page; the kernel maps up to 64 KiB around a faulting
page of a file in the page cache ("fault-around"), so code touched in
scattered places costs more than its size.
"""
import bisect
import collections
import os
import struct
import subprocess
import sys


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    pid = int(sys.argv[1])
    binary = sys.argv[2] if len(sys.argv) > 2 else os.readlink(f"/proc/{pid}/exe")
    real = os.path.realpath(binary)
    maps = []
    for line in open(f"/proc/{pid}/maps"):
        f = line.split()
        if len(f) >= 6 and os.path.realpath(f[5]) == real:
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            maps.append((lo, hi, f[1]))
    if not maps:
        sys.exit(f"{binary} is not mapped by process {pid}")
    resident = collections.defaultdict(list)
    with open(f"/proc/{pid}/pagemap", "rb") as pm:
        for lo, hi, perm in maps:
            for page in range(lo, hi, 4096):
                pm.seek(page // 4096 * 8)
                if struct.unpack("<Q", pm.read(8))[0] >> 63:
                    resident[perm].append(page)
    total = sum(len(v) for v in resident.values())
    print(f"resident pages of {binary}: {total * 4} kB")
    for perm, pages in sorted(resident.items()):
        print(f"  {perm}: {len(pages) * 4} kB")

    sections = []
    out = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = line.replace("[ ", "[").split()
        if len(f) > 6 and f[0].startswith("[") and f[1].startswith("."):
            addr, size = int(f[3], 16), int(f[5], 16)
            if addr:
                sections.append((addr, size, f[1]))
    by_section = collections.Counter()
    for pages in resident.values():
        for p in pages:
            name = next((n for a, s, n in sections if a <= p < a + s), "(other)")
            by_section[name] += 1
    print("by section:")
    for name, n in by_section.most_common():
        print(f"  {n * 4:8d} kB  {name}")

    syms = []
    out = subprocess.run(["go", "tool", "nm", "-size", "-sort", "address", binary], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] in ("T", "t"):
            syms.append((int(f[0], 16), f[3]))
    syms.sort()
    addrs = [a for a, _ in syms]
    by_pkg = collections.Counter()
    for p in resident.get("r-xp", []):
        i = bisect.bisect_right(addrs, p) - 1
        if i < 0:
            continue
        head, _, tail = syms[i][1].rpartition("/")
        by_pkg[(head + "/" if head else "") + tail.split(".")[0]] += 1
    print("text by package (top 25):")
    for pkg, n in by_pkg.most_common(25):
        print(f"  {n * 4:8d} kB  {pkg}")


if __name__ == "__main__":
    main()
