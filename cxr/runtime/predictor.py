"""Takes a cxr ONNX file and images; makes ``Prediction`` objects (``cxr.spec``), torch-free."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import islice
from os import PathLike
from pathlib import Path
from typing import Any, overload

import numpy as np

from cxr.errors import CxrError, DecodeError, ModelError
from cxr.imaging.decode import decode_gray
from cxr.imaging.gate import grey_range_reason, ood_reason, ood_threshold
from cxr.imaging.preprocess import resize_gray, to_model_input
from cxr.labels import NOTICE
from cxr.runtime.assess import header_reasons, with_reasons
from cxr.runtime.items import Item, as_item, is_single
from cxr.runtime.operating import operating_thresholds
from cxr.runtime.predictor_config import PredictorConfig, RawOutput, auto_decode_workers
from cxr.runtime.results import ResultLayout
from cxr.session import SessionInfo, create_session, file_sha256
from cxr.spec import (
    CARD_CALIBRATION,
    CARD_MEMBER_ORDER,
    CARD_OPERATING_POINTS,
    OUTPUT_HEATMAP,
    OUTPUT_LOGITS,
    OUTPUT_MEMBER_PROBABILITIES,
    OUTPUT_OOD_SCORE,
    OUTPUT_PROBABILITIES,
    ModelMetadata,
    Prediction,
    Reason,
    provenance_warnings,
    softmax,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Explained:
    """One prediction, its decoded image at its own size and its class's heatmap (None when there is none)."""

    prediction: Prediction
    image: np.ndarray | None = None
    heatmap: np.ndarray | None = None


@dataclass(frozen=True)
class _Loaded:
    """One decoded input: the model-size image (None on error), the original when a sink wants it."""

    image: np.ndarray | None
    error: str | None = None
    reasons: tuple[Reason, ...] = ()
    original: np.ndarray | None = None


__all__ = [
    "Explained",
    "Predictor",
    "PredictorConfig",
    "RawOutput",
    "auto_decode_workers",
]


def _default_name(item: Item, index: int) -> str:
    """What a result calls an input given without a name: its path, ``<bytes>`` or ``array[index]``."""
    if isinstance(item, np.ndarray):
        return f"array[{index}]"
    return "<bytes>" if isinstance(item, bytes | bytearray) else str(item)


class Predictor:
    """Run a cxr model with onnxruntime (or OpenVINO). Create with ``Predictor.from_path``."""

    def __init__(self, path: Path, info: SessionInfo, metadata: ModelMetadata, cfg: PredictorConfig) -> None:
        self.model_path = path
        self.info = info
        self.metadata = metadata
        self.cfg = cfg
        self.model_id = cfg.model_id or file_sha256(path)[:16]
        sess = info.session
        inputs = sess.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{path} has {len(inputs)} inputs; a cxr model has exactly one", path=path)
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in sess.get_outputs()]
        expected_dtype = "tensor(uint8)" if metadata.input_format == "uint8_gray" else "tensor(float)"
        if inputs[0].type != expected_dtype:
            raise ModelError(
                f"{path}: metadata says input format {metadata.input_format} but the graph input is "
                f"{inputs[0].type}",
                hint="re-export the model with cxr",
                path=path,
            )
        found = [o for o in (OUTPUT_PROBABILITIES, OUTPUT_LOGITS) if o in self.output_names]
        if not found:
            raise ModelError(
                f"{path}: outputs {self.output_names} include neither "
                f"{OUTPUT_PROBABILITIES!r} nor {OUTPUT_LOGITS!r}",
                hint="re-export the model with cxr",
                path=path,
            )
        self._prob_output = found[0]
        self._apply_softmax = found[0] == OUTPUT_LOGITS  # a single member's graph ends in logits
        self._members_output = (
            OUTPUT_MEMBER_PROBABILITIES if OUTPUT_MEMBER_PROBABILITIES in self.output_names else None
        )
        self._heatmap_output = OUTPUT_HEATMAP if OUTPUT_HEATMAP in self.output_names else None
        self.ood_threshold = ood_threshold(metadata.card) if OUTPUT_OOD_SCORE in self.output_names else None
        self.member_names: tuple[str, ...] = tuple(metadata.card.get(CARD_MEMBER_ORDER, ()))
        self.operating_thresholds = operating_thresholds(metadata.card, metadata.classes, str(path))
        self.warnings = provenance_warnings(metadata.card)
        for warning in self.warnings:
            log.warning("%s: %s", path.name, warning)

    @classmethod
    def from_path(
        cls,
        model: Path | str,
        cfg: PredictorConfig | None = None,
        *,
        provider: str | None = None,
        threads: int | None = None,
    ) -> Predictor:
        """Open a cxr ONNX model; ``provider`` and ``threads`` override those of ``cfg.session``."""
        cfg = cfg or PredictorConfig()
        if provider is not None:
            cfg = replace(cfg, session=replace(cfg.session, provider=provider))
        if threads is not None:
            cfg = replace(cfg, session=replace(cfg.session, threads=threads))
        path = Path(model)
        info = create_session(path, cfg.session)
        meta_map = info.session.get_modelmeta().custom_metadata_map
        path = info.model or path  # the file that really runs (a verified INT8 variant, say)
        metadata = ModelMetadata.from_props(meta_map, source=str(path))
        return cls(path, info, metadata, cfg)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.metadata.classes

    @property
    def provider(self) -> str:
        return self.info.provider

    @property
    def normalized_input(self) -> bool:
        return self.metadata.input_format == "float_normalized"

    @property
    def pads_batches(self) -> bool:
        """Whether short batches are padded to ``batch_size`` (TensorRT rebuilds its engine per new shape)."""
        if self.cfg.pad_batches is not None:
            return self.cfg.pad_batches
        return self.provider == "tensorrt"

    @property
    def result_layout(self) -> ResultLayout:
        """The classes, members and model id that shape this model's result files."""
        members = self.member_names if self._members_output else ()
        return ResultLayout(self.classes, self.model_id, members)

    def describe(self) -> dict[str, Any]:
        """What a result file or an API response says about the model and where it runs."""
        return {
            "model_path": str(self.model_path),
            "model_id": self.model_id,
            "classes": list(self.classes),
            "members": list(self.member_names),
            "input_size": list(self.metadata.preprocess.input_size),
            "input_format": self.metadata.input_format,
            "provider": self.provider,
            "providers": list(self.info.providers),
            "requested_provider": self.info.requested,
            "precision": self.info.precision,  # what really runs (openvino); None: the file's own precision
            "device": self.info.device,
            "provider_warnings": list(self.info.warnings),
            "batch_size": self.cfg.batch_size,
            "provenance_warnings": list(self.warnings),
            "operating_points": self.metadata.card.get(CARD_OPERATING_POINTS) or {},
            "calibration": self.metadata.card.get(CARD_CALIBRATION),
            "ood_threshold": self.ood_threshold,  # None: the graph has no out-of-distribution score
            "notice": NOTICE,
        }

    def decode(self, item: Item) -> np.ndarray:
        """Decode one item to uint8 gray [H, W] (arrays pass through after a dtype/shape check)."""
        if isinstance(item, np.ndarray):
            if item.ndim != 2 or item.dtype != np.uint8:
                raise DecodeError(
                    f"array input must be uint8 [H, W] grayscale, got {item.dtype} {item.shape}",
                    hint="convert it with numpy (e.g. .astype(np.uint8)), or pass the file's path",
                )
            return item
        return decode_gray(item, self.cfg.limits)

    def prepare(self, grays: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded gray images -> the model's input batch (resized; normalised for single members)."""
        return to_model_input(grays, self.metadata.preprocess, normalized=self.normalized_input)

    def run(self, batch: np.ndarray, heatmaps: bool | None = None) -> RawOutput:
        """Pure inference on a prepared batch; ``heatmaps`` (None: when a heatmap sink is set) asks for them."""
        n = batch.shape[0]
        if self.pads_batches and 0 < n < self.cfg.batch_size:
            pad = np.zeros((self.cfg.batch_size - n, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        names = [self._prob_output] + ([self._members_output] if self._members_output else [])
        asked = self.cfg.heatmap_sink is not None if heatmaps is None else heatmaps
        want_heat = asked and self._heatmap_output is not None
        want_ood = self.ood_threshold is not None
        if want_ood:
            names.append(OUTPUT_OOD_SCORE)
        if want_heat:
            names.append(OUTPUT_HEATMAP)
        outs = self.info.session.run(names, {self.input_name: batch})
        probs = np.asarray(outs[0], dtype=np.float32)[:n]
        if self._apply_softmax:
            probs = softmax(probs.astype(np.float64)).astype(np.float32)
        members = np.asarray(outs[1], dtype=np.float32)[:n] if self._members_output else None
        heat = np.asarray(outs[-1], dtype=np.float32)[:n] if want_heat else None
        ood = np.asarray(outs[names.index(OUTPUT_OOD_SCORE)], dtype=np.float32)[:n] if want_ood else None
        return RawOutput(probs, members, heat, ood)

    @property
    def has_heatmaps(self) -> bool:
        """Whether the graph has the ``heatmap`` output (the heatmap variant of a fused ensemble)."""
        return self._heatmap_output is not None

    def _to_predictions(self, sources: Sequence[str], out: RawOutput, seconds: float) -> list[Prediction]:
        preds = []
        per_image = seconds / max(len(sources), 1)
        mp, flags = out.member_probabilities, self.operating_thresholds
        members = self.member_names or tuple(f"member_{j}" for j in range(0 if mp is None else mp.shape[1]))
        for i, src in enumerate(sources):
            p = out.probabilities[i]
            k = int(np.argmax(p))
            probabilities = {c: float(v) for c, v in zip(self.classes, p, strict=True)}
            member_probs = None
            if mp is not None:  # member -> class -> probability
                member_probs = {
                    n: dict(zip(self.classes, mp[i, j].tolist(), strict=True)) for j, n in enumerate(members)
                }
            pred = Prediction(
                source=src,
                label=self.classes[k],
                probability=float(p[k]),
                probabilities=probabilities,
                member_probabilities=member_probs,
                above_operating_point={c: bool(probabilities[c] >= t) for c, t in flags.items()} or None,
                assessable=True,
                ood_score=None if out.ood_scores is None else float(out.ood_scores[i]),
                model_id=self.model_id,
                precision=self.info.precision,
                provider=self.provider,
                seconds=per_image,
                warnings=self.warnings,
            )
            if out.ood_scores is not None:
                pred = with_reasons(pred, (ood_reason(float(out.ood_scores[i]), self.ood_threshold),))
            preds.append(pred)
        return preds

    def predict_arrays(
        self, grays: Sequence[np.ndarray], sources: Sequence[str] | None = None
    ) -> list[Prediction]:
        """Predict already-decoded uint8 gray images (one inference batch)."""
        if not grays:
            return []
        preds, heat = self._predict_raw(grays, sources)
        self._send_heatmaps(preds, grays, heat)
        return preds

    def _predict_raw(
        self, grays: Sequence[np.ndarray], sources: Sequence[str] | None, heatmaps: bool | None = None
    ) -> tuple[list[Prediction], np.ndarray | None]:
        sources = list(sources) if sources is not None else [f"array[{i}]" for i in range(len(grays))]
        t0 = time.perf_counter()
        out = self.run(self.prepare(grays), heatmaps=heatmaps)
        preds = self._to_predictions(sources, out, time.perf_counter() - t0)
        preds = [with_reasons(p, (grey_range_reason(g),)) for p, g in zip(preds, grays, strict=True)]
        return preds, out.heatmaps

    def _send_heatmaps(
        self, preds: Sequence[Prediction], originals: Sequence[np.ndarray], heat: np.ndarray | None
    ) -> None:
        """Hand each image (at its own size) and its heatmap (None: the graph has none) to the sink."""
        sink = self.cfg.heatmap_sink
        if sink is None:
            return
        for i, (pred, original) in enumerate(zip(preds, originals, strict=True)):
            sink(pred, original, None if heat is None else heat[i])

    def explain(self, item: Any, name: str | None = None) -> Explained:
        """One input's prediction with its decoded image and, when the graph has the output, its heatmap."""
        value = as_item(item)
        name = name or _default_name(value, 0)
        try:
            original = self.decode(value)
        except CxrError as e:
            return Explained(self._error_row(name, e.one_line))
        image = resize_gray(original, self.metadata.preprocess)
        preds, heat = self._predict_raw([image], [name], heatmaps=self.has_heatmaps)
        pred = with_reasons(preds[0], header_reasons(value))
        return Explained(pred, original, None if heat is None else heat[0])

    def load(self, item: Item) -> np.ndarray:
        """Decode one item and resize it to the model's input size (the per-image work of a batch)."""
        return resize_gray(self.decode(item), self.metadata.preprocess)

    def _load_safe(self, item: Item, name: str) -> _Loaded:
        original = None
        try:
            if self.cfg.heatmap_sink is None:
                image = self.load(item)
            else:  # the sink draws on the image at its own size
                original = self.decode(item)
                image = resize_gray(original, self.metadata.preprocess)
        except CxrError as e:
            return _Loaded(None, e.one_line)
        except Exception as e:  # one unreadable file must never end a scan: it becomes an error row
            log.debug("unexpected error decoding %s", name, exc_info=True)
            return _Loaded(None, f"{name}: unexpected {type(e).__name__} while decoding: {e}")
        return _Loaded(image, None, header_reasons(item), original)

    def iter_predict(
        self, items: Iterable[Item], names: Iterable[str] | None = None
    ) -> Iterator[list[Prediction]]:
        """One list of predictions per batch, in input order; decoding runs ``prefetch_batches`` ahead."""
        bs = self.cfg.batch_size
        named = (  # an iterator: each batch takes the next ``batch_size`` of it
            zip(names, items, strict=True)
            if names is not None
            else ((_default_name(it, i), it) for i, it in enumerate(items))
        )
        pool = ThreadPoolExecutor(self.cfg.decode_workers, thread_name_prefix="cxr-decode")

        def submit_next() -> list[tuple[str, Future[_Loaded]]]:
            return [(name, pool.submit(self._load_safe, it, name)) for name, it in islice(named, bs)]

        try:
            queue: deque[list[tuple[str, Future[_Loaded]]]] = deque()
            for _ in range(self.cfg.prefetch_batches + 1):
                nxt = submit_next()
                if not nxt:
                    break
                queue.append(nxt)
            while queue:
                batch = queue.popleft()
                if nxt := submit_next():
                    queue.append(nxt)
                yield self._predict_loaded([(name, fut.result()) for name, fut in batch])
        finally:  # on Ctrl-C or an abandoned generator, drop the decodes not yet started
            pool.shutdown(wait=True, cancel_futures=True)

    def _error_row(self, source: str, error: str) -> Prediction:
        return Prediction(
            source,
            None,
            None,
            model_id=self.model_id,
            precision=self.info.precision,
            provider=self.provider,
            warnings=self.warnings,
            error=error,
        )

    def _predict_loaded(self, loaded: Sequence[tuple[str, _Loaded]]) -> list[Prediction]:
        out = [self._error_row(name, one.error or "unknown error") for name, one in loaded]
        good = [(i, one) for i, (_, one) in enumerate(loaded) if one.image is not None]
        if good:
            grays = [one.image for _, one in good if one.image is not None]
            preds, heat = self._predict_raw(grays, [loaded[i][0] for i, _ in good])
            preds = [with_reasons(pred, one.reasons) for (_, one), pred in zip(good, preds, strict=True)]
            originals = [one.original if one.original is not None else one.image for _, one in good]
            self._send_heatmaps(preds, [o for o in originals if o is not None], heat)
            for (i, _), pred in zip(good, preds, strict=True):
                out[i] = pred
        return out

    @overload
    def predict(self, items: Item | PathLike[str]) -> Prediction: ...  # type: ignore[overload-overlap]

    @overload
    def predict(self, items: Sequence[Item | PathLike[str]]) -> list[Prediction]: ...

    def predict(self, items: Any) -> Prediction | list[Prediction]:
        """One input gives one ``Prediction``, a list or tuple a list; unreadable inputs get ``error`` set."""
        if is_single(items):
            return self.predict([items])[0]
        if not isinstance(items, Sequence):
            raise TypeError(
                f"predict takes a path, bytes, a PIL image, a uint8 array or a list of them, got "
                f"{type(items).__name__}"
            )
        return [p for batch in self.iter_predict([as_item(i) for i in items]) for p in batch]
