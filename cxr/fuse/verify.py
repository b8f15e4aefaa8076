"""Prove the fused graph right: against the separate pipeline, and end to end against PyTorch.

Takes: the fused ONNX path and the parts. Makes: ``ParityReport`` (vs the members and the meta-learner in
their own sessions, seeded random images, each batch size), ``EndToEndReport`` (top-1 vs the PyTorch test
predictions + scikit-learn) and the batch-1 latency; a failed check raises ``VerificationError``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from cxr.errors import DataError, VerificationError
from cxr.fuse.members import MemberModel
from cxr.fuse.resize import member_input
from cxr.session import cpu_session as session
from cxr.spec import (
    INPUT_IMAGE,
    OUTPUT_LABEL,
    OUTPUT_MEMBER_PROBABILITIES,
    OUTPUT_PROBABILITIES,
    PreprocessSpec,
    softmax,
)


@dataclass(frozen=True)
class ParityReport:
    batches: tuple[int, ...]
    max_abs_diff_probabilities: float
    max_abs_diff_member_probabilities: float
    labels_equal: bool
    tolerance: float
    shapes: dict[int, dict[str, list[int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class EndToEndReport:
    n: int
    top1_identical: bool
    mismatches: tuple[str, ...]
    max_abs_diff_probabilities: float
    member_top1_agreement: dict[str, float]


class SeparatePipeline:
    """The reference: each member and the meta-learner in its own session, glue in numpy."""

    def __init__(
        self,
        members: Sequence[MemberModel],
        meta_path: Path,
        fused_size: tuple[int, int],
        orders: dict[str, str],
        threads: int | None = None,
        optimize: bool = True,
    ) -> None:
        self.members = list(members)
        self.sessions = [session(m.path, threads, optimize=optimize) for m in members]
        self.meta = session(meta_path, threads, optimize=optimize)
        self.fused_size = fused_size
        self.orders = orders

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 [N, 1, H, W] -> (probabilities [N, K], labels [N], member probabilities [N, M, K])."""
        gray = images.astype(np.float32)
        member_probs = []
        for m, sess in zip(self.members, self.sessions, strict=True):
            inp = sess.get_inputs()[0]
            order = self.orders.get(m.name, "hv")
            x = member_input(gray, m.input_size, order, m.meta.preprocess, inp.type)
            logits = sess.run(None, {inp.name: x})[0].astype(np.float32)
            member_probs.append(softmax(logits, np.float32))
        stacked = np.stack(member_probs, axis=1)
        n = stacked.shape[0]
        feats = stacked.reshape(n, -1)
        meta_in = self.meta.get_inputs()[0]
        feats = feats.astype(np.float64 if meta_in.type == "tensor(double)" else np.float32)
        label, probs = self.meta.run([OUTPUT_LABEL, OUTPUT_PROBABILITIES], {meta_in.name: feats})
        return probs.astype(np.float32), label, stacked


def _run_fused(sess: ort.InferenceSession, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    probs, label, member = sess.run(
        [OUTPUT_PROBABILITIES, OUTPUT_LABEL, OUTPUT_MEMBER_PROBABILITIES], {INPUT_IMAGE: images}
    )
    return probs, label, member


def check_separate(
    fused_path: Path,
    reference: SeparatePipeline,
    *,
    batches: Sequence[int] = (1, 8),
    tolerance: float = 1e-5,
    rng: np.random.Generator,
    threads: int | None = None,
    optimize: bool = True,
) -> ParityReport:
    sess = session(fused_path, threads, optimize=optimize)
    h, w = reference.fused_size
    k = len(reference.members[0].meta.classes)
    n_members = len(reference.members)
    d_probs = d_member = 0.0
    labels_equal = True
    shapes: dict[int, dict[str, list[int]]] = {}
    for b in batches:
        images = rng.integers(0, 256, size=(b, 1, h, w), dtype=np.uint8)
        probs, label, member = _run_fused(sess, images)
        shapes[b] = {
            OUTPUT_PROBABILITIES: list(probs.shape),
            OUTPUT_LABEL: list(label.shape),
            OUTPUT_MEMBER_PROBABILITIES: list(member.shape),
        }
        want = {
            OUTPUT_PROBABILITIES: [b, k],
            OUTPUT_LABEL: [b],
            OUTPUT_MEMBER_PROBABILITIES: [b, n_members, k],
        }
        if shapes[b] != want:
            raise VerificationError(
                f"fused graph output shapes at batch {b} are {shapes[b]}, expected {want}"
            )
        r_probs, r_label, r_member = reference.run(images)
        d_probs = max(d_probs, float(np.max(np.abs(probs - r_probs))))
        d_member = max(d_member, float(np.max(np.abs(member - r_member))))
        labels_equal = labels_equal and bool(np.array_equal(label, r_label))
    report = ParityReport(tuple(batches), d_probs, d_member, labels_equal, tolerance, shapes)
    if max(d_probs, d_member) > tolerance or not labels_equal:
        raise VerificationError(
            f"{fused_path} differs from its members run separately: max |dp| = {d_probs:.3g} (ensemble), "
            f"{d_member:.3g} (members), tolerance {tolerance:g}, labels identical: {labels_equal}",
            hint="report this as a cxr bug with the member files; the fused graph must not be used",
        )
    return report


def check_end_to_end(
    fused_path: Path,
    run_dir: Path,
    meta_dir: Path,
    member_order: Sequence[str],
    spec: PreprocessSpec,
    *,
    max_images: int | None = None,
    batch: int = 16,
    threads: int | None = None,
    strict: bool = True,
    resized: Sequence[str] = (),
) -> EndToEndReport:
    """Fused graph on the test images vs PyTorch test predictions + the scikit-learn meta-learner.

    ``resized``: the members whose input the graph resizes again from the fused size (named in the hint).
    """
    manifest, paths, ref_probs, ref_member = _test_reference(run_dir, meta_dir, member_order, max_images)
    n = len(paths)
    probs, member = _fused_on_test(fused_path, manifest, paths, spec, batch, threads)
    top_fused = probs.argmax(axis=1)
    top_ref = ref_probs.argmax(axis=1)
    mism = tuple(paths[i] for i in np.flatnonzero(top_fused != top_ref))
    agreement = {
        name: float(np.mean(member[:, j].argmax(axis=1) == ref_member[:, j].argmax(axis=1)))
        for j, name in enumerate(member_order)
    }
    report = EndToEndReport(
        n=n,
        top1_identical=not mism,
        mismatches=mism,
        max_abs_diff_probabilities=float(np.max(np.abs(probs - ref_probs))),
        member_top1_agreement=agreement,
    )
    if strict and mism:
        raise VerificationError(
            f"the fused graph's top-1 differs from PyTorch + scikit-learn on {len(mism)} of {n} test images "
            f"(first: {mism[0]}); max |dp| = {report.max_abs_diff_probabilities:.3g}; per-member top-1 agreement "
            f"{agreement}",
            hint=_end_to_end_hint(agreement, resized),
        )
    return report


def _test_reference(
    run_dir: Path, meta_dir: Path, member_order: Sequence[str], max_images: int | None
) -> tuple[Any, tuple[str, ...], np.ndarray, np.ndarray]:
    """(manifest, the first test paths, the scikit-learn meta's probabilities, the members' PyTorch ones)."""
    from cxr.calibration import apply_temperature
    from cxr.data.manifest import load_manifest
    from cxr.stack.features import load_split
    from cxr.stack.stack import full_proba, load_meta_estimator

    manifest = load_manifest(Path(run_dir) / "manifest.csv", check_files=True)
    data = load_split(run_dir, member_order, "test", manifest=manifest)
    est, meta_json = load_meta_estimator(meta_dir)
    if tuple(meta_json["member_order"]) != tuple(member_order):
        raise DataError(
            f"{meta_dir}/meta.json has member order {meta_json['member_order']}, the fused graph {list(member_order)}",
            hint="re-run `cxr stack` and `cxr fuse` together",
        )
    n = len(data.paths) if max_images is None else min(max_images, len(data.paths))
    if n == 0:
        raise DataError("the test split is empty: nothing to verify end to end", hint="check the manifest")
    k = len(data.classes)
    temperature = float((meta_json.get("calibration") or {}).get("temperature", 1.0))
    ref_probs = apply_temperature(full_proba(est, data.features[:n], k), temperature)  # as the graph does
    return manifest, tuple(data.paths[:n]), ref_probs, data.member_probs[:n]


def _fused_on_test(
    fused_path: Path,
    manifest: Any,
    paths: Sequence[str],
    spec: PreprocessSpec,
    batch: int,
    threads: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, member probabilities) of the fused graph on ``paths``, decoded and resized by cxr."""
    from cxr.imaging.decode import decode_gray
    from cxr.imaging.preprocess import to_model_input

    rows = {r.path: r for r in manifest.rows}
    sess = session(fused_path, threads)
    probs_out, member_out = [], []
    for start in range(0, len(paths), batch):
        grays = [decode_gray(manifest.abspath(rows[p])) for p in paths[start : start + batch]]
        images = to_model_input(grays, spec, normalized=False)
        p, _, mp = _run_fused(sess, images)
        probs_out.append(p)
        member_out.append(mp)
    return np.concatenate(probs_out), np.concatenate(member_out)


def _end_to_end_hint(agreement: dict[str, float], resized: Sequence[str]) -> str:
    """Name the likely cause of an end-to-end mismatch from what is known about each member."""
    off = [name for name, a in agreement.items() if a < 1.0]
    if not off:
        return (
            "every member agrees with its PyTorch predictions: the meta-learner differs; re-run `cxr stack` "
            "and `cxr fuse` together"
        )
    again = [name for name in off if name in resized]
    if again:
        return (
            f"{', '.join(again)} take(s) a smaller input that the graph resizes again from the fused size; their "
            "PyTorch predictions were made through the largest member size (`cxr train base` does this), so fuse "
            "without --input-size, or re-train with the same member list"
        )
    return (
        f"{', '.join(off)} disagree(s) with the PyTorch test predictions although their exports passed "
        "verification: they were exported from another checkpoint than the one that wrote "
        "members/<name>/predictions (re-run `cxr export RUN_DIR` after training)"
    )


def measure_latency(
    fused_path: Path,
    reference: SeparatePipeline,
    *,
    runs: int,
    rng: np.random.Generator,
    threads: int | None = None,
) -> dict[str, Any]:
    """Median batch-1 milliseconds: fused graph vs the separate pipeline (intra-op spinning off in both)."""
    sess = session(fused_path, threads)
    h, w = reference.fused_size
    image = rng.integers(0, 256, size=(1, 1, h, w), dtype=np.uint8)

    def timed(fn: Any) -> list[float]:
        fn()
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1000.0)
        return out

    fused_ms = timed(lambda: _run_fused(sess, image))
    separate_ms = timed(lambda: reference.run(image))
    f, s = float(np.median(fused_ms)), float(np.median(separate_ms))
    return {
        "batch": 1,
        "runs": runs,
        "threads": threads,
        "fused_ms_median": f,
        "separate_ms_median": s,
        "separate_over_fused": s / f if f > 0 else None,
    }
