"""Takes a model file, the asked provider and precision, and this CPU's kind; makes ``Int8Plan``: the file and
provider that run and the INT8 verdict behind it.

INT8 runs the ``<stem>.int8.onnx`` beside the FP32 file (or the INT8 file given as the model) only where the
model's record for that backend (``INT8_RECORDS``) has an accepted entry for this CPU's kind
(``cxr.cpu_kind``) and the file's sha256 is the one checked. ``choose_precision`` turns the verdict into the
precision that runs and the note that says why.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr.cpu_kind import cpu_kind, isa_cap
from cxr.digest import file_sha256
from cxr.errors import ModelError, ProviderError
from cxr.onnx_header import read_onnx_header
from cxr.openvino_session import INT8_HINT, record_verdict, verified_record
from cxr.spec import INT8_RECORDS, META_CARD

INT8_SUFFIX = ".int8.onnx"
INT8_RECORD = dict(zip(("openvino", "cpu"), INT8_RECORDS, strict=True))
"""The provider that runs an INT8 file -> its record in ``cxr.verified_precisions``."""


@dataclass(frozen=True)
class Int8Plan:
    model: Path  # the file to open: the one given, or the INT8 file beside it
    provider: str  # the provider to open it with: the one asked, or INT8's backend (provider auto on a CPU)
    int8: tuple[bool, str] | None = None  # (runs in INT8, why) for that provider; None: INT8 was no question
    props: Mapping[str, str] | None = None  # the given file's metadata (None when not read: fp32/bf16 asked)


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
    kinds = record.get("kinds") if isinstance(record.get("kinds"), dict) else {}
    entry = kinds.get(kind) if kinds else None
    if not isinstance(entry, dict):
        checked = ", ".join(sorted(kinds)) or "none"
        return False, f"its {key} record has no entry for this CPU's kind {kind!r} (checked on: {checked})"
    if not target.is_file():
        return False, f"{target.name} is not beside {model.name}"
    if not own and file_sha256(target) != record.get("sha256"):
        return False, f"{target.name} is not the file its {key} record checked (sha256 differs)"
    bar = record.get("bar") if isinstance(record.get("bar"), dict) else {}
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
