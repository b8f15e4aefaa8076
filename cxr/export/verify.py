"""Verify an exported graph against its reference (PyTorch or an FP32 ONNX file) on the same inputs.

Takes: normalised float32 inputs [N, C, H, W], the two models and a ``VerifyConfig``. Makes: ``VerifyReport``
(probability differences, top-1 agreement; reference ties within ``tie_margin`` are not held against the
candidate; ``max_rel`` is never judged). With ``strict`` a failure raises ``VerificationError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import ConfigError, VerificationError
from cxr.spec import softmax

REL_FLOOR = 1e-6
FP32_ATOL = 1e-4


@dataclass(frozen=True)
class VerifyConfig:
    name: str = "model"
    atol: float | None = FP32_ATOL  # max |p - p_ref|; None = report the drift without judging it
    min_top1: float = 1.0  # required fraction of images whose top-1 class agrees
    tie_margin: float = 1e-6
    strict: bool = True  # raise VerificationError when the verdict is a failure
    batch_size: int = 8
    threads: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_top1 <= 1.0:
            raise ConfigError(f"min_top1 {self.min_top1} must be between 0 and 1", hint="for example 0.99")
        if self.atol is not None and self.atol < 0:
            raise ConfigError(f"atol {self.atol} must be >= 0")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size {self.batch_size} must be >= 1")


@dataclass(frozen=True)
class VerifyReport:
    name: str
    reference: str
    candidate: str
    n: int
    max_abs: float
    max_rel: float
    top1_agreement: float  # raw fraction of images with the same top-1 class
    n_disagree: int  # images whose top-1 class differs, ties included
    n_ties: int  # of those, exact ties in the reference (not held against the candidate)
    passed: bool
    reasons: tuple[str, ...] = ()
    atol: float | None = FP32_ATOL
    min_top1: float = 1.0
    inputs: Mapping[str, int] = field(default_factory=dict)  # where the inputs came from: {"val": 64, ...}

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        text = (
            f"{self.name}: {self.candidate} vs {self.reference} on {self.n} inputs: max abs {self.max_abs:.2e}, "
            f"max rel {self.max_rel:.2e}, top-1 {self.top1_agreement:.2%} -> {verdict}"
        )
        return text if self.passed else f"{text} ({'; '.join(self.reasons)})"


def compare_logits(
    ref_logits: np.ndarray,
    cand_logits: np.ndarray,
    cfg: VerifyConfig,
    *,
    reference: str,
    candidate: str,
    inputs: Mapping[str, int] | None = None,
) -> VerifyReport:
    """Compare two logits arrays [N, K] through their softmax probabilities."""
    ref = np.asarray(ref_logits)
    cand = np.asarray(cand_logits)
    if ref.shape != cand.shape or ref.ndim != 2:
        return VerifyReport(
            cfg.name, reference, candidate, int(ref.shape[0]) if ref.ndim else 0, float("inf"), float("inf"),
            0.0, int(ref.shape[0]) if ref.ndim else 0, 0, False,
            (f"output shape {cand.shape} differs from the reference's {ref.shape}",),
            cfg.atol, cfg.min_top1, dict(inputs or {}),
        )  # fmt: skip
    n = int(ref.shape[0])
    reasons: list[str] = []
    finite = bool(np.isfinite(cand).all())
    if not finite:
        reasons.append(f"{int((~np.isfinite(cand)).sum())} non-finite outputs (NaN/inf)")
    p_ref, p_cand = softmax(ref), softmax(np.nan_to_num(cand, nan=0.0, posinf=1e30, neginf=-1e30))
    diff = np.abs(p_cand - p_ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(p_ref, REL_FLOOR)).max()) if diff.size else 0.0
    top_ref, top_cand = p_ref.argmax(axis=1), p_cand.argmax(axis=1)
    disagree = np.flatnonzero(top_ref != top_cand)
    margins = p_ref[disagree, top_ref[disagree]] - p_ref[disagree, top_cand[disagree]]
    n_ties = int((margins <= cfg.tie_margin).sum())
    agreement = 1.0 - len(disagree) / n if n else 1.0
    judged = 1.0 - (len(disagree) - n_ties) / n if n else 1.0
    if cfg.atol is not None and max_abs > cfg.atol:
        reasons.append(f"max abs probability difference {max_abs:.2e} > {cfg.atol:g}")
    if judged < cfg.min_top1:
        reasons.append(
            f"top-1 agreement {judged:.2%} < {cfg.min_top1:.2%} ({len(disagree) - n_ties} of {n} images differ)"
        )
    return VerifyReport(
        name=cfg.name,
        reference=reference,
        candidate=candidate,
        n=n,
        max_abs=max_abs,
        max_rel=max_rel,
        top1_agreement=agreement,
        n_disagree=int(len(disagree)),
        n_ties=n_ties,
        passed=not reasons,
        reasons=tuple(reasons),
        atol=cfg.atol,
        min_top1=cfg.min_top1,
        inputs=dict(inputs or {}),
    )


def open_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``path`` (errors become ``ModelError`` with the fix)."""
    from cxr.session import SessionConfig, create_session

    return create_session(Path(path), SessionConfig(provider="cpu", threads=threads)).session


def onnx_logits(session: Any, inputs: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Run ``session`` on ``inputs`` in chunks of ``batch_size``; returns the first output."""
    name = session.get_inputs()[0].name
    chunks = [
        np.asarray(session.run(None, {name: np.ascontiguousarray(inputs[i : i + batch_size])})[0])
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(chunks, axis=0)


def torch_logits(model: Any, inputs: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """PyTorch logits of ``model`` (switched to eval mode) on ``inputs``, in chunks, without gradients."""
    import torch

    model.eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(inputs[i : i + batch_size], dtype=np.float32))
            outs.append(model(x).detach().float().cpu().numpy())
    return np.concatenate(outs, axis=0)


def verify_onnx(
    model: Any,
    onnx_path: Path,
    inputs: np.ndarray,
    cfg: VerifyConfig,
    *,
    sources: Mapping[str, int] | None = None,
) -> VerifyReport:
    """PyTorch (eval) vs onnxruntime (CPU) on ``inputs``; ``sources`` says where they came from."""
    ref = torch_logits(model, inputs, cfg.batch_size)
    return _judge(ref, onnx_path, inputs, cfg, "pytorch fp32", "onnx fp32", sources)


def verify_against_onnx(
    ref_path: Path,
    cand_path: Path,
    inputs: np.ndarray,
    cfg: VerifyConfig,
    *,
    candidate: str = "onnx variant",
    sources: Mapping[str, int] | None = None,
) -> VerifyReport:
    """Two ONNX files (e.g. FP32 and INT8) on onnxruntime CPU, same inputs."""
    ref = onnx_logits(open_session(Path(ref_path), cfg.threads), inputs, cfg.batch_size)
    return _judge(ref, cand_path, inputs, cfg, "onnx fp32", candidate, sources)


def _judge(
    ref: np.ndarray,
    cand_path: Path,
    inputs: np.ndarray,
    cfg: VerifyConfig,
    reference: str,
    candidate: str,
    sources: Mapping[str, int] | None,
) -> VerifyReport:
    got = onnx_logits(open_session(Path(cand_path), cfg.threads), inputs, cfg.batch_size)
    where = sources or {"total": int(len(inputs))}
    report = compare_logits(ref, got, cfg, reference=reference, candidate=candidate, inputs=where)
    if cfg.strict and not report.passed:
        raise VerificationError(
            f"verification failed for {report.name}: {report.candidate} vs {report.reference}: "
            f"{'; '.join(report.reasons)}",
            hint="re-export with the other exporter (--exporter) or without simplification (--no-simplify); "
            "if it persists, the graph is wrong and must not be deployed",
        )
    return report
