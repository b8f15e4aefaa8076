"""Takes a cluster scan's options; makes a checked ``RayScanConfig`` (what to scan, where, on which actors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cxr.errors import ConfigError
from cxr.runtime.predictor import PredictorConfig
from cxr.runtime.results import ResultFormat

ReadMode = Literal["auto", "path", "bytes"]
READ_MODES: tuple[str, ...] = ("auto", "path", "bytes")


@dataclass(frozen=True)
class RayScanConfig:
    model: Path  # the same file at the same path on every node (shared volume or container image)
    source: str | Path  # folder (local/NFS path or URL); with ``manifest``: the root its paths are under
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    recursive: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    manifest: Path | None = None  # scan the files this cxr manifest lists instead of listing ``source``
    split: str | None = None  # with ``manifest``: only this split (train, val, test); None: all
    output: Path | None = None  # None: rows go to the stream given to ``ray_scan``
    stream_format: ResultFormat = "csv"
    resume: bool = False
    overwrite: bool = False
    address: str | None = None  # None: a new local Ray instance (or $RAY_ADDRESS); "auto"; HOST:PORT; ray://
    local_cpus: int | None = None  # CPUs of a local instance started here (None: all)
    actors: int | None = None  # None: one per GPU, else one per ``cpus_per_actor`` CPUs of the cluster
    cpus_per_actor: float = 1.0  # also the actor's onnxruntime threads unless the predictor sets them
    gpus_per_actor: float | None = None  # None: 1 when the provider runs on GPUs and the cluster has some
    read: ReadMode = "auto"
    batches_per_block: int | None = None  # inference batches per Ray block (None: 1-8, ~4 blocks per actor)
    connect_timeout_s: float = 5.0
    ray_logs: bool = False  # keep Ray's INFO logs and progress bars

    def __post_init__(self) -> None:
        if self.read not in READ_MODES:
            raise ConfigError(f"unknown read mode {self.read!r}", hint=f"use one of {', '.join(READ_MODES)}")
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"actors must be >= 1, got {self.actors}", hint="omit it to fill the cluster")
        if self.cpus_per_actor <= 0:
            raise ConfigError(f"cpus per actor must be > 0, got {self.cpus_per_actor}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ConfigError(f"gpus per actor must be >= 0, got {self.gpus_per_actor}")
        if self.batches_per_block is not None and self.batches_per_block < 1:
            raise ConfigError(f"batches per block must be >= 1, got {self.batches_per_block}")
        if self.split is not None and self.manifest is None:
            raise ConfigError("a split selects rows of a manifest", hint="add --manifest manifest.csv")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite contradict each other", hint="pass one of them")
