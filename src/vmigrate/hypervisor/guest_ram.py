"""The guest's RAM as the QEMU process holds it: the anonymous mapping of the guest's size.

Two figures tell what pre-copy's first pass will send. The pages the guest never touched are
not resident (smaps' Rss): they go as zero pages, next to free. Of the resident pages, those
holding only zeros (memory the guest kernel cleared and has not written since) go as zero pages
too: QEMU looks at every page before it sends it. What holds data is estimated from a random
sample of the present pages (pagemap), each read from QEMU's memory (/proc/PID/mem, as root):
a web or idle guest holds zeros in ~20 % of what it touched, a guest writing random data in
next to none, so one fitted share for all of them was ~10 % off for some.
"""

from __future__ import annotations

import os
import random
import re
import struct
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
PAGE_BYTES = 4096
#: The guest-RAM mapping may be a little larger than the RAM asked for.
RAM_ALIGNMENT_SLACK = 2 * MIB
#: Pages read to estimate the share holding data (± ~1.5 % at the worst share, 50 %).
DATA_SAMPLE_PAGES = 4096
SMAPS_HEAD = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+(.*)$")
PAGEMAP_PRESENT = 1 << 63
ZERO_PAGE = bytes(PAGE_BYTES)


@dataclass(frozen=True)
class RamMapping:
    """Where the guest's RAM lies in QEMU's address space, and how much of it is resident."""

    start: int
    size_bytes: int
    resident_bytes: int


def find_ram_mapping(pid: int, ram_bytes: int) -> RamMapping | None:
    """The anonymous mapping of process `pid` that is `ram_bytes` large (give or take the
    alignment slack), or None when there is none or the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return None
    span: tuple[int, int] | None = None
    for line in lines:
        head = SMAPS_HEAD.match(line)
        if head:
            start, end, path = int(head[1], 16), int(head[2], 16), head[3].strip()
            span = (start, end - start) if not path else None
        elif line.startswith("Rss:") and span is not None:
            if ram_bytes <= span[1] <= ram_bytes + RAM_ALIGNMENT_SLACK:
                return RamMapping(span[0], span[1], int(line.split()[1]) * 1024)
            span = None
    return None


def guest_ram_resident_bytes(pid: int, ram_bytes: int) -> int | None:
    """The resident bytes of the guest's RAM mapping: the memory it has touched."""
    mapping = find_ram_mapping(pid, ram_bytes)
    return None if mapping is None else mapping.resident_bytes


def present_pages(pid: int, mapping: RamMapping) -> list[int]:
    """The indexes of the mapping's pages that are present in memory (pagemap's bit 63)."""
    count = mapping.size_bytes // PAGE_BYTES
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        raw = os.pread(pagemap.fileno(), count * 8, mapping.start // PAGE_BYTES * 8)
    entries = struct.unpack(f"<{len(raw) // 8}Q", raw)
    return [i for i, entry in enumerate(entries) if entry & PAGEMAP_PRESENT]


def guest_ram_data_bytes(
    pid: int, ram_bytes: int, samples: int = DATA_SAMPLE_PAGES, seed: int | None = None
) -> int | None:
    """The bytes of the guest's RAM that hold data (present pages that are not all zeros),
    estimated from `samples` present pages read at random; None when the mapping or QEMU's
    memory cannot be read (not root, the process gone)."""
    mapping = find_ram_mapping(pid, ram_bytes)
    if mapping is None:
        return None
    try:
        present = present_pages(pid, mapping)
        if not present:
            return 0
        chosen = random.Random(seed).sample(present, min(samples, len(present)))
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
            fd = memory.fileno()
            holding = sum(
                os.pread(fd, PAGE_BYTES, mapping.start + i * PAGE_BYTES) != ZERO_PAGE
                for i in chosen
            )
    except OSError:
        return None
    return round(len(present) * PAGE_BYTES * holding / len(chosen))
