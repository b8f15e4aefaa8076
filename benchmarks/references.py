"""Takes a fused model's member files; makes the study's ONNX reference rows: the members as separate
sessions (``members_separate``) and the members in OpenVINO with its own defaults (``peer_openvino_defaults``).

Separate sessions: the members' own files, one session each, run in sequence, for every (provider,
precision) run and thread count of the fused model's rows. The peer: each member file compiled by OpenVINO
with no settings at all (its default inference precision: BF16 on CPUs with AVX512-BF16 or AMX, never
checked against FP32), run one after another; cxr's own OpenVINO rows run the fused graph and offer BF16
only after the agreement check recorded by ``cxr fuse``, so the comparison is like for like. Skipped, with
a note, when openvino is not installed. A ``Peer`` names other files run the same way (the NNCF peer of
``nncf_peer.py``: same row kind, its own model name); ``MemberAgreement`` gives a peer's rows the top-1
agreement of its worst member with that member's FP32 file. Under an ISA cap (``isa_cap.py``) "defaults"
are those of a CPU of that ISA. ``members_reference`` and ``peer_reference`` make the
``cxr.bench.run.Reference`` callables ``study.py`` hands to ``run_bench``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import isa_cap
import numpy as np

from cxr.bench.inputs import ModelFile, inspect_model
from cxr.bench.machine import PeakMemoryProbe
from cxr.bench.measure import (
    BenchContext,
    BenchInputs,
    cycled,
    effective_precision,
    guarded,
    make_row,
    measure,
    open_predictor,
)
from cxr.bench.run import Reference, Refusals, precision_refusals
from cxr.bench.types import BenchRow
from cxr.errors import ConfigError, DataError, ModelError, ProviderError
from cxr.imaging.preprocess import to_model_input
from cxr.openvino_session import OV_PRECISIONS, import_openvino
from cxr.runtime.predictor import Predictor
from cxr.session import cpu_session

log = logging.getLogger(__name__)

PEER_KIND = "peer_openvino_defaults"


def _expected_member_hashes(ensemble: ModelFile) -> dict[str, str | None]:
    out: dict[str, str | None] = {n: None for n in ensemble.member_order}
    for entry in ensemble.card.get("members", ()) or ():
        if isinstance(entry, Mapping) and "name" in entry:
            sha = entry.get("onnx_sha256")
            out[str(entry["name"])] = None if sha is None else str(sha)
    return out


def resolve_members(ensemble: ModelFile, specs: Sequence[Path]) -> tuple[ModelFile, ...]:
    """The ensemble's member files, in its ``member_order``, from files and/or folders of ``.onnx``.

    A file named explicitly must be one of the ensemble's members (by card name and, where the ensemble
    records it, by ``onnx_sha256``); files in a folder that are not are skipped.
    """
    if ensemble.kind != "ensemble" or not ensemble.member_order:
        raise ConfigError(
            f"--member-models compares a fused ensemble with its members run separately, but {ensemble.path} "
            "is a single member (no member_order in its metadata)",
            hint="pass the fused ensemble as --model, or drop --member-models",
        )
    expected = _expected_member_hashes(ensemble)
    found: dict[str, list[ModelFile]] = {}
    for spec in specs:
        candidates, explicit = _member_candidates(Path(spec))
        for path in candidates:
            mf = _accept_member(ensemble, path, expected, explicit)
            if mf is not None:
                found.setdefault(str(mf.member_name), []).append(mf)
    missing = [n for n in ensemble.member_order if n not in found]
    if missing:
        raise ModelError(
            f"members {', '.join(missing)} of {ensemble.name} were not found in {', '.join(map(str, specs))}",
            hint="pass the folder holding all exported members (e.g. RUN_DIR/onnx) or every member file",
        )
    return tuple(_one_file(ensemble, name, found[name]) for name in ensemble.member_order)


def _member_candidates(spec: Path) -> tuple[list[Path], bool]:
    """The ``.onnx`` files ``spec`` stands for, and whether it named a file explicitly."""
    if spec.is_dir():
        return sorted(spec.glob("*.onnx")), False
    if spec.is_file():
        return [spec], True
    raise DataError(f"member path {spec} does not exist", hint="pass member .onnx files or their folder")


def _accept_member(
    ensemble: ModelFile, path: Path, expected: Mapping[str, str | None], explicit: bool
) -> ModelFile | None:
    """``path`` as a member of ``ensemble``: a folder's other files are skipped (None), a named one refused."""
    if path.resolve() == ensemble.path.resolve():
        return None
    try:
        mf = inspect_model(path)
    except ModelError:
        if explicit:
            raise
        log.info("skipping %s: not a cxr model", path)
        return None
    reason = _member_mismatch(ensemble, mf, expected)
    if reason is None:
        return mf
    if explicit:
        raise ModelError(
            f"{path} is not a member of {ensemble.name}: {reason}",
            hint="pass the member files the ensemble was fused from (same export)",
            path=path,
        )
    log.info("skipping %s: %s", path, reason)
    return None


def _one_file(ensemble: ModelFile, name: str, files: list[ModelFile]) -> ModelFile:
    """The one file for member ``name``: the one of the ensemble's precision when several were found."""
    if len(files) > 1:
        same = [f for f in files if f.precision == ensemble.precision]
        files = same if len(same) == 1 else files
    if len(files) > 1:
        raise ModelError(
            f"several files for member {name}: {', '.join(str(f.path) for f in files)}",
            hint="pass the member files explicitly",
        )
    return files[0]


def _member_mismatch(ensemble: ModelFile, mf: ModelFile, expected: Mapping[str, str | None]) -> str | None:
    if mf.kind != "member":
        return "it is not a single-member model"
    if mf.member_name not in expected:
        return (
            f"its card names member {mf.member_name!r}, the ensemble has {', '.join(ensemble.member_order)}"
        )
    sha = expected[str(mf.member_name)]
    if sha is not None and sha != mf.sha256:
        return (
            f"its sha256 {mf.sha256[:12]} differs from the {sha[:12]} the ensemble records for "
            f"{mf.member_name} (metadata hash mismatch)"
        )
    if mf.metadata.classes != ensemble.metadata.classes:
        return f"its classes {mf.metadata.classes} differ from the ensemble's {ensemble.metadata.classes}"
    return None


def _sequence_call(predictors: Sequence[Predictor], xs: Sequence[np.ndarray]) -> Callable[[], None]:
    """One call = every member's session run on its own pre-normalised input, in sequence."""

    def call() -> None:
        for p, x in zip(predictors, xs, strict=True):
            p.run(x)

    return call


def _members_row(
    ctx: BenchContext,
    main: ModelFile,
    members: Sequence[ModelFile],
    opened: Sequence[tuple[Predictor, float]],
    run: tuple[str, str],
) -> Callable[..., BenchRow]:
    """make_row with the fields every separate-sessions row of one (provider, precision) shares."""
    predictors = [p for p, _ in opened]
    flops_each = [m.flops_per_image for m in members]
    flops = (
        sum(f for f in flops_each if f is not None)
        if all(f is not None for f in flops_each)
        else main.flops_per_image
    )
    return functools.partial(
        make_row,
        ctx,
        kind="members_separate",
        model=main.name,
        model_kind=main.kind,
        precision=effective_precision(main.precision, predictors[0].info.precision),
        precision_requested=run[1],
        provider_requested=run[0],
        providers_used=predictors[0].info.providers,
        concurrency=1,
        mode="session",
        sessions=len(predictors),
        create_s=sum(s for _, s in opened),
        flops=flops,
        sha=main.sha256[:16],
        warnings=tuple(w for p in predictors for w in p.info.warnings),
    )


def bench_members(
    ctx: BenchContext,
    main: ModelFile,
    members: Sequence[ModelFile],
    inputs: BenchInputs,
    probe: PeakMemoryProbe,
    refused: Refusals,
) -> None:
    """The members of ``main`` run one after another in their own sessions: the fused graph's reference."""
    cfg = ctx.cfg
    for provider, precision in cfg.runs:
        if any((m.path, provider, precision) in refused for m in members):
            continue  # the note was written when the refusal was found
        for threads in cfg.threads:
            session = cfg.session_for(provider, precision, threads)
            opened = [open_predictor(m.path, session) for m in members]
            row = _members_row(ctx, main, members, opened, (provider, precision))
            for batch in cfg.batch_sizes:
                grays = cycled(inputs.grays, batch)
                xs = [p.prepare(grays) for p, _ in opened]
                call = _sequence_call([p for p, _ in opened], xs)
                timed, mem = measure(probe, [guarded(call, f"members of {main.name}", batch)], cfg.plan)
                ctx.add(row(batch=batch, threads=threads, timed=timed, memory=mem))
            del opened


@dataclass(frozen=True)
class Peer:
    """One peer: the files OpenVINO compiles with its defaults, one per member in member order."""

    files: tuple[Path, ...]
    model: str | None = None  # the rows' model name (None: the fused model's)
    what: str = "OpenVINO-defaults peer"
    warning: str = "peer: OpenVINO's own default precision ({precision}), not checked against FP32"
    precision: str | None = None  # what the files' weights are (``int8``), else the compiled precision


def _compile(files: Sequence[Path], threads: int | None) -> tuple[list[Any], str, float]:
    core = import_openvino().Core()
    config: dict[str, Any] = dict(isa_cap.openvino_defaults())
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    t0 = time.perf_counter()
    compiled = [core.compile_model(str(f), "CPU", config) for f in files]
    hint = compiled[0].get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return compiled, OV_PRECISIONS.get(hint, hint), time.perf_counter() - t0


def bench_openvino_defaults(
    ctx: BenchContext,
    main: ModelFile,
    members: Sequence[ModelFile],
    inputs: BenchInputs,
    probe: PeakMemoryProbe,
    peer: Peer | None = None,
    agree: MemberAgreement | None = None,
) -> None:
    """A peer (default: the member files themselves) in OpenVINO with its defaults, in sequence, at every
    batch size and thread count; ``agree``: its worst member's top-1 agreement with FP32 on real images."""
    peer = peer or Peer(tuple(m.path for m in members))
    try:
        import_openvino()
    except ProviderError as e:
        ctx.notes.append(f"no {peer.what} row: {e.message}")
        return
    flops_each = [m.flops_per_image for m in members]
    flops = sum(f for f in flops_each if f is not None) if all(f is not None for f in flops_each) else None
    agreement = None
    for threads in ctx.cfg.threads:
        compiled, float_precision, create_s = _compile(peer.files, threads)
        if agree is not None and agreement is None:
            agreement = agree.of(compiled)
        precision = peer.precision or float_precision
        warnings = (peer.warning.format(precision=float_precision), *isa_cap.row_warnings())
        for batch in ctx.cfg.batch_sizes:
            grays = cycled(inputs.grays, batch)
            xs = [to_model_input(grays, m.metadata.preprocess, normalized=True) for m in members]

            def call(xs: Sequence[np.ndarray] = xs, models: Sequence[Any] = compiled) -> None:
                for model, x in zip(models, xs, strict=True):
                    model(x)

            timed, mem = measure(probe, [guarded(call, f"{peer.what} of {main.name}", batch)], ctx.cfg.plan)
            ctx.add(
                make_row(
                    ctx,
                    kind=PEER_KIND,
                    model=peer.model or main.name,
                    model_kind=main.kind,
                    precision=precision,
                    precision_requested="auto",  # OpenVINO's own choice; the row's warning says it is unverified
                    provider_requested="openvino",
                    providers_used=("openvino",),
                    batch=batch,
                    threads=threads,
                    concurrency=1,
                    mode="session",
                    sessions=len(compiled),
                    timed=timed,
                    memory=mem,
                    create_s=create_s,
                    flops=flops,
                    sha=main.sha256[:16],
                    warnings=warnings,
                    agreement=agreement,
                )
            )


class MemberAgreement:
    """Top-1 agreement of a peer's compiled members with the member FP32 files (onnxruntime CPU) on real
    images; the reference labels are computed once and shared by every peer of a run."""

    def __init__(self, members: Sequence[ModelFile], grays: Sequence[np.ndarray]) -> None:
        self.members = tuple(members)
        self.grays = tuple(grays)
        self._reference: list[np.ndarray] | None = None

    def _top1(self, run: Callable[[np.ndarray], np.ndarray], member: ModelFile) -> np.ndarray:
        spec = member.metadata.preprocess
        out = [
            np.argmax(run(to_model_input(self.grays[i : i + 8], spec, normalized=True)), axis=1)
            for i in range(0, len(self.grays), 8)
        ]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def reference(self) -> list[np.ndarray]:
        if self._reference is None:
            labels = []
            for m in self.members:
                sess = cpu_session(m.path)
                name = sess.get_inputs()[0].name

                def run(x: np.ndarray, sess: Any = sess, name: str = name) -> np.ndarray:
                    return np.asarray(sess.run(None, {name: x})[0])

                labels.append(self._top1(run, m))
            self._reference = labels
        return self._reference

    def of(self, compiled: Sequence[Any]) -> dict[str, Any]:
        """``{"top1": worst member's agreement, "images", "reference", "members": each}``."""
        each: dict[str, float] = {}
        for m, model, ref in zip(self.members, compiled, self.reference(), strict=True):

            def run(x: np.ndarray, model: Any = model) -> np.ndarray:
                return np.asarray(model(x)[0])

            each[str(m.member_name or m.name)] = float(np.mean(self._top1(run, m) == ref))
        return {
            "top1": min(each.values()) if each else 1.0,
            "images": len(self.grays),
            "reference": "each member's FP32 file on onnxruntime cpu (worst member)",
            "members": each,
        }


def members_reference(members: Sequence[ModelFile], strict: bool = False) -> Reference:
    """The separate-sessions rows of ``members`` (resolved by ``resolve_members``) as a run reference."""

    def add(ctx: BenchContext, main: ModelFile, inputs: BenchInputs, probe: PeakMemoryProbe) -> None:
        refused, notes = precision_refusals(members, ctx.cfg.runs, strict)
        ctx.notes.extend(notes)
        bench_members(ctx, main, members, inputs, probe, refused)

    return add


def peer_reference(
    members: Sequence[ModelFile], peer: Peer | None = None, agree: MemberAgreement | None = None
) -> Reference:
    """The rows of a peer of ``members`` (default: the member files in OpenVINO with its defaults)."""

    def add(ctx: BenchContext, main: ModelFile, inputs: BenchInputs, probe: PeakMemoryProbe) -> None:
        bench_openvino_defaults(ctx, main, members, inputs, probe, peer, agree)

    return add
