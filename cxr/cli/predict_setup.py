"""Open the predictor `cxr-predict` runs: its config from the command's options, the model, the heatmap graph.

Takes: the options `scan` and `image` share. Makes: a ``PredictorConfig`` and a ``Predictor`` (the model
from ``--model``/``$CXR_MODEL``/the default path; with heatmaps, its ``<stem>.heatmaps.onnx`` variant and
an ``OverlayWriter`` as its heatmap sink). Heavy imports stay inside the functions.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from cxr.cli.common import PrecisionChoice, ProviderChoice

if TYPE_CHECKING:
    from cxr.runtime.overlay import OverlayWriter
    from cxr.runtime.predictor import Predictor, PredictorConfig


def predictor_config(
    provider: ProviderChoice,
    precision: PrecisionChoice,
    threads: int | None,
    batch_size: int,
    strict_provider: bool,
    device_id: int,
    trt_fp16: bool,
    trt_cache: Path | None,
    decode_workers: int | None,
    max_file_mb: float,
    max_pixels: int,
) -> PredictorConfig:
    from cxr.imaging.decode import DecodeLimits
    from cxr.runtime.predictor import PredictorConfig, auto_decode_workers
    from cxr.session import SessionConfig

    return PredictorConfig(
        session=SessionConfig(
            provider=provider.value,
            precision=precision.value,
            threads=threads,
            device_id=device_id,
            strict_provider=strict_provider,
            trt_fp16=trt_fp16,
            trt_cache_dir=trt_cache,
        ),
        limits=DecodeLimits(max_bytes=int(max_file_mb * 1024 * 1024), max_pixels=max_pixels),
        batch_size=batch_size,
        decode_workers=decode_workers or auto_decode_workers(provider.value),
    )


def open_predictor(
    model: Path | None, cfg: PredictorConfig, heatmap_dir: Path | None = None
) -> tuple[Predictor, OverlayWriter | None]:
    """The predictor for ``model`` (resolved), and the overlay writer when ``heatmap_dir`` is given."""
    from cxr.runtime.locate import resolve_model
    from cxr.runtime.predictor import Predictor

    path = resolve_model(model)
    writer = None
    if heatmap_dir is not None:
        path, cfg, writer = with_heatmaps(path, cfg, heatmap_dir)
    return Predictor.from_path(path, cfg), writer


def with_heatmaps(
    model: Path, cfg: PredictorConfig, folder: Path, root: Path | None = None
) -> tuple[Path, PredictorConfig, OverlayWriter]:
    """The heatmap graph for ``model`` and ``cfg`` with an overlay writer into ``folder`` as its sink."""
    from cxr.runtime.locate import HEATMAP_SUFFIX, heatmap_variant
    from cxr.runtime.overlay import OverlayWriter
    from cxr.session import file_sha256

    writer = OverlayWriter(folder, root)
    twin = heatmap_variant(model)
    # the twin computes the same results: they carry the plain model's id, so --resume accepts either
    plain = model.with_name(model.name.removesuffix(HEATMAP_SUFFIX) + ".onnx")
    model_id = cfg.model_id or file_sha256(plain if plain.is_file() else model)[:16]
    return twin, replace(cfg, heatmap_sink=writer, model_id=model_id), writer
