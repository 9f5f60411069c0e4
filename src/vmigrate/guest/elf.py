"""Just enough ELF to read a kernel module's sections and to tell a static executable."""

from __future__ import annotations

import struct

from vmigrate.errors import ImageBuildError


def elf_sections(blob: bytes) -> dict[str, bytes]:
    """Section name -> contents of a 64-bit little-endian ELF file (kernel modules)."""
    if blob[:4] != b"\x7fELF" or blob[4] != 2 or blob[5] != 1:
        raise ImageBuildError("not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", blob, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", blob, 0x3A)
    headers = []
    for i in range(shnum):
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", blob, shoff + i * shentsize
        )
        headers.append((name, offset, size))
    _n, str_off, str_size = headers[shstrndx]
    strtab = blob[str_off : str_off + str_size]
    sections: dict[str, bytes] = {}
    for name, offset, size in headers:
        end = strtab.find(b"\0", name)
        sections[strtab[name:end].decode(errors="replace")] = blob[offset : offset + size]
    return sections


def is_static_elf(blob: bytes) -> bool:
    """True when an ELF executable has no PT_INTERP (no dynamic loader needed)."""
    if blob[:4] != b"\x7fELF" or blob[4] != 2:
        return False
    phoff = struct.unpack_from("<Q", blob, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", blob, 0x36)
    types = (struct.unpack_from("<I", blob, phoff + i * phentsize)[0] for i in range(phnum))
    return all(t != 3 for t in types)  # 3 = PT_INTERP
