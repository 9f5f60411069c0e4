"""The guest's RAM read from the process that holds it: resident (touched) and holding data.

A 64 MiB anonymous mapping of this very process stands in for QEMU's guest RAM. (Executable,
so the kernel never merges it with Python's own anonymous mappings next to it.)"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

import pytest

from vmigrate.hypervisor.guest_ram import (
    PAGE_BYTES,
    find_ram_mapping,
    guest_ram_data_bytes,
    guest_ram_resident_bytes,
    present_pages,
)
from vmigrate.migration.estimate import memory_to_send

MIB = 1024 * 1024


@pytest.fixture
def ram() -> Iterator[mmap.mmap]:
    """64 MiB: 10 MiB written with data, 5 MiB written with zeros, 5 MiB only read."""
    mapping = mmap.mmap(
        -1, 64 * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
        prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC,
    )  # fmt: skip
    for offset in range(0, 10 * MIB, PAGE_BYTES):
        mapping[offset + 7] = 1
    for offset in range(10 * MIB, 15 * MIB, PAGE_BYTES):
        mapping[offset] = 0  # written: resident, all zeros
    for offset in range(15 * MIB, 20 * MIB, PAGE_BYTES):
        assert mapping[offset] == 0  # read only: the shared zero page, not resident
    try:
        yield mapping
    finally:
        mapping.close()


def test_touched_memory_is_the_resident_part_of_the_ram_mapping(ram: mmap.mmap) -> None:
    touched = guest_ram_resident_bytes(os.getpid(), 64 * MIB)
    assert touched is not None
    assert 15 * MIB <= touched <= 17 * MIB  # transparent huge pages may round it up
    assert guest_ram_resident_bytes(os.getpid(), 999 * MIB) is None  # no mapping that size
    mapping = find_ram_mapping(os.getpid(), 64 * MIB)
    assert mapping is not None and mapping.size_bytes == 64 * MIB
    assert len(present_pages(os.getpid(), mapping)) * PAGE_BYTES >= 15 * MIB


def test_the_memory_holding_data_leaves_out_pages_of_zeros(ram: mmap.mmap) -> None:
    every = guest_ram_data_bytes(os.getpid(), 64 * MIB, samples=1_000_000)
    assert every == 10 * MIB  # every present page read: exactly the pages written with data
    sampled = guest_ram_data_bytes(os.getpid(), 64 * MIB, samples=512, seed=1)
    assert sampled is not None and abs(sampled - 10 * MIB) < 1.5 * MIB
    assert guest_ram_data_bytes(os.getpid(), 999 * MIB) is None  # no mapping that size
    assert guest_ram_data_bytes(2**22 + 7, 64 * MIB) is None  # no such process


def test_the_model_sends_the_data_else_the_touched_else_all_of_it() -> None:
    ram = 512 * MIB
    assert memory_to_send(ram, 200 * MIB, 150 * MIB) == 150 * MIB
    assert memory_to_send(ram, 200 * MIB, None) == 200 * MIB
    assert memory_to_send(ram, None, None) == ram
    assert memory_to_send(ram, 0, 0) == ram  # nothing measured
    assert memory_to_send(ram, 10**12, None) == ram  # never more than the RAM
