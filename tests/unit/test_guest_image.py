"""Guest image pieces that need no VM and no network: digest, cpio, ELF/modules, cmdline,
apt resolution (faked), agent client parsing, and the agent itself compiled and run on loopback.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import json
import lzma
import os
import shutil
import socket
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from host_agent import AGENT_SOURCE, running_agent
from hypothesis import given
from hypothesis import strategies as st

from vmigrate.errors import GuestError, ImageBuildError
from vmigrate.guest import agent_client, build, cache, debian
from vmigrate.guest.cmdline import kernel_cmdline, parse_cmdline
from vmigrate.guest.elf import is_static_elf
from vmigrate.guest.image import BuildInputs, GuestImage
from vmigrate.guest.initramfs import CpioWriter, build_initramfs
from vmigrate.guest.kernel_modules import module_depends, resolve_modules

# --------------------------------------------------------------------------- helpers


def make_elf(sections: dict[str, bytes], interp: bool = False) -> bytes:
    """A minimal 64-bit little-endian ELF with the given sections (and maybe a PT_INTERP)."""
    names = ["", *sections, ".shstrtab"]
    shstrtab = b""
    name_off = []
    for n in names:
        name_off.append(len(shstrtab))
        shstrtab += n.encode() + b"\0"
    body = b""
    offsets = []
    blobs = [b"", *sections.values(), shstrtab]
    phnum = 1
    data_start = 64 + 56 * phnum
    for blob in blobs:
        offsets.append(data_start + len(body))
        body += blob
    shoff = data_start + len(body)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        1,  # ET_REL
        62,  # x86-64
        1,
        0,
        64,  # phoff
        shoff,
        0,
        64,
        56,
        phnum,
        64,
        len(names),
        len(names) - 1,
    )
    ptype = 3 if interp else 1
    phdr = struct.pack("<IIQQQQQQ", ptype, 0, 0, 0, 0, 0, 0, 0)
    shdrs = b""
    for i, blob in enumerate(blobs):
        shdrs += struct.pack(
            "<IIQQQQIIQQ", name_off[i], 1 if i else 0, 0, 0, offsets[i], len(blob), 0, 0, 1, 0
        )
    return header + phdr + body + shdrs


def make_module(depends: str) -> bytes:
    modinfo = b"license=GPL\0" + f"depends={depends}\0".encode() + b"name=x\0"
    return make_elf({".text": b"\x90" * 16, ".modinfo": modinfo})


def read_newc(archive: bytes) -> list[dict[str, Any]]:
    """Parse a newc cpio archive (the inverse of CpioWriter) for assertions."""
    entries: list[dict[str, Any]] = []
    pos = 0
    while True:
        assert archive[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmaj, rmin, namesize, _ = fields
        name_start = pos + 110
        name = archive[name_start : name_start + namesize - 1].decode()
        assert archive[name_start + namesize - 1] == 0
        data_start = name_start + namesize
        data_start += -data_start % 4
        data = archive[data_start : data_start + size]
        pos = data_start + size
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(archive)
            return entries
        entries.append(
            {
                "name": name,
                "mode": mode,
                "uid": uid,
                "gid": gid,
                "nlink": nlink,
                "mtime": mtime,
                "data": data,
                "rdev": (rmaj, rmin),
                "ino": ino,
            }
        )


def sample_inputs() -> BuildInputs:
    return BuildInputs(
        kernel_package="linux-image-6.1.0-56-cloud-amd64",
        kernel_package_version="6.1.192-2",
        busybox_version="1:1.35.0-4+deb12u1+b1",
        agent_source=b"int main(void) { return 0; }\n",
        init_source=b"#!/bin/sh\n",
    )


# --------------------------------------------------------------------------- digest


def test_digest_is_stable_and_hex() -> None:
    assert sample_inputs().digest() == sample_inputs().digest()
    assert len(sample_inputs().digest()) == 64
    int(sample_inputs().digest(), 16)


@pytest.mark.parametrize(
    "change",
    [
        {"kernel_package": "linux-image-6.1.0-57-cloud-amd64"},
        {"kernel_package_version": "6.1.193-1"},
        {"busybox_version": "1:1.36.1-1"},
        {"agent_source": b"int main(void) { return 1; }\n"},
        {"init_source": b"#!/bin/sh\necho hi\n"},
        {"modules": ("virtio_pci", "virtio_net")},
        {"builder_version": "999"},
    ],
)
def test_digest_changes_with_every_input(change: dict[str, Any]) -> None:
    assert dataclasses.replace(sample_inputs(), **change).digest() != sample_inputs().digest()


def test_digest_fields_cannot_run_together() -> None:
    a = dataclasses.replace(sample_inputs(), kernel_package="ab", kernel_package_version="c")
    b = dataclasses.replace(sample_inputs(), kernel_package="a", kernel_package_version="bc")
    assert a.digest() != b.digest()


def test_current_inputs_use_shipped_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "resolve_kernel_package", lambda *a, **k: ("k", "1"))
    monkeypatch.setattr(build, "busybox_version", lambda: "bb")
    inputs = build.current_inputs()
    assert inputs.agent_source == AGENT_SOURCE.read_bytes()
    assert inputs.init_source.startswith(b"#!/bin/sh")


# --------------------------------------------------------------------------- GuestImage


def test_guest_image_json_round_trip() -> None:
    img = GuestImage(Path("/c/vmlinuz"), Path("/c/initrd.img"), "6.1.0-56-cloud-amd64", "ab" * 32)
    assert GuestImage.from_json(json.loads(json.dumps(img.to_json()))) == img


def test_guest_image_from_bad_json() -> None:
    with pytest.raises(ImageBuildError, match="initrd"):
        GuestImage.from_json({"kernel": "/k", "kernel_version": "x", "digest": "d"})


def test_cached_image_is_found_without_building(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VMIGRATE_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "current_inputs", lambda *a, **k: sample_inputs())
    assert build.load_cached_image() is None
    digest = sample_inputs().digest()
    entry = tmp_path / "images" / digest
    entry.mkdir(parents=True)
    img = GuestImage(entry / "vmlinuz", entry / "initrd.img", "6.1.0-x", digest)
    (entry / "image.json").write_text(json.dumps(img.to_json()))
    assert build.load_cached_image() is None  # files missing: not a usable image
    img.kernel.write_bytes(b"k")
    img.initrd.write_bytes(b"i")
    assert build.load_cached_image() == img
    monkeypatch.setattr(build, "_check_tools", lambda: None)
    started = time.monotonic()
    assert build.build_image() == img
    assert time.monotonic() - started < 0.5


def test_abandoned_build_dirs_are_removed(tmp_path: Path) -> None:
    abandoned = tmp_path / ".build-abc-1"
    busy = tmp_path / ".build-abc-2"
    fresh = tmp_path / ".build-abc-3"
    for d in (abandoned, busy, fresh):
        d.mkdir()
        (d / "partial").write_bytes(b"x")
    for d in (abandoned, busy):
        os.utime(d, (time.time() - 3600, time.time() - 3600))
    fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        cache.remove_abandoned(tmp_path, ".build-*")
    finally:
        os.close(fd)
    assert not abandoned.exists()
    assert busy.exists()  # a live build holds its lock
    assert fresh.exists()  # too recent to judge


# --------------------------------------------------------------------------- cpio


def test_cpio_writer_round_trip() -> None:
    w = CpioWriter()
    w.add_file("bin/tool", b"abc", 0o755)
    w.add_symlink("sbin/ip", "/bin/busybox")
    w.add_chardev("dev/console", 5, 1)
    w.add_dir("tmp", 0o1777)
    w.add_dir("bin")  # already there: no duplicate
    w.add_file("odd", b"12345")
    entries = read_newc(w.finish())
    names = [e["name"] for e in entries]
    assert names == ["bin", "bin/tool", "sbin", "sbin/ip", "dev", "dev/console", "tmp", "odd"]
    by = {e["name"]: e for e in entries}
    assert by["bin/tool"]["data"] == b"abc"
    assert by["bin/tool"]["mode"] == stat.S_IFREG | 0o755
    assert stat.S_ISLNK(by["sbin/ip"]["mode"]) and by["sbin/ip"]["data"] == b"/bin/busybox"
    assert stat.S_ISCHR(by["dev/console"]["mode"]) and by["dev/console"]["rdev"] == (5, 1)
    assert by["tmp"]["mode"] == stat.S_IFDIR | 0o1777
    assert all(e["uid"] == 0 and e["gid"] == 0 and e["mtime"] == 0 for e in entries)
    assert len({e["ino"] for e in entries}) == len(entries)


def test_cpio_writer_rejects_escapes() -> None:
    w = CpioWriter()
    with pytest.raises(ValueError):
        w.add_file("../etc/passwd", b"")
    with pytest.raises(ValueError):
        w.add_file("/", b"")


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_cpio_archive_is_readable_by_gnu_cpio(tmp_path: Path) -> None:
    w = CpioWriter()
    w.add_file("a/b/c.txt", b"hello\n")
    w.add_symlink("a/link", "b/c.txt")
    archive = tmp_path / "x.cpio"
    archive.write_bytes(w.finish())
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], input=archive.read_bytes(), capture_output=True, check=True
    )
    assert listing.stdout.decode().split() == ["a", "a/b", "a/b/c.txt", "a/link"]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames"],
        input=archive.read_bytes(),
        cwd=out,
        check=True,
    )
    assert (out / "a/link").read_text() == "hello\n"


@given(st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), st.binary(max_size=64)))
def test_cpio_files_survive(files: dict[str, bytes]) -> None:
    w = CpioWriter()
    for name, data in files.items():
        w.add_file(f"d/{name}", data)
    got = {e["name"]: e["data"] for e in read_newc(w.finish()) if e["name"] != "d"}
    assert got == {f"d/{n}": d for n, d in files.items()}


def test_initramfs_layout() -> None:
    blob = build_initramfs(
        init=b"#!/bin/sh\n",
        busybox=b"BB",
        applets=["bin/sh", "sbin/ip", "bin/busybox", "usr/bin/["],
        agent=b"AGENT",
        kernel_version="6.1.0-x",
        modules=[("virtio_ring", b"R"), ("virtio", b"V")],
    )
    by = {e["name"]: e for e in read_newc(gzip.decompress(blob))}
    assert by["init"]["mode"] == stat.S_IFREG | 0o755
    assert by["bin/busybox"]["data"] == b"BB"
    assert by["sbin/ip"]["data"] == b"/bin/busybox"
    assert by["usr/bin/["]["data"] == b"/bin/busybox"
    assert by["bin/vmigrate-agent"]["data"] == b"AGENT"
    assert by["dev/console"]["rdev"] == (5, 1)
    assert by["lib/modules/6.1.0-x/vmigrate.load"]["data"] == b"virtio_ring\nvirtio\n"
    assert by["lib/modules/6.1.0-x/virtio.ko"]["data"] == b"V"
    for d in ("proc", "sys", "dev", "tmp", "run"):
        assert stat.S_ISDIR(by[d]["mode"])


# --------------------------------------------------------------------------- ELF, modules


def test_module_depends_reads_modinfo() -> None:
    assert module_depends(make_module("virtio_ring,virtio")) == ["virtio_ring", "virtio"]
    assert module_depends(make_module("")) == []
    with pytest.raises(ImageBuildError):
        module_depends(b"not an elf at all" * 8)


def test_is_static_elf() -> None:
    assert is_static_elf(make_elf({}))
    assert not is_static_elf(make_elf({}, interp=True))
    assert not is_static_elf(b"#!/bin/sh\n")
    if Path("/bin/busybox").exists():
        assert is_static_elf(Path("/bin/busybox").read_bytes())


def test_resolve_modules_orders_dependencies_first(tmp_path: Path) -> None:
    kernel = tmp_path / "kernel" / "drivers"
    kernel.mkdir(parents=True)
    (kernel / "virtio_ring.ko").write_bytes(make_module(""))
    (kernel / "virtio.ko.xz").write_bytes(lzma.compress(make_module("virtio_ring")))
    (kernel / "failover.ko").write_bytes(make_module(""))
    (kernel / "net_failover.ko").write_bytes(make_module("failover"))
    (kernel / "virtio_net.ko").write_bytes(make_module("virtio_ring,virtio,net_failover"))
    (kernel / "virtio-rng.ko").write_bytes(make_module("virtio,builtin_thing"))
    (tmp_path / "modules.builtin").write_text("kernel/lib/builtin_thing.ko\n")
    got = resolve_modules(tmp_path, ["virtio_net", "virtio_rng"])
    names = [n for n, _ in got]
    assert names == [
        "virtio_ring",
        "virtio",
        "failover",
        "net_failover",
        "virtio_net",
        "virtio_rng",
    ]
    assert all(blob.startswith(b"\x7fELF") for _, blob in got)  # .xz was decompressed


def test_resolve_modules_errors(tmp_path: Path) -> None:
    (tmp_path / "a.ko").write_bytes(make_module("b"))
    (tmp_path / "b.ko").write_bytes(make_module("a"))
    (tmp_path / "c.ko").write_bytes(make_module("nowhere"))
    with pytest.raises(ImageBuildError, match="cycle"):
        resolve_modules(tmp_path, ["a"])
    with pytest.raises(ImageBuildError, match="nowhere not found"):
        resolve_modules(tmp_path, ["c"])


# --------------------------------------------------------------------------- cmdline


def test_kernel_cmdline_default() -> None:
    line = kernel_cmdline("10.241.0.100/24")
    assert line.split()[0] == "console=ttyS0"
    assert parse_cmdline(line) == {
        "ip": "10.241.0.100/24",
        "workload": "idle",
        "working_set_mib": "64",
        "dirty_rate_mib_s": "0",
        "integrity_mib": "32",
    }


@given(
    workload=st.sampled_from(["idle", "web", "memory"]),
    ws=st.integers(0, 4096),
    rate=st.integers(0, 10**7) | st.floats(0, 1e6, allow_nan=False),
    integrity=st.integers(0, 256),
    gateway=st.none() | st.just("10.241.0.1"),
)
def test_kernel_cmdline_round_trip(
    workload: str, ws: int, rate: float, integrity: int, gateway: str | None
) -> None:
    line = kernel_cmdline(
        "10.241.0.7/24",
        workload=workload,
        working_set_mib=ws,
        dirty_rate_mib_s=rate,
        integrity_mib=integrity,
        gateway=gateway,
        extra=["quiet"],
    )
    keys = parse_cmdline(line)
    assert keys["workload"] == workload
    assert int(keys["working_set_mib"]) == ws
    assert float(keys["dirty_rate_mib_s"]) == rate
    assert int(keys["integrity_mib"]) == integrity
    assert keys.get("gw") == gateway
    assert line.endswith(" quiet")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ip_cidr": "10.0.0.1"},
        {"ip_cidr": "10.0.0.1/24", "workload": "disk"},
        {"ip_cidr": "10.0.0.1/24", "working_set_mib": -1},
    ],
)
def test_kernel_cmdline_rejects(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        kernel_cmdline(**kwargs)


def test_init_sh_reads_every_key_kernel_cmdline_writes() -> None:
    init = (AGENT_SOURCE.parent / "init.sh").read_text()
    line = kernel_cmdline("10.0.0.1/24", gateway="10.0.0.254")
    for key in parse_cmdline(line):
        assert f"vmigrate.{key}=*)" in init


# --------------------------------------------------------------------------- apt (faked)


class FakeRun:
    """Stands in for proc.run: canned apt-cache answers, records calls."""

    def __init__(self, outputs: dict[str, str]) -> None:
        self.outputs = outputs
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        out = self.outputs.get(argv[-1])
        return subprocess.CompletedProcess(argv, 0 if out is not None else 100, out or "", "")


def test_resolve_kernel_package_remembers_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4").write_text("x")
    monkeypatch.setattr(debian, "APT_LISTS", lists)
    monkeypatch.setenv("VMIGRATE_CACHE", str(tmp_path / "cache"))
    fake = FakeRun(
        {
            "linux-image-cloud-amd64": "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\n"
            "Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n"
            "Description: meta\n more: text\n"
        }
    )
    monkeypatch.setattr(debian, "run", fake)
    assert debian.resolve_kernel_package() == ("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2")
    assert debian.resolve_kernel_package() == ("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2")
    assert len(fake.calls) == 1  # second answer came from the memo
    (lists / "new_Packages").write_text("changed")
    debian.resolve_kernel_package()
    assert len(fake.calls) == 2  # lists changed: asked again


def test_resolve_kernel_package_unversioned_depends(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "x_Packages").write_text("x")
    monkeypatch.setattr(debian, "APT_LISTS", lists)
    monkeypatch.setenv("VMIGRATE_CACHE", str(tmp_path / "cache"))
    fake = FakeRun(
        {
            "linux-image-cloud-amd64": "Depends: linux-image-6.1.0-9-cloud-amd64\n",
            "linux-image-6.1.0-9-cloud-amd64": "Version: 6.1.27-1\n",
        }
    )
    monkeypatch.setattr(debian, "run", fake)
    assert debian.resolve_kernel_package() == ("linux-image-6.1.0-9-cloud-amd64", "6.1.27-1")


def test_resolve_kernel_package_without_lists_says_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(debian, "APT_LISTS", tmp_path / "empty")
    monkeypatch.setenv("VMIGRATE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ImageBuildError, match="apt-get update"):
        debian.resolve_kernel_package(allow_update=False)


def test_busybox_missing_says_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian, "run", FakeRun({}))
    with pytest.raises(ImageBuildError, match="apt-get install busybox-static"):
        debian.busybox_version()


# --------------------------------------------------------------------------- agent client


def test_parse_ready_and_failures() -> None:
    uuid = "9490b2a5-2573-4ebb-8ae1-6dcf50548080"
    text = f"[ 1.0] boot\nvmigrate-init: eth0[ 2.0] tsc\nVMIGRATE-AGENT-READY boot_id={uuid}\n"
    assert agent_client.parse_ready(text) == uuid
    assert agent_client.parse_ready("VMIGRATE-AGENT-READY boot_id=") is None
    assert agent_client.console_failure(text) is None
    assert (
        agent_client.console_failure("a\nVMIGRATE-INIT-ERROR no eth0\n")
        == "VMIGRATE-INIT-ERROR no eth0"
    )


def test_parse_checksum() -> None:
    assert agent_client.parse_checksum("checksum fnv1a64=0123456789abcdef bytes=42") == (
        "0123456789abcdef",
        42,
    )
    with pytest.raises(GuestError):
        agent_client.parse_checksum("checksum nope")


def test_control_errors_name_the_target() -> None:
    with socket.socket() as s:  # a port nobody listens on (bound, not listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(GuestError, match=rf"127\.0\.0\.1:{port} 'ping'"):
            agent_client.control("127.0.0.1", "ping", port=port, timeout_s=2)
    with pytest.raises(GuestError, match="single line"):
        agent_client.control("127.0.0.1", "ping\nstatus")


# --------------------------------------------------------------------------- the agent itself


def reference_checksum(integrity_mib: int, boot_id: str) -> str:
    """What agent.c computes: xorshift64 fill seeded from the boot id, then FNV-1a 64."""
    mask = (1 << 64) - 1
    x = 0x9E3779B97F4A7C15
    for char in boot_id.encode():
        x = ((x ^ char) * 0x100000001B3) & mask
    x = x or 1
    words = []
    for _ in range(integrity_mib * 1024 * 1024 // 8):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
        words.append(x)
    data = struct.pack(f"<{len(words)}Q", *words)
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & mask
    return f"{h:016x}"


@pytest.fixture(scope="module")
def host_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """agent.c compiled with -Werror on the host and run on loopback with free ports."""
    options = ("--workload=memory", "--working-set-mib=4", "--dirty-rate-mib-s=2")
    with running_agent(tmp_path_factory.mktemp("agent"), *options, "--integrity-mib=1") as ports:
        yield ports


def http_exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def test_agent_checksum_matches_reference(host_agent: dict[str, int]) -> None:
    reply = agent_client.checksum("127.0.0.1", port=host_agent["control"])
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert agent_client.parse_checksum(reply) == (reference_checksum(1, boot_id), 1024 * 1024)
    assert reference_checksum(1, boot_id) != reference_checksum(1, "another boot")


def test_agent_verify_finds_no_lost_update_in_a_live_process(host_agent: dict[str, int]) -> None:
    time.sleep(0.2)  # the working set is touched and being dirtied
    pages, mismatches = agent_client.verify("127.0.0.1", port=host_agent["control"])
    assert (pages, mismatches) == (4 * 1024 * 1024 // 4096, 0)


def test_agent_status_and_http(host_agent: dict[str, int]) -> None:
    st1 = agent_client.status("127.0.0.1", port=host_agent["control"])
    body = agent_client.http_get("127.0.0.1", port=host_agent["http"])
    assert body["boot_id"] == st1["boot_id"]
    assert st1["workload"] == "memory" and st1["integrity_mib"] == 1
    time.sleep(0.3)
    st2 = agent_client.status("127.0.0.1", port=host_agent["control"])
    assert st2["dirtied_bytes"] > st1["dirtied_bytes"]


def test_agent_http_edge_cases(host_agent: dict[str, int]) -> None:
    port = host_agent["http"]
    http10 = http_exchange(port, b"GET / HTTP/1.0\r\n\r\n")  # 1.0 closes by default
    assert http10.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in http10
    head = http_exchange(port, b"HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    post = http_exchange(
        port, b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /x HTTP/1.1\r\n"
        b"connection: Close\r\n\r\n"
    )  # fmt: skip
    assert post.startswith(b"HTTP/1.1 405") and b"HTTP/1.1 404" in post
    big = http_exchange(port, b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 431")
    query = http_exchange(port, b"GET /?t=1 HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert query.startswith(b"HTTP/1.1 200")


def test_agent_many_keepalive_connections(host_agent: dict[str, int]) -> None:
    port = host_agent["http"]
    errors: list[str] = []

    def client() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                f = s.makefile("rb")
                for _ in range(20):
                    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    status = f.readline()
                    length = 0
                    while (line := f.readline()) != b"\r\n":
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    json.loads(f.read(length))
                    assert status.startswith(b"HTTP/1.1 200"), status
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


def test_agent_udp_echo(host_agent: dict[str, int]) -> None:
    for payload in (b"\x00", os.urandom(512), b"x" * 9000):
        assert agent_client.udp_echo("127.0.0.1", payload, port=host_agent["echo"]) == payload
