"""Class probabilities of one model for every image of one manifest split, as a ``PredictionTable``.

Takes: a model, the manifest, the split, the member's ``PreprocessSpec``, a batch size and a device.
Makes: a ``PredictionTable`` keyed by the manifest's relative paths (written with
``cxr.train.predictions.write_predictions`` after training; the stacking stage reads it). Images that
cannot be decoded are left out and logged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from cxr.data.manifest import Manifest
from cxr.errors import TrainError
from cxr.spec import PreprocessSpec
from cxr.train.dataset import BadImages, Shard, make_dataset, make_loader
from cxr.train.device import DeviceSetup
from cxr.train.loop import Predictions, predict_batches
from cxr.train.predictions import PredictionTable


def as_setup(device: str | torch.device | DeviceSetup) -> DeviceSetup:
    if isinstance(device, DeviceSetup):
        return device
    dev = torch.device(device)
    return DeviceSetup(device=dev, amp_dtype=None, channels_last=False, pin_memory=dev.type == "cuda")


def predict_split(
    model: nn.Module,
    manifest: Manifest,
    split: str,
    spec: PreprocessSpec,
    batch_size: int,
    device: str | torch.device | DeviceSetup = "cpu",
    *,
    member: str = "",
    checkpoint_sha256: str = "",
    num_workers: int = 0,
    max_bad_fraction: float = 1.0,
    shard: Shard = Shard(),
    gather: Callable[[Predictions], Predictions] | None = None,
    via: tuple[int, int] | None = None,
) -> PredictionTable:
    """Eval-mode probabilities (float64, softmax) for ``split``; moves ``model`` to ``device``.

    ``via``: the ensemble's input size when it is larger than this member's: images are resized to it
    first, exactly as the fused graph's runtime and in-graph resize will do (see ``eval_transform``).

    Under DDP each process predicts its ``shard`` of the split and ``gather`` joins the parts (in order).
    """
    setup = as_setup(device)
    model.to(setup.device)
    if setup.channels_last:
        model.to(memory_format=torch.channels_last)
    dataset = make_dataset(manifest, split, spec, train=False, via=via)
    loader = make_loader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=setup.pin_memory,
        shard=shard,
    )
    preds = predict_batches(model, loader, setup, bad=BadImages(dataset, max_bad_fraction))
    if gather is not None:
        preds = gather(preds)
    rows = [dataset.rows[int(i)] for i in preds.index]
    k = len(manifest.classes)
    probs = preds.probs if len(rows) else np.zeros((0, k), dtype=np.float64)
    if probs.shape != (len(rows), k):
        raise TrainError(
            f"the model gives {probs.shape[1]} outputs but the manifest has {k} classes",
            hint="use a checkpoint trained on this manifest's classes",
        )
    return PredictionTable(
        member=member,
        split=split,
        manifest_digest=manifest.digest(),
        classes=tuple(manifest.classes),
        paths=tuple(r.path for r in rows),
        labels=tuple(r.label for r in rows),
        probs=probs,
        checkpoint_sha256=checkpoint_sha256,
        precision=setup.precision,
        via=(int(via[0]), int(via[1])) if via is not None and tuple(via) != spec.input_size else None,
    )
