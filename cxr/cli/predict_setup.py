"""Takes the options `cxr-predict scan` and `image` share; makes their ``PredictorConfig`` and ``Predictor``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cxr.cli.common import PrecisionChoice, ProviderChoice

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from cxr.dicom.output import DicomWriter
    from cxr.runtime.overlay import OverlayWriter
    from cxr.runtime.predictor import Predictor, PredictorConfig
    from cxr.spec import Prediction


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


@dataclass(frozen=True)
class Opened:
    """The predictor `cxr-predict` runs and the sinks that write beside its results."""

    predictor: Predictor
    overlays: OverlayWriter | None = None
    dicom: DicomWriter | None = None


def open_predictor(
    model: Path | None,
    cfg: PredictorConfig,
    heatmap_dir: Path | None = None,
    dicom_dir: Path | None = None,
    root: Path | None = None,
) -> Opened:
    """The predictor for ``model``, with an overlay writer (``heatmap_dir``) and a DICOM writer (``dicom_dir``)
    as its heatmap sinks; both run the heatmap graph (the DICOM writer only when it is beside the model)."""
    from cxr.runtime.locate import resolve_model, with_heatmap_twin
    from cxr.runtime.predictor import Predictor

    path = resolve_model(model)
    overlays, dicom = None, None
    if heatmap_dir is not None or dicom_dir is not None:
        path, cfg = with_heatmap_twin(path, cfg, required=heatmap_dir is not None)
    sinks: list[Callable[[Prediction, np.ndarray, np.ndarray | None], None]] = []

    def each(pred: Prediction, image: np.ndarray, heat: np.ndarray | None) -> None:
        for sink in sinks:
            sink(pred, image, heat)

    if heatmap_dir is not None or dicom_dir is not None:
        cfg = replace(cfg, heatmap_sink=each)
    predictor = Predictor.from_path(path, cfg)
    if heatmap_dir is not None:
        from cxr.runtime.overlay import OverlayWriter

        overlays = OverlayWriter(heatmap_dir, root)
        sinks.append(overlays)
    if dicom_dir is not None:  # the identity of the file that runs (a verified INT8 variant, say)
        from cxr.dicom import ModelIdentity
        from cxr.dicom.output import DicomWriter

        dicom = DicomWriter(dicom_dir, ModelIdentity.from_predictor(predictor))
        sinks.append(dicom)
    return Opened(predictor, overlays, dicom)
