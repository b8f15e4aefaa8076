"""cxr.cpu_kind on made-up CPUs: flags -> kind (fastest INT8 first), /proc/cpuinfo parsing, and the oneDNN ISA
cap (ONEDNN_MAX_CPU_ISA) making a bigger CPU run as a smaller kind, never a bigger one."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr.cpu_kind import CPU_KINDS, ISA_CAPS, cpu_flags, cpu_kind, isa_cap

SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"}
ZEN4 = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}
ALDER_LAKE = {"avx2", "avx_vnni"}
HASWELL = {"avx2", "fma"}


@pytest.mark.parametrize(
    ("flags", "kind"),
    [
        (SAPPHIRE_RAPIDS, "amx"),
        (ZEN4, "avx512_vnni"),
        (ALDER_LAKE, "avx_vnni"),
        (HASWELL, "avx2"),
        ({"sse4_2", "avx"}, "other"),
        ({"amx_tile", "avx2"}, "avx2"),  # AMX tiles without AMX-INT8 are no INT8 AMX
        (set(), "other"),
    ],
)
def test_flags_make_the_fastest_int8_kind(flags: set[str], kind: str) -> None:
    assert cpu_kind(flags) == kind


@pytest.mark.parametrize(
    ("flags", "cap", "kind"),
    [
        (SAPPHIRE_RAPIDS, "AVX2", "avx2"),
        (SAPPHIRE_RAPIDS, "avx512_core_vnni", "avx512_vnni"),  # oneDNN reads it case-insensitively
        (SAPPHIRE_RAPIDS, "AVX512_CORE_AMX", "amx"),
        (SAPPHIRE_RAPIDS, "ALL", "amx"),
        (ZEN4, "AVX2_VNNI", "avx_vnni"),  # a cap names what may run, not what the CPU has
        (HASWELL, "AVX512_CORE_AMX", "avx2"),  # a cap above the CPU changes nothing
        (ZEN4, "AVX512_CORE", "other"),  # AVX-512 without VNNI: no kind INT8 is recorded for
        (ZEN4, "SSE41", "other"),
        (ZEN4, "NOT_AN_ISA", "other"),
    ],
)
def test_the_isa_cap_makes_a_cpu_run_as_a_smaller_kind(flags: set[str], cap: str, kind: str) -> None:
    assert cpu_kind(flags, cap=cap) == kind


@pytest.mark.parametrize("kind", sorted(ISA_CAPS))
def test_each_stand_in_cap_makes_the_biggest_cpu_its_kind(kind: str) -> None:
    assert cpu_kind(SAPPHIRE_RAPIDS, cap=ISA_CAPS[kind]) == kind


@pytest.mark.parametrize(
    ("environ", "cap"),
    [({}, None), ({"ONEDNN_MAX_CPU_ISA": ""}, None), ({"ONEDNN_MAX_CPU_ISA": " avx2 "}, "AVX2")],
)
def test_isa_cap_reads_the_environment(environ: dict[str, str], cap: str | None) -> None:
    assert isa_cap(environ) == cap


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        (
            "processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n",
            {"fpu", "avx2", "avx512_vnni"},
        ),
        ("processor\t: 0\nFeatures\t: fp asimd asimddp\n", {"fp", "asimd", "asimddp"}),  # arm64
        ("processor\t: 0\nmodel name\t: x\n", set()),
    ],
)
def test_cpuinfo_gives_the_first_cpus_flags(tmp_path: Path, text: str, flags: set[str]) -> None:
    (tmp_path / "cpuinfo").write_text(text)
    got = cpu_flags(tmp_path / "cpuinfo")
    assert got == flags and cpu_kind(got) in CPU_KINDS


def test_no_cpuinfo_gives_no_flags(tmp_path: Path) -> None:
    assert cpu_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize(
    ("cap", "allows"),
    [(None, True), ("AVX2", False), ("avx2_vnni", False), ("AVX512_CORE_VNNI", False), ("AVX512_CORE_BF16", True),
     ("AVX512_CORE_AMX", True), ("ALL", True)],
)  # fmt: skip
def test_an_isa_cap_below_bf16_leaves_no_bf16(cap: str | None, allows: bool) -> None:
    from cxr.cpu_kind import cap_allows_bf16

    assert cap_allows_bf16(cap) is allows


@pytest.mark.parametrize(("cap", "has"), [(None, True), ("AVX2", False), ("AVX512_CORE_BF16", True)])
def test_openvino_bf16_support_follows_the_isa_cap(
    monkeypatch: pytest.MonkeyPatch, cap: str | None, has: bool
) -> None:
    """OpenVINO lists BF16 under an AVX2 cap and then cannot compile it: cxr asks the cap too."""
    from cxr.cpu_kind import ISA_ENV
    from cxr.openvino_session import cpu_has_bf16

    class Core:  # OpenVINO's answer on a BF16 CPU, whatever the cap
        def get_property(self, device: str, name: str) -> list[str]:
            return ["FP32", "BF16", "INT8"]

    if cap is None:
        monkeypatch.delenv(ISA_ENV, raising=False)
    else:
        monkeypatch.setenv(ISA_ENV, cap)
    assert cpu_has_bf16(Core()) is has
