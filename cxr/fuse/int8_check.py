"""The verdict on a fused INT8 graph: takes the FP32 and INT8 fused files and the run's labelled test images;
makes the ``INT8_RECORDS`` records (their layout is ``cxr.spec.INT8_RECORDS``'s docstring), one per backend.

A CPU kind's entry is accepted only where the INT8 graph's top-1 agrees with the FP32 graph (onnxruntime) on at
least ``Int8Bar.agreement`` of the test images AND no class's sensitivity at its operating point (the card's
thresholds; the top-1 decision where the card has none) moves by more than ``Int8Bar.sensitivity_points``.
OpenVINO compiles the INT8 file with ``INFERENCE_PRECISION_HINT=f32`` (float ops stay FP32) on this CPU's kind
and, on a CPU with more than AVX2, again in a subprocess with ``ONEDNN_MAX_CPU_ISA=AVX2`` (a clinic PC's
stand-in; recorded only where the runtime graph's convolution kernels show the cap took). onnxruntime has no such cap:
its record holds this CPU's kind alone. A refusal names the members whose own top-1 agreement (the graph's
``member_probabilities``) is lowest and the layers their NNCF accuracy control kept in float. With FP32 outputs
no better than guessing or near-uniform (random weights), agreement is "not meaningful" (None), never accepted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.cpu_kind import CPU_KINDS, ISA_CAPS, cpu_kind
from cxr.errors import DecodeError, ProviderError, first_line
from cxr.openvino_session import import_openvino
from cxr.spec import (
    CARD_OPERATING_POINTS,
    INPUT_IMAGE,
    INT8_RECORDS,
    OUTPUT_MEMBER_PROBABILITIES,
    OUTPUT_PROBABILITIES,
    PreprocessSpec,
)

OPENVINO_RECORD, ONNXRUNTIME_RECORD = INT8_RECORDS
CAPPED_KIND = "avx2"  # the clinic PC without AVX-512 that a bigger CPU stands in for
MIN_MARGIN = 0.02  # median top-1 minus top-2 probability below this: near-uniform outputs
_OUTPUTS = (OUTPUT_PROBABILITIES, OUTPUT_MEMBER_PROBABILITIES)
_WIDE_ISA = ("avx512", "amx", "vnni")  # kernel-name parts an AVX2 cap must remove from the convolutions


@dataclass(frozen=True)
class Int8Bar:
    agreement: float = 0.99
    sensitivity_points: float = 1.0


@dataclass(frozen=True)
class LabelledImages:
    images: np.ndarray  # uint8 [N, 1, H, W], the fused graph's input
    labels: np.ndarray | None  # int64 [N], indices into the graph's classes; None: unlabelled images
    split: str = "test"


def labelled_test_images(run_dir: Path, spec: PreprocessSpec, classes: Sequence[str]) -> LabelledImages | str:
    """The run's test split (``manifest.csv`` rows with split == test) as graph input and labels, or why not."""
    from cxr.data.manifest import load_manifest
    from cxr.imaging.decode import decode_gray
    from cxr.imaging.preprocess import to_model_input

    path = Path(run_dir) / "manifest.csv"
    if not path.is_file():
        return f"no {path}: the verdict needs the run's labelled test images"
    manifest = load_manifest(path, check_files=False)
    grays, labels = [], []
    for row in manifest.split("test"):
        if row.label not in classes:
            continue
        try:
            grays.append(decode_gray(manifest.abspath(row)))
        except (DecodeError, OSError):
            continue
        labels.append(list(classes).index(row.label))
    if not grays:
        return f"no readable test image of the graph's classes in {path}"
    return LabelledImages(to_model_input(grays, spec, normalized=False), np.asarray(labels, dtype=np.int64))


def unlabelled_images(folder: Path, spec: PreprocessSpec, n: int, seed: int) -> LabelledImages:
    """Up to ``n`` images of a folder without labels: enough to tell near-uniform outputs, never to accept."""
    from cxr.fuse.precision_check import real_images

    return LabelledImages(real_images(folder, spec, n, seed), None, split=f"unlabelled images in {folder}")


def run_graph(
    path: Path, images: np.ndarray, backend: str, threads: int | None, batch: int = 16
) -> tuple[dict[str, np.ndarray], list[str]]:
    """(probabilities and member probabilities of ``path`` on ``images``, OpenVINO's kernel names) on
    ``backend`` (``onnxruntime`` CPU, or ``openvino`` with float ops pinned to FP32)."""
    if backend == "onnxruntime":
        from cxr.fuse.verify import session

        sess = session(path, threads)
        run = lambda x: dict(zip(_OUTPUTS, sess.run(list(_OUTPUTS), {INPUT_IMAGE: x}), strict=True))  # noqa: E731
        kernels: list[str] = []
    else:
        ov = import_openvino()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        kernels = [
            info["primitiveType"].astype(str)
            for op in compiled.get_runtime_model().get_ops()
            if "primitiveType" in (info := op.get_rt_info())
        ]

        def run(x: np.ndarray) -> dict[str, np.ndarray]:
            result = compiled({INPUT_IMAGE: x})
            return {k: np.asarray(result[k]) for k in _OUTPUTS}

    parts = [run(images[i : i + batch]) for i in range(0, len(images), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in _OUTPUTS}, kernels


def run_capped(
    path: Path, images: np.ndarray, isa: str, threads: int | None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """``run_graph`` on OpenVINO in a subprocess whose oneDNN is capped to ``isa`` (set before it loads)."""
    with tempfile.TemporaryDirectory(prefix="cxr-int8-") as tmp:
        src, out = Path(tmp) / "images.npy", Path(tmp) / "out.npz"
        np.save(src, images)
        cmd = [sys.executable, "-m", "cxr.fuse.int8_check", str(path), str(src), str(out), str(threads or 0)]
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa}
        here = Path(__file__).resolve().parents[2]  # the folder that holds this cxr: the child imports it
        done = subprocess.run(cmd, env=env, cwd=here, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ProviderError(f"OpenVINO capped to {isa} failed on {path.name}: {tail[0]}")
        with np.load(out) as z:
            return {k: z[k] for k in _OUTPUTS}, [str(k) for k in z["kernels"]]


def not_meaningful(probs: np.ndarray, labels: np.ndarray | None) -> str | None:
    """Why top-1 agreement says nothing about this graph (FP32 outputs near-uniform, or no better than
    guessing the commonest class), or None."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    margin = float(np.median(top2[:, 1] - top2[:, 0]))
    if margin < MIN_MARGIN:
        return f"the FP32 outputs are near-uniform (median top-1 margin {margin:.3f}; random weights?)"
    if labels is None:
        return None
    accuracy = float(np.mean(probs.argmax(1) == labels))
    guess = float(np.bincount(labels).max() / len(labels))
    if accuracy <= guess:
        return f"the FP32 graph is no better than guessing ({accuracy:.1%} top-1 vs {guess:.1%}; random weights?)"
    return None


def sensitivities(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], thresholds: Mapping[str, float]
) -> dict[str, float]:
    """{class: sensitivity} at each class's threshold (its top-1 decision where none), classes with positives."""
    out = {}
    for k, name in enumerate(classes):
        pos = labels == k
        if not pos.any() or (thresholds and name not in thresholds):
            continue
        hit = probs[pos, k] >= thresholds[name] if thresholds else probs[pos].argmax(1) == k
        out[name] = float(np.mean(hit))
    return out


def kind_entry(
    ref: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    classes: Sequence[str],
    thresholds: Mapping[str, float],
    members: Sequence[str],
    bar: Int8Bar,
    layers: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """One CPU kind's entry: accepted, agreement, sensitivity change per class (points), and why."""
    p32, p8 = ref[OUTPUT_PROBABILITIES], got[OUTPUT_PROBABILITIES]
    if why := not_meaningful(p32, labels):
        return {
            "accepted": False,
            "agreement": None,
            "sensitivity_change_points": {},
            "reason": f"not meaningful: {why}",
        }
    agreement = float(np.mean(p32.argmax(1) == p8.argmax(1)))
    if labels is None:
        reason = (
            f"refused: no labelled test images, so no operating-point sensitivity to check (top-1 agreement "
            f"with FP32 {agreement:.2%} on {len(p32)} unlabelled images); fuse with the run directory"
        )
        return {"accepted": False, "agreement": agreement, "sensitivity_change_points": {}, "reason": reason}
    s32, s8 = sensitivities(p32, labels, classes, thresholds), sensitivities(p8, labels, classes, thresholds)
    change = {c: round(100.0 * (s8[c] - s32[c]), 4) for c in s32}
    moved = {c: v for c, v in change.items() if abs(v) > bar.sensitivity_points}
    accepted = agreement >= bar.agreement and not moved
    point = "operating point" if thresholds else "top-1 decision (the card has no operating points)"
    reason = (
        f"top-1 agreement with FP32 {agreement:.2%} on {len(labels)} test images (bar {bar.agreement:.0%})"
    )
    reason += f"; sensitivity at each class's {point} moves at most {max(map(abs, change.values()), default=0.0):.2f} points"
    reason += f" (bar {bar.sensitivity_points:g})"
    if not accepted:
        moved_text = ", ".join(f"{c} {v:+.2f}" for c, v in moved.items())
        reason = "refused: " + reason + (f"; moved: {moved_text}" if moved else "")
        ranked = member_drift(ref[OUTPUT_MEMBER_PROBABILITIES], got[OUTPUT_MEMBER_PROBABILITIES], members)
        worst = [f"{n} (top-1 agreement {a:.2%}, max |dp| {d:.3g})" for n, a, d in ranked[:2]]
        reason += f"; the members that moved most: {', '.join(worst)}"
        kept = [f"{n}: {', '.join(layers[n][:5])}" for n, _, _ in ranked[:2] if layers.get(n)]
        if kept:
            reason += f"; layers their NNCF accuracy control kept in float: {'; '.join(kept)}"
    return {
        "accepted": accepted,
        "agreement": agreement,
        "sensitivity_change_points": change,
        "reason": reason,
    }


def member_drift(ref: np.ndarray, got: np.ndarray, members: Sequence[str]) -> list[tuple[str, float, float]]:
    """(member, its own top-1 agreement, its max probability change) from [N, M, K] outputs, most moved first."""
    rows = [
        (
            name,
            float(np.mean(ref[:, m].argmax(1) == got[:, m].argmax(1))),
            float(np.abs(ref[:, m] - got[:, m]).max()),
        )
        for m, name in enumerate(members)
    ]
    return sorted(rows, key=lambda r: (r[1], -r[2]))


def check_int8(
    fp32: Path,
    int8: Path,
    data: LabelledImages,
    *,
    classes: Sequence[str],
    card: Mapping[str, Any],
    members: Sequence[str],
    layers: Mapping[str, Sequence[str]],
    bar: Int8Bar = Int8Bar(),
    threads: int | None = None,
    kind: str | None = None,
    float_members: Sequence[str] = (),
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """({record name: record} for the backends installed, notes) for ``int8`` against ``fp32`` on ``data``;
    ``float_members``: the members the INT8 graph runs in FP32 (recorded: `--precision auto` weighs them)."""
    kind = kind or cpu_kind()
    points = card.get(CARD_OPERATING_POINTS) or {}
    thresholds = {
        str(c): float(p["threshold"])
        for c, p in points.items()
        if isinstance(p, Mapping) and "threshold" in p
    }
    ref, _ = run_graph(fp32, data.images, "onnxruntime", threads)
    entry = lambda got: kind_entry(ref, got, data.labels, classes, thresholds, members, bar, layers)  # noqa: E731
    base = _record_base(int8, bar, data.split, len(data.images), float_members)
    records = {
        ONNXRUNTIME_RECORD: {
            **base,
            "kinds": {kind: entry(run_graph(int8, data.images, "onnxruntime", threads)[0])},
        }
    }
    notes: list[str] = ["onnxruntime has no ISA cap: its INT8 verdict holds for this CPU's kind only"]
    try:
        import_openvino()
    except ProviderError as e:
        return records, [*notes, f"no OpenVINO INT8 verdict: {e.message}"]
    try:
        got, native = run_graph(int8, data.images, "openvino", threads)
    except Exception as e:  # OpenVINO's transformations throw assorted errors on graphs they cannot take
        records[OPENVINO_RECORD] = {**base, "kinds": {kind: _cannot_run(e)}}
        return records, notes
    kinds = {kind: entry(got)}
    if kind in CPU_KINDS and CPU_KINDS.index(kind) < CPU_KINDS.index(CAPPED_KIND):
        kinds.update(_capped_entry(int8, data.images, native, entry, threads, notes))
    records[OPENVINO_RECORD] = {**base, "kinds": kinds}
    return records, notes


def not_meaningful_records(
    int8: Path, why: str, bar: Int8Bar, kind: str | None = None, float_members: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """Both backends' records for ``int8`` when no verdict can mean anything (random-weight members): one entry
    for this CPU's kind, never accepted, ``not meaningful: why`` and no percentage."""
    entry: dict[str, Any] = {
        "accepted": False,
        "agreement": None,
        "sensitivity_change_points": {},
        "reason": f"not meaningful: {why}",
    }
    base = _record_base(int8, bar, "none", 0, float_members)
    return {name: {**base, "kinds": {kind or cpu_kind(): dict(entry)}} for name in INT8_RECORDS}


def _record_base(
    int8: Path, bar: Int8Bar, split: str, images: int, float_members: Sequence[str]
) -> dict[str, Any]:
    """What every INT8 record says besides its per-kind verdicts: the file checked, the bar, the images, and the
    members the INT8 graph runs in FP32."""
    from cxr.session import file_sha256

    return {
        "file": int8.name,
        "sha256": file_sha256(int8),
        "bar": {"agreement": bar.agreement, "sensitivity_points": bar.sensitivity_points},
        "split": split,
        "images": images,
        "float_members": sorted(float_members),
    }


def _capped_entry(
    int8: Path, images: np.ndarray, native: Sequence[str], entry: Any, threads: int | None, notes: list[str]
) -> dict[str, dict[str, Any]]:
    """The avx2 entry from OpenVINO capped to AVX2 (none, with a note, unless the cap moved every convolution
    kernel, where the INT8 arithmetic is, off AVX-512/AMX/VNNI)."""
    isa = ISA_CAPS[CAPPED_KIND]
    try:
        capped, kernels = run_capped(int8, images, isa, threads)
    except ProviderError as e:
        return {CAPPED_KIND: _cannot_run(e)}
    wide = lambda names: sum(any(w in n for w in _WIDE_ISA) for n in names)  # noqa: E731
    conv = lambda names: [n for n in names if "conv" in n]  # noqa: E731
    if wide(conv(kernels)) or not wide(conv(native)):
        notes.append(
            f"ONEDNN_MAX_CPU_ISA={isa} did not move OpenVINO's convolutions to AVX2: no {CAPPED_KIND} entry"
        )
        return {}
    notes.append(
        f"OpenVINO capped to {isa}: convolution kernels naming AVX-512/AMX/VNNI {wide(conv(native))} -> 0; "
        f"{wide(kernels)} of its other kernels keep AVX-512 (OpenVINO's own element-wise nodes check the CPU, not oneDNN)"
    )
    return {CAPPED_KIND: entry(capped)}


def _cannot_run(e: Exception) -> dict[str, Any]:
    reason = f"refused: OpenVINO cannot run the INT8 graph: {first_line(e)}"
    return {"accepted": False, "agreement": None, "sensitivity_change_points": {}, "reason": reason}


def write_int8_records(fp32: Path, int8: Path, records: Mapping[str, dict[str, Any]]) -> str:
    """Write ``records`` into ``int8`` (naming the graph they checked), then into ``fp32`` naming the INT8 file
    as it is now (a file cannot name its own sha256); returns that final sha256."""
    from cxr.fuse.precision_check import write_records
    from cxr.session import file_sha256

    write_records(int8, records)
    final = file_sha256(int8)
    write_records(fp32, {name: {**rec, "sha256": final} for name, rec in records.items()})
    return final


def summary(name: str, record: Mapping[str, Any]) -> str:
    """One line per CPU kind of an INT8 record, for the CLI and the report."""
    return "; ".join(
        f"{name} on {kind}: {'accepted' if e['accepted'] else 'refused'} ({e['reason']})"
        for kind, e in record.get("kinds", {}).items()
    )


def _main(argv: Sequence[str]) -> None:
    """``python -m cxr.fuse.int8_check MODEL IMAGES.npy OUT.npz THREADS``: ``run_graph`` on OpenVINO (for
    ``run_capped``, whose environment caps oneDNN before OpenVINO loads)."""
    model, images, out, threads = argv
    got, kernels = run_graph(Path(model), np.load(images), "openvino", int(threads) or None)
    arrays = {"kernels": np.asarray(kernels, dtype=str), **got}
    np.savez(out, **arrays)  # type: ignore[arg-type]


if __name__ == "__main__":
    _main(sys.argv[1:])
