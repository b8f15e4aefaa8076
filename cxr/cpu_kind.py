"""Takes the CPU's feature flags (``/proc/cpuinfo`` or given); makes the CPU kind that INT8 verdicts are kept per.

INT8 arithmetic differs by instruction set (AMX tiles, AVX-512 VNNI, AVX-VNNI, plain AVX2 whose U8xS8 products
can saturate), so an INT8 graph is verified, recorded (``cxr.verified_precisions``) and chosen per kind.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path

CPU_KINDS: tuple[str, ...] = ("amx", "avx512_vnni", "avx_vnni", "avx2", "other")
"""From the fastest INT8 to none: the first whose flags the CPU has is its kind."""
_KIND_FLAGS: dict[str, tuple[str, ...]] = {
    "amx": ("amx_int8", "amx_tile"),
    "avx512_vnni": ("avx512_vnni",),
    "avx_vnni": ("avx_vnni",),
    "avx2": ("avx2",),
}
ISA_CAPS: dict[str, str] = {"avx512_vnni": "AVX512_CORE_VNNI", "avx_vnni": "AVX2_VNNI", "avx2": "AVX2"}
"""A kind -> the ``ONEDNN_MAX_CPU_ISA`` value that makes a bigger CPU run as that kind (a stand-in)."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The flags of the first CPU in ``cpuinfo`` (empty where the file does not exist: not Linux)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_kind(flags: Iterable[str] | None = None) -> str:
    """The kind (one of ``CPU_KINDS``) of a CPU with ``flags`` (default: this machine's)."""
    have = frozenset(cpu_flags() if flags is None else flags)
    if not have and flags is None and platform.machine().lower() in ("arm64", "aarch64"):
        return "other"
    for kind, needed in _KIND_FLAGS.items():
        if all(f in have for f in needed):
            return kind
    return "other"
