"""Pre-flight on your own hosts: libvirt's answers as checks with their fixes."""

from __future__ import annotations

from vmigrate.hypervisor.libvirt_hosts import domain_cpu, host_model_cpu
from vmigrate.migration.preflight_hosts import cache_check, cpu_check, memory_check

MIB = 1024 * 1024


def test_an_incompatible_cpu_fails_with_libvirts_words_and_a_baseline_fix() -> None:
    check = cpu_check(False, "host CPU lacks avx2, fma", "Skylake-Client", "Westmere")
    assert check.status == "fail"
    assert "host CPU does not provide required features" in check.message
    assert "avx2, fma" in check.message
    assert "<model>Westmere</model>" in check.fix
    assert cpu_check(True, "superset", "qemu64", "EPYC").status == "pass"
    passthrough = cpu_check(None, "host-passthrough: the very same CPU", "", "")
    assert passthrough.status == "warn" and "hypervisor-cpu-baseline" in passthrough.fix


def test_memory_counts_qemus_own_on_top_of_the_domains() -> None:
    assert memory_check(512 * MIB, 800 * MIB).status == "pass"
    short = memory_check(512 * MIB, 600 * MIB)
    assert short.status == "fail" and short.figures["needed_bytes"] == (512 + 192) * MIB


DISKS = """<domain type='kvm'><devices>
  <disk type='file' device='disk'><driver name='qemu' cache='{cache}'/><target dev='vda'/></disk>
  <disk type='file' device='cdrom'><driver name='qemu'/><target dev='sda'/><readonly/></disk>
</devices></domain>"""


def test_a_shared_disk_cached_on_the_source_is_unsafe() -> None:
    assert cache_check(DISKS.format(cache="none"), "shared-nfs", False).status == "pass"
    unsafe = cache_check(DISKS.format(cache="writeback"), "shared-nfs", False)
    assert unsafe.status == "fail" and "vda (cache=writeback)" in unsafe.message
    assert "sda" not in unsafe.message  # a read-only CD-ROM cannot go stale
    assert cache_check(DISKS.format(cache="writeback"), "shared-nfs", True).status == "warn"
    assert cache_check(DISKS.format(cache="writeback"), "local", False).status == "pass"


def test_the_cpu_of_a_domain_and_of_a_host() -> None:
    virt, mode, model, cpu = domain_cpu(
        "<domain type='qemu'><cpu mode='custom'><model>qemu64</model></cpu></domain>"
    )
    assert (virt, mode, model) == ("qemu", "custom", "qemu64") and cpu.startswith("<cpu")
    assert domain_cpu("<domain type='kvm'/>") == ("kvm", "default", "", "")
    caps = """<domainCapabilities><cpu><mode name='host-model' supported='yes'>
      <model fallback='forbid'>EPYC</model><feature policy='require' name='x2apic'/>
    </mode></cpu></domainCapabilities>"""
    host = host_model_cpu(caps)
    assert '<model fallback="forbid">EPYC</model>' in host
    assert 'name="x2apic"' in host
