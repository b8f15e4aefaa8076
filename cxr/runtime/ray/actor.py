"""The Ray Data actor of a cluster scan: takes batches of paths or bytes; makes prediction rows (no Ray
import)."""

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
