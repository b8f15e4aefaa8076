"""Takes the CPU's feature flags (``/proc/cpuinfo`` or given); makes the CPU kind that INT8 verdicts are kept per.

INT8 arithmetic differs by instruction set (AMX tiles, AVX-512 VNNI, AVX-VNNI, plain AVX2 whose U8xS8 products
can saturate), so an INT8 graph is verified, recorded (``cxr.verified_precisions``) and chosen per kind.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Mapping
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
ISA_ENV = "ONEDNN_MAX_CPU_ISA"
_CAP_KINDS: dict[str, str | None] = {
    "ALL": None,
    "DEFAULT": None,
    "AVX10_1_512_AMX_FP16": "amx",
    "AVX10_1_512_AMX": "amx",
    "AVX512_CORE_AMX_FP16": "amx",
    "AVX512_CORE_AMX": "amx",
    "AVX10_1_512": "avx512_vnni",
    "AVX512_CORE_FP16": "avx512_vnni",
    "AVX512_CORE_BF16": "avx512_vnni",
    "AVX512_CORE_VNNI": "avx512_vnni",
    "AVX2_VNNI_2": "avx_vnni",
    "AVX2_VNNI": "avx_vnni",
    "AVX2": "avx2",
}
"""oneDNN's ``ONEDNN_MAX_CPU_ISA`` values -> the fastest kind they let run (None: no cap); any other value (SSE41,
AVX, AVX512_CORE without VNNI) leaves no kind INT8 is recorded for: ``other``."""


_CAPS_WITH_BF16 = frozenset(
    {"ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
     "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16"}
)  # fmt: skip


def cap_allows_bf16(cap: str | None) -> bool:
    """Whether oneDNN's ISA ``cap`` (``isa_cap()``; None: none) leaves BF16 kernels. OpenVINO's capability list
    ignores the cap: it still offers BF16 under ``AVX2`` and then fails to compile it."""
    return cap is None or cap.upper() in _CAPS_WITH_BF16


def has_bf16(flags: Iterable[str] | None = None, *, cap: str | None = None) -> bool:
    """Whether a CPU with ``flags`` (default: this one's) has BF16 kernels left under oneDNN's ISA ``cap``."""
    present = cpu_flags() if flags is None else frozenset(flags)
    return bool({"avx512_bf16", "amx_bf16"} & present) and cap_allows_bf16(cap)


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


def isa_cap(environ: Mapping[str, str] | None = None) -> str | None:
    """The ``ONEDNN_MAX_CPU_ISA`` cap set in ``environ`` (default: this process's), upper case; None when unset."""
    value = (os.environ if environ is None else environ).get(ISA_ENV, "").strip().upper()
    return value or None


def cpu_kind(flags: Iterable[str] | None = None, *, cap: str | None = None) -> str:
    """The kind (one of ``CPU_KINDS``) of a CPU with ``flags`` (default: this machine's), run under the oneDNN
    ISA ``cap`` (``isa_cap()``; OpenVINO honours it, onnxruntime's CPU kernels do not): the slower of the two."""
    kind = _flags_kind(flags)
    if cap is None or cap.upper() not in _CAP_KINDS:
        return kind if cap is None else "other"
    capped = _CAP_KINDS[cap.upper()]
    return kind if capped is None else max(kind, capped, key=CPU_KINDS.index)


def _flags_kind(flags: Iterable[str] | None) -> str:
    have = frozenset(cpu_flags() if flags is None else flags)
    if not have and flags is None and platform.machine().lower() in ("arm64", "aarch64"):
        return "other"
    for kind, needed in _KIND_FLAGS.items():
        if all(f in have for f in needed):
            return kind
    return "other"
