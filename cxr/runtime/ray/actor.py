"""The Ray Data actor of a cluster scan: one ``Predictor`` (one onnxruntime session) per actor.

Takes (per call, from ``Dataset.map_batches``): a batch of rows, either ``path`` (a file every node can
open: local disk or NFS) or ``path`` + ``bytes`` (read by Ray from object storage). Makes: the same rows
back as ``path`` + ``prediction`` (a ``Prediction`` as JSON, floats exact), computed by
``Predictor.iter_predict``: decoding overlaps inference inside the actor, inference batches are
``batch_size`` consecutive rows, and an unreadable file becomes an error row, exactly as in a local scan.

The actor refuses to start when its model file differs from the driver's (another file at the same path
on some node would give rows of another model under this model's id). On a GPU actor Ray sets
``CUDA_VISIBLE_DEVICES`` to the GPU it assigned, so the session uses device 0 of what it sees.
Nothing here imports Ray.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import ModelError
from cxr.runtime.predictor import Item, Predictor, PredictorConfig
from cxr.spec import Prediction

log = logging.getLogger(__name__)


class PredictorActor:
    """Callable class for ``map_batches``: ``actor(batch) -> {"path": ..., "prediction": ...}``."""

    def __init__(self, model: str, cfg: PredictorConfig, model_id: str, gpu: bool = False) -> None:
        if gpu:
            cfg = replace(cfg, session=replace(cfg.session, device_id=0))
        self.predictor = Predictor.from_path(Path(model), cfg)
        if self.predictor.model_id != model_id:
            raise ModelError(
                f"the model at {model} on this node has id {self.predictor.model_id}, the driver's has "
                f"{model_id}",
                hint="put the same model file at the same path on every node (a shared volume, or the image)",
                path=model,
            )
        for warning in self.predictor.info.warnings:
            log.warning("%s", warning)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        items: list[Item] = [bytes(b) for b in batch["bytes"]] if "bytes" in batch else list(paths)
        preds = [p for chunk in self.predictor.iter_predict(items, names=paths) for p in chunk]
        return {
            "path": np.asarray(paths, dtype=object),
            "prediction": np.asarray([json.dumps(p.to_dict()) for p in preds], dtype=object),
        }


def prediction_from_json(text: str) -> Prediction:
    """The inverse of the actor's ``json.dumps(prediction.to_dict())``."""
    d: dict[str, Any] = json.loads(text)
    return Prediction.from_dict(d)


__all__ = ["PredictorActor", "prediction_from_json"]
