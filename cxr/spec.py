"""Preprocessing, labels and provenance as data: the contract between training, export and runtime.

``PreprocessSpec`` is the single source of truth for how an image becomes a model input. ``ModelMetadata``
is what every exported cxr ONNX file carries as JSON in its ``metadata_props``; the runtime reads it back
and refuses files without it. ``Prediction`` is the result schema every surface emits. Torch-free and
onnx-free.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from cxr.errors import DataError, ModelError
from cxr.labels import CLASSES, NOTICE

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

FORMAT_VERSION = 1
"""Version of the metadata layout below; bumped when it changes incompatibly."""

META_FORMAT = "cxr.format_version"
META_CLASSES = "cxr.classes"
META_PREPROCESS = "cxr.preprocess"
META_INPUT = "cxr.input"
META_CARD = "cxr.card"
META_STACK = "cxr.meta"  # the meta-learner graph's description (member order, calibration, operating points)
META_VERIFIED_PRECISIONS = "cxr.verified_precisions"  # {record: verification}, one per (backend, precision)
INT8_RECORDS = ("openvino_int8", "onnxruntime_int8")
"""The INT8 records of ``cxr.verified_precisions`` (one per backend), written by ``cxr fuse`` into the FP32 fused
file and its ``ensemble.int8.onnx`` alike: ``{"file": name, "sha256": the INT8 file's, "bar": {"agreement": 0.99,
"sensitivity_points": 1.0}, "split": "test" (or the unlabelled folder checked, never accepted), "images": n,
"kinds": {cpu kind (cxr.cpu_kind): {"accepted": bool, "agreement": float | None, "sensitivity_change_points":
{class: float}, "reason": str}}}``. The FP32 file's copy names the INT8 file as it ends up; the INT8 file's own
copy cannot name its own hash (writing it changes the file), so it names the graph before its records. The
runtime offers INT8 on a CPU only where its kind's entry is accepted and, the FP32 file beside it, that file's
sha256 matches."""

# The graph contract: tensor names every cxr graph uses. Fuse writes them, the runtime, Triton and the
# evaluation read them; nothing outside this module types them again (tests/test_spec_contract.py).
INPUT_IMAGE = "image"  # the fused ensemble's input: uint8 [N, 1, H, W]
INPUT_MEMBER = "input"  # an exported member's input: float32 [N, C, H, W], normalised
INPUT_FEATURES = "features"  # the meta-learner graph's input: float64 [N, M * K]
OUTPUT_PROBABILITIES = "probabilities"  # [N, K]
OUTPUT_LABEL = "label"  # int64 [N], the predicted class index
OUTPUT_MEMBER_PROBABILITIES = "member_probabilities"  # float32 [N, M, K]
OUTPUT_LOGITS = "logits"  # an exported member's output: [N, K]
OUTPUT_HEATMAP = "heatmap"  # the heatmap variant: float32 [N, H, W] of the predicted class
OUTPUT_CLASS_HEATMAPS = "class_heatmaps"  # the heatmap variant: float32 [N, K, H, W]
OUTPUT_OOD_SCORE = "ood_score"  # float32 [N], where an out-of-distribution score was fitted
GRAPH_NAMES = (
    INPUT_IMAGE,
    INPUT_MEMBER,
    INPUT_FEATURES,
    OUTPUT_PROBABILITIES,
    OUTPUT_LABEL,
    OUTPUT_MEMBER_PROBABILITIES,
    OUTPUT_LOGITS,
    OUTPUT_HEATMAP,
    OUTPUT_CLASS_HEATMAPS,
    OUTPUT_OOD_SCORE,
)

# Keys of the model card (``META_CARD``) and the meta-learner description (``META_STACK``) that code reads.
CARD_MEMBER_ORDER = "member_order"  # the members in the meta-learner's feature order
CARD_CALIBRATION = "calibration"  # the temperature built into the graph and how it was fitted
CARD_OPERATING_POINTS = "operating_points"  # {class: {threshold, ...}}, read by cxr.runtime.operating
CARD_OOD = "ood"  # the out-of-distribution score's threshold and fit, read by cxr.runtime.assess
CARD_INT8_FLOAT_MEMBERS = "int8_float_members"  # INT8 ensemble: {member run in FP32: why} (cxr.fuse.members)

InputFormat = Literal["uint8_gray", "float_normalized"]
"""``uint8_gray``: the graph takes uint8 [N, 1, H, W] grayscale and normalises inside (fused ensembles).
``float_normalized``: the graph takes float32 [N, C, H, W] already normalised (single exported members)."""

REEXPORT_HINT = (
    "export it with cxr (`cxr export RUN_DIR` for members, `cxr fuse RUN_DIR` for the ensemble), "
    "which writes the class list and preprocessing into the file's metadata"
)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a decoded grayscale image becomes a model input.

    Decode to 8-bit grayscale, resize to ``input_size`` (H, W) with Pillow's antialiased ``interpolation``,
    scale to [0, 1], replicate to ``channels``, subtract ``mean`` and divide by ``std`` per channel.
    """

    input_size: tuple[int, int] = (224, 224)
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: Literal["bilinear"] = "bilinear"

    def __post_init__(self) -> None:
        h, w = self.input_size
        if h < 8 or w < 8:
            raise ModelError(f"input_size {self.input_size} is too small", hint="use at least 8x8 pixels")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ModelError(
                f"mean {self.mean} / std {self.std} must have one value per channel ({self.channels})"
            )
        if any(s <= 0 for s in self.std):
            raise ModelError(f"std {self.std} must be positive")
        if self.interpolation != "bilinear":
            raise ModelError(f"interpolation {self.interpolation!r} is not supported", hint="use 'bilinear'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessSpec:
        try:
            return cls(
                input_size=(int(d["input_size"][0]), int(d["input_size"][1])),
                channels=int(d.get("channels", 3)),
                mean=tuple(float(v) for v in d.get("mean", IMAGENET_MEAN)),
                std=tuple(float(v) for v in d.get("std", IMAGENET_STD)),
                interpolation=d.get("interpolation", "bilinear"),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ModelError(f"malformed preprocessing spec {dict(d)!r}: {e}", hint=REEXPORT_HINT) from e

    @classmethod
    def square(cls, size: int) -> PreprocessSpec:
        return cls(input_size=(size, size))


@dataclass(frozen=True)
class ModelMetadata:
    """What a cxr ONNX file says about itself. ``card`` holds provenance (free-form JSON object)."""

    classes: tuple[str, ...] = CLASSES
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    input_format: InputFormat = "float_normalized"
    card: Mapping[str, Any] = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        """Encode as ONNX ``metadata_props`` (all values JSON strings)."""
        card = {"notice": NOTICE, **dict(self.card)}
        return {
            META_FORMAT: json.dumps(FORMAT_VERSION),
            META_CLASSES: json.dumps(list(self.classes)),
            META_PREPROCESS: json.dumps(self.preprocess.to_dict()),
            META_INPUT: json.dumps(self.input_format),
            META_CARD: json.dumps(card, sort_keys=True, default=str),
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], *, source: str = "model") -> ModelMetadata:
        """Decode ``metadata_props``; a file without cxr metadata is refused with how to re-export."""
        missing = [k for k in (META_CLASSES, META_PREPROCESS, META_INPUT) if k not in props]
        if missing:
            raise ModelError(
                f"{source} has no cxr metadata (missing {', '.join(missing)}); cxr cannot know its classes "
                "or preprocessing",
                hint=REEXPORT_HINT,
                path=source,
            )
        try:
            version = json.loads(props.get(META_FORMAT, "1"))
            classes = tuple(str(c) for c in json.loads(props[META_CLASSES]))
            spec = PreprocessSpec.from_dict(json.loads(props[META_PREPROCESS]))
            input_format = json.loads(props[META_INPUT])
            card = json.loads(props.get(META_CARD, "{}"))
        except (json.JSONDecodeError, TypeError) as e:
            raise ModelError(
                f"{source} has malformed cxr metadata: {e}", hint=REEXPORT_HINT, path=source
            ) from e
        if version != FORMAT_VERSION:
            raise ModelError(
                f"{source} uses cxr metadata format {version}; this cxr reads format {FORMAT_VERSION}",
                hint="re-export the model with this version of cxr, or install the cxr that made it",
                path=source,
            )
        if input_format not in ("uint8_gray", "float_normalized"):
            raise ModelError(
                f"{source}: unknown input format {input_format!r}", hint=REEXPORT_HINT, path=source
            )
        if not classes or len(set(classes)) != len(classes):
            raise ModelError(f"{source}: invalid class list {classes!r}", hint=REEXPORT_HINT, path=source)
        return cls(classes=classes, preprocess=spec, input_format=input_format, card=card)


def provenance_warnings(card: Mapping[str, Any]) -> tuple[str, ...]:
    """Plain warnings about what trained a model, for every place a result is shown.

    Reads the card's ``dataset`` (``synthetic``) and the starting weights (``pretrained.source`` of the
    model or of each ensemble member). A card without provenance (made before cxr recorded it) says so.
    """
    dataset = card.get("dataset")
    members = card.get("members")
    starts = [m.get("pretrained") for m in members if isinstance(m, Mapping)] if members else []
    if not members:
        starts = [card.get("pretrained")]
    out: list[str] = []
    if not isinstance(dataset, Mapping) or not all(isinstance(s, Mapping) for s in starts):
        out.append(
            "this model's card does not say what data and weights trained it (made before cxr recorded "
            "provenance): treat its output as unverified"
        )
    if isinstance(dataset, Mapping) and dataset.get("synthetic"):
        out.append(
            f"this model was trained on SYNTHETIC images ({dataset.get('name', 'unnamed data set')}): it shows "
            "that the pipeline works and must not be used on patients"
        )
    sources = [s.get("source") for s in starts if isinstance(s, Mapping)]
    if sources and all(s == "random" for s in sources):
        out.append("every part of this model was trained from random weights (no ImageNet pre-training)")
    return tuple(out)


def softmax(logits: np.ndarray, dtype: type[np.floating[Any]] = np.float64) -> np.ndarray:
    """Class probabilities [N, K] from logits [N, K], computed in ``dtype`` (the one softmax of cxr)."""
    z = np.asarray(logits, dtype=dtype)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- The result schema: one image's result, the same on every surface (CLI --json, CSV, API, Python) ---


@dataclass(frozen=True)
class Reason:
    """Why the input gate marked an image not assessable: a stable code and a sentence for the reader."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Prediction:
    """One image's result. ``error`` is set (and ``label`` is None) when the image could not be read.

    Fields, in the order every surface writes them (``RESULT_FIELDS``; JSON Schema: ``result_json_schema``):
    ``probability`` is the predicted class's; ``above_operating_point`` maps each class with an operating
    point to whether it reaches it (None: the model has none); ``assessable`` is the input gate's verdict
    (None on an error row) with its ``reasons``; ``ood_score`` the out-of-distribution score (None: the model
    has no gate); ``precision`` the arithmetic the backend really ran (None: the file's own); ``warnings``
    what trained the model (synthetic data, random weights), shown wherever the result is.
    """

    source: str
    label: str | None
    probability: float | None
    probabilities: Mapping[str, float] = field(default_factory=dict)
    member_probabilities: Mapping[str, Mapping[str, float]] | None = None
    above_operating_point: Mapping[str, bool] | None = None
    assessable: bool | None = None
    reasons: tuple[Reason, ...] = ()
    ood_score: float | None = None
    model_id: str = ""
    precision: str | None = None
    provider: str = ""
    seconds: float = 0.0
    warnings: tuple[str, ...] = ()
    error: str | None = None
    notice: str = NOTICE

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Prediction:
        """The inverse of ``to_dict`` (reasons back as ``Reason`` objects); unknown keys are refused."""
        unknown = set(d) - set(RESULT_FIELDS)
        if unknown:
            raise DataError(
                f"result record has unknown fields {sorted(unknown)}; a result has {list(RESULT_FIELDS)}",
                hint="read results written by this version of cxr",
            )
        fields = dict(d)
        fields["reasons"] = tuple(Reason(r["code"], r["message"]) for r in fields.get("reasons") or ())
        fields["warnings"] = tuple(fields.get("warnings") or ())
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready values, keys in ``RESULT_FIELDS`` order."""
        members = self.member_probabilities
        flags = self.above_operating_point
        return {
            "source": self.source,
            "label": self.label,
            "probability": self.probability,
            "probabilities": dict(self.probabilities),
            "member_probabilities": None if members is None else {k: dict(v) for k, v in members.items()},
            "above_operating_point": None if flags is None else dict(flags),
            "assessable": self.assessable,
            "reasons": [r.to_dict() for r in self.reasons],
            "ood_score": self.ood_score,
            "model_id": self.model_id,
            "precision": self.precision,
            "provider": self.provider,
            "seconds": self.seconds,
            "warnings": list(self.warnings),
            "error": None if self.error is None else " ".join(self.error.split()),
            "notice": self.notice,
        }


RESULT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Prediction))
"""The result's fields, in the order every surface writes them."""


def result_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one result record (published as ``docs/result.schema.json``)."""
    number = {"type": "number"}
    nullable = {"type": ["number", "null"]}
    probs = {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}}
    props: dict[str, Any] = {
        "source": {"type": "string", "description": "The input: a path, an upload's file name, array[i]."},
        "label": {"type": ["string", "null"], "description": "The most probable class; null on an error."},
        "probability": {**nullable, "description": "The probability of that class."},
        "probabilities": {**probs, "description": "Every class's probability, in the model's class order."},
        "member_probabilities": {
            "type": ["object", "null"],
            "additionalProperties": probs,
            "description": "Each ensemble member's class probabilities; null for a single model.",
        },
        "above_operating_point": {
            "type": ["object", "null"],
            "additionalProperties": {"type": "boolean"},
            "description": "Per class with an operating point (a threshold chosen on validation for a target "
            "sensitivity): whether its probability reaches it. A flag for review, not a diagnosis.",
        },
        "assessable": {
            "type": ["boolean", "null"],
            "description": "False when the input gate found a reason to review the image before the result "
            "is used (not a chest radiograph, unlike the training images, members disagree); null on an error.",
        },
        "reasons": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                "required": ["code", "message"],
                "additionalProperties": False,
            },
            "description": "Why the image is not assessable: stable codes and a sentence each.",
        },
        "ood_score": {**nullable, "description": "Out-of-distribution score (higher: less like training)."},
        "model_id": {"type": "string", "description": "First 16 hex digits of the model file's SHA-256."},
        "precision": {
            "type": ["string", "null"],
            "description": "The arithmetic the backend really ran (fp32, bf16); null: the file's own.",
        },
        "provider": {"type": "string", "description": "The backend that really ran the model."},
        "seconds": {**number, "minimum": 0, "description": "Inference time per image (its batch's share)."},
        "warnings": {
            "type": "array",
            "items": {"type": "string"},
            "description": "What trained the model (synthetic images, random weights, no provenance).",
        },
        "error": {"type": ["string", "null"], "description": "Why the input could not be read; else null."},
        "notice": {"type": "string", "const": NOTICE},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/cxr-toolkit/cxr/docs/result.schema.json",
        "title": "cxr result",
        "description": "One image's result from cxr-predict (--json, JSONL, CSV flattened), the HTTP API and "
        f"Python's Prediction.to_dict(). {NOTICE}",
        "type": "object",
        "properties": props,
        "required": list(RESULT_FIELDS),
        "additionalProperties": False,
    }
