"""Takes a model file, the asked provider and precision, its ``cxr.verified_precisions`` records and this CPU;
makes the file, provider and precision that run (``Int8Plan``, ``PrecisionChoice``) and the note saying why.

BF16 (OpenVINO) runs only with CPU support and an accepted ``openvino_bf16`` record. INT8 runs the
``<stem>.int8.onnx`` beside the FP32 file (or the INT8 file given as the model) only where the record for that
backend (``INT8_RECORDS``) has an accepted entry for this CPU's kind (``cxr.cpu_kind``) and the file's sha256
is the one checked. ``auto`` is the fastest of those allowed: int8 > bf16 > fp32.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cxr.cpu_kind import cpu_kind, has_bf16, isa_cap
from cxr.digest import file_sha256
from cxr.errors import ModelError, ProviderError
from cxr.onnx_header import read_onnx_header
from cxr.spec import INT8_RECORDS, META_CARD, META_VERIFIED_PRECISIONS

Precision = Literal["auto", "fp32", "bf16", "int8"]
PRECISION_NAMES: tuple[str, ...] = ("auto", "fp32", "bf16", "int8")
BF16_RECORD = "openvino_bf16"
REFUSE_HINT = (
    "re-fuse the model with its OpenVINO BF16 check (`cxr fuse RUN_DIR` records cxr.verified_precisions), "
    "or use --precision fp32 (or auto)"
)
INT8_HINT = (
    "re-fuse the model with its INT8 check on a CPU of this kind (`cxr fuse RUN_DIR` records "
    "cxr.verified_precisions per CPU kind), or use --precision auto (or fp32)"
)
INT8_SUFFIX = ".int8.onnx"
INT8_RECORD = dict(zip(("openvino", "cpu"), INT8_RECORDS, strict=True))
"""The provider that runs an INT8 file -> its record in ``cxr.verified_precisions``."""


@dataclass(frozen=True)
class PrecisionChoice:
    precision: Literal["fp32", "bf16", "int8"]
    note: str | None = None  # why "auto" chose it (None for an explicit request)


@dataclass(frozen=True)
class Int8Plan:
    model: Path  # the file to open: the one given, or the INT8 file beside it
    provider: str  # the provider to open it with: the one asked, or INT8's backend (provider auto on a CPU)
    int8: tuple[bool, str] | None = None  # (runs in INT8, why) for that provider; None: INT8 was no question
    props: Mapping[str, str] | None = None  # the given file's metadata (None when not read: fp32/bf16 asked)


def verified_record(
    props: Mapping[str, str], model_name: str, key: str = BF16_RECORD
) -> dict[str, Any] | None:
    """The model's ``key`` verification record (OpenVINO BF16, an INT8 one), or None when it has none."""
    raw = props.get(META_VERIFIED_PRECISIONS)
    if raw is None:
        return None
    try:
        records = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ProviderError(
            f"{model_name}: metadata {META_VERIFIED_PRECISIONS} is not valid JSON ({e})",
            hint="re-fuse the model (`cxr fuse RUN_DIR` writes its verification records), or use --precision fp32",
        ) from e
    record = records.get(key) if isinstance(records, dict) else None
    return record if isinstance(record, dict) else None


def record_verdict(
    record: Mapping[str, Any] | None, what: str = "BF16", key: str = BF16_RECORD
) -> tuple[bool, str]:
    """(accepted, why): whether a verification record (``agreement``, ``bar``, ``images``, ``accepted``,
    ``reason``; an INT8 one also ``sensitivity_change_points`` and ``sensitivity_bar``) lets ``what`` run."""
    if record is None:
        return False, f"the model's metadata has no {key!r} record in {META_VERIFIED_PRECISIONS}"
    agreement, images, bar = record.get("agreement"), record.get("images"), record.get("bar")
    measured = (
        f"top-1 agreement {agreement:.4f} with FP32 on {images} images, bar {bar}"
        if isinstance(agreement, int | float) and isinstance(bar, int | float)
        else "no agreement figures recorded"
    )
    moved, limit = record.get("sensitivity_change_points"), record.get("sensitivity_bar")
    worst = None
    if isinstance(moved, Mapping) and isinstance(limit, int | float):
        worst = max((abs(v) for v in moved.values() if isinstance(v, int | float)), default=0.0)
        measured += f"; sensitivity moved at most {worst:.2f} points, bar {limit}"
    reason = str(record.get("reason") or "").strip()
    if record.get("accepted") is not True:
        return False, f"the model's {what} check refused it: {reason or 'no reason recorded'} ({measured})"
    if isinstance(agreement, int | float) and isinstance(bar, int | float) and agreement < bar:
        return (
            False,
            f"the model's {what} record says accepted but its agreement is under its bar ({measured})",
        )
    if worst is not None and isinstance(limit, int | float) and worst > limit:
        return (
            False,
            f"the model's {what} record says accepted but a sensitivity moved over its bar ({measured})",
        )
    return True, f"the model's {what} check accepted it ({measured})"


def choose_precision(
    requested: str,
    *,
    cpu_bf16: bool | None,
    props: Mapping[str, str],
    model_name: str,
    int8: tuple[bool, str] | None = None,
    backend: str = "openvino",
) -> PrecisionChoice:
    """``requested`` as ``SessionConfig`` checked it: fp32 as asked; int8 only with an accepting ``int8``
    verdict (``cxr.precision.int8_verdict``: this backend, this CPU kind, the checked file; None: the model
    has no INT8 variant); bf16 only with CPU support and an accepting record (``cpu_bf16`` None: the backend
    runs no BF16, onnxruntime); else ProviderError. auto: the fastest allowed (int8 > bf16 > fp32), with a
    note saying which and why (none when INT8 was no question and the backend has no BF16)."""
    if requested == "fp32":
        return PrecisionChoice("fp32")
    not_int8 = f"not int8 ({int8[1]}); " if int8 is not None else ""

    def note(runs: str, why: str) -> str:
        return f"{backend} precision auto -> {runs} for {model_name}: {why}"

    if int8 is not None and int8[0] and requested in ("auto", "int8"):
        return PrecisionChoice("int8", note("int8", int8[1]) if requested == "auto" else None)
    if requested == "int8":
        why = int8[1] if int8 is not None else "it has no INT8 variant (no INT8 record, no INT8 file)"
        raise ProviderError(f"refusing to run {model_name} in int8: {why}", hint=INT8_HINT)
    if cpu_bf16 is None:
        return PrecisionChoice(
            "fp32", None if int8 is None else note("fp32", not_int8 + "runs the FP32 file")
        )
    accepted, why = record_verdict(verified_record(props, model_name))
    cpu_why = "this CPU has no BF16 support (OpenVINO's OPTIMIZATION_CAPABILITIES lacks BF16)"
    if requested == "bf16":
        if not cpu_bf16:
            raise ProviderError(
                f"cannot run {model_name} in bf16: {cpu_why}", hint="use --precision fp32 or auto"
            )
        if not accepted:
            raise ProviderError(f"refusing to run {model_name} in bf16: {why}", hint=REFUSE_HINT)
        return PrecisionChoice("bf16")
    if cpu_bf16 and accepted:
        return PrecisionChoice("bf16", note("bf16", not_int8 + why))
    return PrecisionChoice("fp32", note("fp32", not_int8 + (cpu_why if not cpu_bf16 else why)))


def _card(props: Mapping[str, str]) -> Mapping[str, object]:
    try:
        card = json.loads(props.get(META_CARD, "{}"))
    except json.JSONDecodeError:
        return {}
    return card if isinstance(card, dict) else {}


def is_int8_file(model: Path, props: Mapping[str, str]) -> bool:
    """Whether ``model`` is itself an INT8 file (its card says so, or its name ends in ``.int8.onnx``)."""
    return model.name.endswith(INT8_SUFFIX) or str(_card(props).get("precision", "")).lower() == "int8"


def int8_file(model: Path, props: Mapping[str, str]) -> Path:
    """The INT8 file for ``model``: itself when it is one, else ``<stem>.int8.onnx`` beside it (a heatmap twin's
    would be ``<stem>.heatmaps.int8.onnx``, which fuse never writes: heatmaps stay FP32/BF16)."""
    if is_int8_file(model, props):
        return model
    return model.with_name(model.name.removesuffix(".onnx") + INT8_SUFFIX)


def int8_verdict(model: Path, props: Mapping[str, str], provider: str, kind: str) -> tuple[bool, str] | None:
    """(accepted, why) for running ``model``'s INT8 file on ``provider`` (openvino or cpu) on a CPU of ``kind``;
    None when INT8 is no question (no INT8 record of any backend and ``model`` is no INT8 file)."""
    key = INT8_RECORD[provider]
    target = int8_file(model, props)
    fp32 = model.with_name(model.name.removesuffix(INT8_SUFFIX) + ".onnx")
    own = target == model and (fp32 == model or not fp32.is_file())  # alone: its own record, sha unchecked
    if target == model and not own:  # the FP32 file beside it names its sha256 (the file cannot name its own)
        props = read_onnx_header(fp32).metadata
    records = [verified_record(props, model.name, k) for k in INT8_RECORDS]
    if not any(records) and target != model:
        return None
    record = records[INT8_RECORDS.index(key)]
    if record is None:
        return record_verdict(None, key=key)
    kinds: dict[str, Any] = record["kinds"] if isinstance(record.get("kinds"), dict) else {}
    entry = kinds.get(kind)
    if not isinstance(entry, dict):
        checked = ", ".join(sorted(kinds)) or "none"
        return False, f"its {key} record has no entry for this CPU's kind {kind!r} (checked on: {checked})"
    if not target.is_file():
        return False, f"{target.name} is not beside {model.name}"
    if not own and file_sha256(target) != record.get("sha256"):
        return False, f"{target.name} is not the file its {key} record checked (sha256 differs)"
    bar: dict[str, Any] = record["bar"] if isinstance(record.get("bar"), dict) else {}
    flat = {
        **entry,
        "bar": bar.get("agreement"),
        "images": record.get("images"),
        "sensitivity_bar": bar.get("sensitivity_points"),
    }
    accepted, why = record_verdict(flat, what=f"INT8 ({key}, {kind} CPU)", key=key)
    return accepted, why + (
        f"; its own record, sha256 unchecked: {fp32.name} is not beside it" if own else ""
    )


def bf16_over_int8(props: Mapping[str, str], model_name: str, backend: str) -> str | None:
    """Why ``--precision auto`` on OpenVINO runs the verified BF16 graph rather than an accepted INT8 graph, or
    None: the INT8 graph keeps some members in FP32 (its record's ``float_members``), this CPU has BF16 kernels
    (and no ISA cap takes them away) and the model's BF16 check accepted it. Those members then run at FP32
    speed inside the INT8 graph while BF16 speeds up every member (measured on the rehearsal ensemble:
    benchmarks/README.md, "INT8 verdict on the rehearsal ensemble")."""
    record = verified_record(props, model_name, INT8_RECORD[backend]) or {}
    in_float = record.get("float_members")
    if not isinstance(in_float, list) or not in_float:
        return None
    if not has_bf16(cap=isa_cap()):
        return None
    if not record_verdict(verified_record(props, model_name))[0]:
        return None
    return (
        f"its INT8 graph is verified but runs {', '.join(map(str, in_float))} in FP32, and on this BF16 CPU the "
        "verified BF16 graph is faster; --precision int8 runs the INT8 graph"
    )


def plan_int8(
    model: Path, provider: str, precision: str, backends: Sequence[str], kind: str | None = None
) -> Int8Plan:
    """Where INT8 runs for ``precision`` (auto or int8) on ``provider``: the first of ``backends`` (the CPU
    providers that may run it, best first) whose verdict accepts it; ``ProviderError`` naming the model, the
    CPU kind and the fix when int8 is asked and none does. An INT8 file given as the model runs as given
    under auto (its verdict in the note). ``kind``: this CPU's (default ``cpu_kind``, OpenVINO's capped)."""
    if precision not in ("auto", "int8"):
        return Int8Plan(model, provider)
    try:
        props = read_onnx_header(model).metadata
    except ModelError:
        if precision == "int8":
            raise
        return Int8Plan(model, provider)  # no INT8 question: the session's loader says what is wrong
    verdicts: list[tuple[str, str, tuple[bool, str] | None]] = []
    for backend in backends:
        k = kind or cpu_kind(cap=isa_cap() if backend == "openvino" else None)
        verdicts.append((backend, k, int8_verdict(model, props, backend, k)))
    for backend, _, verdict in verdicts:
        if verdict is not None and verdict[0]:
            if precision == "auto" and provider == "openvino" and not is_int8_file(model, props):
                why = bf16_over_int8(props, model.name, backend)
                if why is not None:
                    return Int8Plan(model, provider, (False, why), props)
            return Int8Plan(int8_file(model, props), backend, verdict, props)
    asked = [(b, k, v) for b, k, v in verdicts if v is not None]
    if precision == "int8":
        if not backends:
            why = f"provider {provider!r} is no CPU provider INT8 is verified on"
            raise ProviderError(
                f"refusing to run {model.name} in int8: {why}",
                hint="use --provider openvino or cpu for int8, or --precision auto",
            )
        k = verdicts[0][1]
        why = "; ".join(f"{b}: {v[1]}" for b, _, v in asked) or "it has no INT8 record and no INT8 file"
        raise ProviderError(
            f"refusing to run {model.name} in int8 on this CPU (kind {k!r}): {why}", hint=INT8_HINT
        )
    if not asked:
        return Int8Plan(model, provider, None, props)
    backend, k, verdict = asked[0]
    if verdict is not None and is_int8_file(model, props):  # the user chose this file: it runs, and says so
        why = f"it was given as the model and runs as given, unverified on this {k} CPU: {verdict[1]}"
        return Int8Plan(model, backend, (True, why), props)
    return Int8Plan(model, provider, verdict, props)
