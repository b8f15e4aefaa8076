"""One member's export contract: I/O names, opsets and size limits, ``ExportConfig`` in, ``ExportResult`` out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cxr.errors import ConfigError
from cxr.spec import INPUT_MEMBER, OUTPUT_LOGITS, ModelMetadata

BATCH_AXIS = "batch"
DYNAMIC_AXES: dict[str, dict[int, str]] = {INPUT_MEMBER: {0: BATCH_AXIS}, OUTPUT_LOGITS: {0: BATCH_AXIS}}
DEFAULT_OPSET = 17
MIN_OPSET = 17  # LayerNorm is one LayerNormalization op from opset 17
DYNAMO_MIN_OPSET = 18  # torch 2.14's dynamo exporter writes opset >= 18 and cannot convert down reliably
PROTOBUF_LIMIT = 2 * 1024**3
EXTERNAL_DATA_MARGIN = 64 * 1024**2
DEFAULT_EXTERNAL_DATA_THRESHOLD = PROTOBUF_LIMIT - EXTERNAL_DATA_MARGIN  # weights above: <name>.onnx.data

# INT8 accuracy control's bar: the mean change of a member's class probabilities, INT8 vs FP32, on the val images
# (per image the total-variation distance, 1 where its top-1 moves: cxr.export.nncf_int8); what the rehearsal's
# ConvNeXt and VGG reach unaided (benchmarks/README.md, "INT8 verdict on the rehearsal ensemble")
DEFAULT_INT8_MAX_PROBABILITY_CHANGE = 0.005

Exporter = Literal["auto", "torchscript", "dynamo"]
EXPORTERS: tuple[str, ...] = ("auto", "torchscript", "dynamo")


@dataclass(frozen=True)
class ExporterChoice:
    exporter: Literal["torchscript", "dynamo"]
    reason: str


@dataclass(frozen=True)
class ExportConfig:
    out: Path
    metadata: ModelMetadata
    input_size: tuple[int, int]
    opset: int = DEFAULT_OPSET
    exporter: Exporter = "auto"
    trace_batch: int = 2
    simplify: bool = True
    check_batches: tuple[int, ...] = (1, 3, 8)
    external_data_threshold: int = DEFAULT_EXTERNAL_DATA_THRESHOLD
    check_atol: float = 1e-4  # max |p_onnx - p_torch| of the class probabilities in the batch checks
    timm_name: str | None = None  # picks the exporter in "auto"; default: metadata.card["timm_name"]
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if Path(self.out).suffix != ".onnx":
            raise ConfigError(
                f"output {self.out} must end in .onnx", hint="for example onnx/densenet121.onnx"
            )
        if tuple(self.input_size) != tuple(self.metadata.preprocess.input_size):
            raise ConfigError(
                f"input_size {self.input_size} differs from the metadata's preprocessing input size "
                f"{self.metadata.preprocess.input_size}",
                hint="export at the size the model was trained at (the PreprocessSpec's input_size)",
            )
        if self.exporter not in EXPORTERS:
            raise ConfigError(
                f"unknown exporter {self.exporter!r}", hint=f"use one of {', '.join(EXPORTERS)}"
            )
        if self.trace_batch < 2:
            raise ConfigError(
                f"trace_batch {self.trace_batch} is too small",
                hint="trace with batch >= 2: a batch-1 trace can bake the batch size into Reshape/Flatten",
            )
        if not self.check_batches or any(b < 1 for b in self.check_batches):
            raise ConfigError(f"check_batches {self.check_batches} must be positive batch sizes")
        if self.external_data_threshold < 0:
            raise ConfigError(f"external_data_threshold {self.external_data_threshold} must be >= 0")


@dataclass(frozen=True)
class BatchCheck:
    batch: int
    max_abs: float
    top1_agreement: float
    passed: bool


@dataclass(frozen=True)
class ExportResult:
    path: Path
    exporter: str
    exporter_reason: str
    simplified: bool
    simplify_reason: str | None  # why the graph was not simplified (None when it was)
    seconds: float
    size_bytes: int  # the .onnx file plus its external data, if any
    flops_per_image: int
    opset: int
    ir_version: int
    external_data: bool
    sha256: str
    batch_checks: tuple[BatchCheck, ...] = field(default=())
