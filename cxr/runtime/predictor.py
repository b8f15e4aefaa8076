"""The torch-free runtime: one small class that runs a cxr ONNX model (fused ensemble or single member).

Takes: a cxr ONNX file (metadata written by ``cxr export`` / ``cxr fuse``) and images (paths, bytes, or
decoded uint8 grayscale arrays). Makes: ``Prediction`` objects (class, confidence, every class probability,
member probabilities when the model has them, provider really used, timing, error).
Class list and preprocessing come from the model's metadata; a file without it is refused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.errors import CxrError, DecodeError, ModelError
from cxr.imaging.decode import DEFAULT_LIMITS, DecodeLimits, decode_gray
from cxr.imaging.preprocess import to_model_input
from cxr.runtime.session import SessionConfig, SessionInfo, create_session, file_sha256
from cxr.runtime.types import Prediction
from cxr.spec import ModelMetadata

Item = Path | str | bytes | np.ndarray


@dataclass(frozen=True)
class PredictorConfig:
    session: SessionConfig = field(default_factory=SessionConfig)
    limits: DecodeLimits = DEFAULT_LIMITS
    batch_size: int = 8
    decode_workers: int = 2

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ModelError(
                f"batch size must be >= 1, got {self.batch_size}", hint="use e.g. --batch-size 8"
            )
        if self.decode_workers < 1:
            raise ModelError(f"decode workers must be >= 1, got {self.decode_workers}")


@dataclass(frozen=True)
class RawOutput:
    """Pure inference output for one batch."""

    probabilities: np.ndarray  # float32 [N, K]
    member_probabilities: np.ndarray | None  # float32 [N, M, K] for ensembles


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """Run a cxr model with onnxruntime. Create with ``Predictor.from_path``."""

    def __init__(self, path: Path, info: SessionInfo, metadata: ModelMetadata, cfg: PredictorConfig) -> None:
        self.model_path = path
        self.info = info
        self.metadata = metadata
        self.cfg = cfg
        self.model_id = file_sha256(path)[:16]
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
        if "probabilities" in self.output_names:
            self._prob_output = "probabilities"
            self._apply_softmax = False
        elif "logits" in self.output_names:
            self._prob_output = "logits"
            self._apply_softmax = True
        else:
            raise ModelError(
                f"{path}: outputs {self.output_names} include neither 'probabilities' nor 'logits'",
                hint="re-export the model with cxr",
                path=path,
            )
        self._members_output = "member_probabilities" if "member_probabilities" in self.output_names else None
        self.member_names: tuple[str, ...] = tuple(metadata.card.get("member_order", ()))

    @classmethod
    def from_path(cls, model: Path | str, cfg: PredictorConfig | None = None) -> Predictor:
        cfg = cfg or PredictorConfig()
        path = Path(model)
        info = create_session(path, cfg.session)
        meta_map = info.session.get_modelmeta().custom_metadata_map
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

    def decode(self, item: Item) -> np.ndarray:
        """Decode one item to uint8 gray [H, W] (arrays pass through after a dtype/shape check)."""
        if isinstance(item, np.ndarray):
            if item.ndim != 2 or item.dtype != np.uint8:
                raise DecodeError(
                    f"array input must be uint8 [H, W] grayscale, got {item.dtype} {item.shape}"
                )
            return item
        return decode_gray(item, self.cfg.limits)

    def prepare(self, grays: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded gray images -> the model's input batch (resized; normalised for single members)."""
        return to_model_input(grays, self.metadata.preprocess, normalized=self.normalized_input)

    def run(self, batch: np.ndarray) -> RawOutput:
        """Pure inference on a prepared batch."""
        names = [self._prob_output] + ([self._members_output] if self._members_output else [])
        outs = self.info.session.run(names, {self.input_name: batch})
        probs = np.asarray(outs[0], dtype=np.float32)
        if self._apply_softmax:
            probs = softmax(probs.astype(np.float64)).astype(np.float32)
        members = np.asarray(outs[1], dtype=np.float32) if self._members_output else None
        return RawOutput(probs, members)

    def _to_predictions(self, sources: Sequence[str], out: RawOutput, seconds: float) -> list[Prediction]:
        preds = []
        per_image = seconds / max(len(sources), 1)
        for i, src in enumerate(sources):
            p = out.probabilities[i]
            k = int(np.argmax(p))
            members = None
            if out.member_probabilities is not None:
                names = self.member_names or tuple(
                    f"member_{j}" for j in range(out.member_probabilities.shape[1])
                )
                members = {
                    n: {
                        c: float(v) for c, v in zip(self.classes, out.member_probabilities[i, j], strict=True)
                    }
                    for j, n in enumerate(names)
                }
            preds.append(
                Prediction(
                    source=src,
                    label=self.classes[k],
                    confidence=float(p[k]),
                    probabilities={c: float(v) for c, v in zip(self.classes, p, strict=True)},
                    member_probabilities=members,
                    provider=self.provider,
                    seconds=per_image,
                )
            )
        return preds

    def predict_arrays(
        self, grays: Sequence[np.ndarray], sources: Sequence[str] | None = None
    ) -> list[Prediction]:
        """Predict already-decoded uint8 gray images (one inference batch)."""
        if not grays:
            return []
        sources = list(sources) if sources is not None else [f"array[{i}]" for i in range(len(grays))]
        t0 = time.perf_counter()
        out = self.run(self.prepare(grays))
        return self._to_predictions(sources, out, time.perf_counter() - t0)

    def predict(self, items: Sequence[Item]) -> list[Prediction]:
        """Decode (in a thread pool) and predict; unreadable items get a Prediction with ``error`` set."""
        results: list[Prediction | None] = [None] * len(items)
        names = [
            f"array[{i}]" if isinstance(it, np.ndarray) else ("<bytes>" if isinstance(it, bytes) else str(it))
            for i, it in enumerate(items)
        ]

        def _decode(i: int) -> tuple[int, np.ndarray | None, str | None]:
            try:
                return i, self.decode(items[i]), None
            except CxrError as e:
                return i, None, e.message

        bs = self.cfg.batch_size
        with ThreadPoolExecutor(self.cfg.decode_workers) as pool:
            decoded = list(pool.map(_decode, range(len(items))))
        good = [(i, g) for i, g, err in decoded if g is not None]
        for i, _, err in decoded:
            if err is not None:
                results[i] = Prediction(names[i], None, None, provider=self.provider, error=err)
        for start in range(0, len(good), bs):
            chunk = good[start : start + bs]
            preds = self.predict_arrays([g for _, g in chunk], [names[i] for i, _ in chunk])
            for (i, _), p in zip(chunk, preds, strict=True):
                results[i] = p
        return [r for r in results if r is not None]
