"""Takes the options of ``cxr export-triton``; makes a checked ``TritonConfig`` and the file names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from cxr.errors import ConfigError

TrtPrecision = Literal["fp32", "fp16", "int8"]
TRT_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

KSERVE_FILE = "kserve-inferenceservice.yaml"
CXR_JSON = "cxr.json"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"
STORAGE_URI_PLACEHOLDER = "s3://REPLACE-ME/cxr-triton-repository"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class TritonConfig:
    """How the repository is written. Defaults suit one GPU; set ``gpu_instances=0`` for a CPU server."""

    model_name: str | None = None  # None: the model file's stem, made safe
    version: int = 1
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] | None = None  # None: (max_batch_size // 2, max_batch_size)
    max_queue_delay_us: int = 1000
    gpu_instances: int = 1  # instances per listed GPU (Triton's instance_group count)
    cpu_instances: int = 0
    gpus: tuple[int, ...] = ()  # empty: every GPU Triton sees
    cpu_threads: int | None = None  # onnxruntime intra-op threads per instance; None: backend default
    tensorrt: bool = False  # add the TensorRT execution accelerator for GPU instances
    trt_precision: TrtPrecision | None = None  # None: fp16, or int8 for a QDQ-quantized model
    trt_workspace_mib: int = 1024
    trt_cache_dir: str = "/tmp/cxr-trt-cache"  # a path inside the Triton container
    link: bool = False  # hard-link the model instead of copying it (falls back to a copy across devices)
    force: bool = False  # replace a model folder that holds another model
    kserve: bool = True
    storage_uri: str = STORAGE_URI_PLACEHOLDER

    def __post_init__(self) -> None:
        if self.model_name is not None and not _NAME_RE.match(self.model_name):
            raise ConfigError(
                f"model name {self.model_name!r} is not usable as a Triton model folder",
                hint="use 1-63 letters, digits, '_', '-' or '.', starting with a letter or digit",
            )
        if self.version < 1:
            raise ConfigError(f"version must be >= 1, got {self.version}", hint="Triton versions start at 1")
        if self.max_batch_size < 1:
            raise ConfigError(
                f"max batch size must be >= 1, got {self.max_batch_size}",
                hint="use e.g. --max-batch-size 8 (a model without a batch axis gets 0 automatically)",
            )
        for b in self.preferred_batch_sizes or ():
            if not 1 <= b <= self.max_batch_size:
                raise ConfigError(
                    f"preferred batch size {b} is outside 1..{self.max_batch_size} (the max batch size)",
                    hint="list sizes no larger than --max-batch-size",
                )
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"max queue delay must be >= 0 microseconds, got {self.max_queue_delay_us}")
        if self.gpu_instances < 0 or self.cpu_instances < 0:
            raise ConfigError("instance counts must be >= 0")
        if self.gpu_instances == 0 and self.cpu_instances == 0:
            raise ConfigError(
                "no instances: both --gpu-instances and --cpu-instances are 0",
                hint="ask for at least one GPU or CPU instance",
            )
        if any(g < 0 for g in self.gpus):
            raise ConfigError(f"GPU ids must be >= 0, got {self.gpus}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ConfigError(f"cpu threads must be >= 1, got {self.cpu_threads}")
        if self.trt_precision is not None and self.trt_precision not in TRT_PRECISIONS:
            raise ConfigError(
                f"unknown TensorRT precision {self.trt_precision!r}", hint=f"use {', '.join(TRT_PRECISIONS)}"
            )
        if self.tensorrt and self.gpu_instances == 0:
            raise ConfigError(
                "TensorRT runs on GPU instances only, but --gpu-instances is 0",
                hint="drop --tensorrt or add GPU instances",
            )
        if self.trt_workspace_mib < 1:
            raise ConfigError(f"TensorRT workspace must be >= 1 MiB, got {self.trt_workspace_mib}")

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The preferred batch sizes, resolved (sorted, unique)."""
        sizes = self.preferred_batch_sizes or (self.max_batch_size // 2, self.max_batch_size)
        return tuple(sorted({b for b in sizes if b >= 1}))
