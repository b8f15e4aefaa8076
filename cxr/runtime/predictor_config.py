"""How a ``Predictor`` runs (``PredictorConfig``) and what one inference batch returns (``RawOutput``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cxr.errors import ModelError
from cxr.imaging.decode import DEFAULT_LIMITS, DecodeLimits
from cxr.session import SessionConfig
from cxr.spec import Prediction


@dataclass(frozen=True)
class PredictorConfig:
    session: SessionConfig = field(default_factory=SessionConfig)
    limits: DecodeLimits = DEFAULT_LIMITS
    batch_size: int = 8
    decode_workers: int = 2
    prefetch_batches: int = 2  # batches decoded ahead of the one running
    pad_batches: bool | None = None  # pad the last batch to batch_size; None: only on TensorRT (no rebuild)
    # called per predicted image with (prediction, the decoded gray image at its own size, its heatmap [H, W]
    # at the model's input size, or None when the graph has no 'heatmap' output: ensemble.heatmaps.onnx has)
    heatmap_sink: Callable[[Prediction, np.ndarray, np.ndarray | None], None] | None = None
    # the model id results carry (None: this file's); a heatmap twin carries its plain model's, so that
    # results of both are one model's for --resume
    model_id: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ModelError(
                f"batch size must be >= 1, got {self.batch_size}", hint="use e.g. --batch-size 8"
            )
        if self.decode_workers < 1:
            raise ModelError(f"decode workers must be >= 1, got {self.decode_workers}")
        if self.prefetch_batches < 0:
            raise ModelError(f"prefetch batches must be >= 0, got {self.prefetch_batches}")


@dataclass(frozen=True)
class RawOutput:
    """Pure inference output for one batch."""

    probabilities: np.ndarray  # float32 [N, K]
    member_probabilities: np.ndarray | None  # float32 [N, M, K] for ensembles
    heatmaps: np.ndarray | None = None  # float32 [N, H, W] when the heatmap output was asked for
    ood_scores: np.ndarray | None = None  # float32 [N] when the graph has the ood_score output


def auto_decode_workers(provider: str, cpus: int | None = None) -> int:
    """Decode threads: 1 on a CPU (2 from 8 cores), which onnxruntime already fills; on a GPU up to 8."""
    import os

    from cxr.session import available_providers

    n = cpus or os.cpu_count() or 1
    gpu = provider in ("cuda", "tensorrt") or (
        provider == "auto" and any(p in ("cuda", "tensorrt") for p in available_providers())
    )
    if gpu:
        return max(1, min(8, n - 1))
    return 1 if n < 8 else 2
