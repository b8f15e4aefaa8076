"""Takes cxr-bench's options; makes a checked ``BenchConfig`` (what to measure, where, and how long)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cxr.bench.timing import TimingPlan
from cxr.errors import ConfigError
from cxr.session import PROVIDER_NAMES


@dataclass(frozen=True)
class BenchConfig:
    """What cxr-bench measures: model files x providers x threads x batch sizes x concurrency."""

    model: Path
    variants: tuple[Path, ...] = ()
    providers: tuple[str, ...] = ("cpu",)
    batch_sizes: tuple[int, ...] = (1,)
    threads: tuple[int | None, ...] = (None,)  # None: onnxruntime's default
    concurrency: tuple[int, ...] = (1,)
    pool: bool = True  # with concurrency N > 1, also run N clients against N sessions
    warmup: int = 3
    iterations: int = 20
    min_seconds: float = 0.0
    folder: Path | None = None  # end-to-end mode: decode + preprocess + inference on these files
    members: tuple[Path, ...] = ()  # member .onnx files or folders: the separate-sessions reference
    torch_run: Path | None = None  # training run with members/<name> checkpoints: the PyTorch reference
    peak_gflops: float | None = None  # None: $CXR_PEAK_GFLOPS, else unknown
    strict_provider: bool = False  # a provider fallback is an error instead of a reported row
    seed: int = 0  # for the random input pixels when there is no folder
    command: str = ""  # recorded in the report

    def __post_init__(self) -> None:
        if not self.providers:
            raise ConfigError(
                "no provider given", hint=f"use e.g. --provider cpu (one of {', '.join(PROVIDER_NAMES)})"
            )
        for p in self.providers:
            if p not in PROVIDER_NAMES:
                raise ConfigError(
                    f"unknown provider {p!r}", hint=f"use one or more of: {', '.join(PROVIDER_NAMES)}"
                )
        for name, values in (("batch size", self.batch_sizes), ("concurrency", self.concurrency)):
            if not values:
                raise ConfigError(f"no {name} given", hint="e.g. 1,8")
            if any(v < 1 for v in values):
                raise ConfigError(f"every {name} must be >= 1, got {list(values)}", hint="e.g. 1,8")
        if not self.threads:
            raise ConfigError("no thread count given", hint="e.g. --threads 1,2 (or 'default')")
        if any(t is not None and t < 1 for t in self.threads):
            raise ConfigError(
                f"thread counts must be >= 1, got {list(self.threads)}", hint="e.g. --threads 1,2"
            )
        lists: tuple[tuple[str, tuple[Any, ...]], ...] = (
            ("providers", self.providers),
            ("batch sizes", self.batch_sizes),
            ("threads", self.threads),
            ("concurrency", self.concurrency),
        )
        for what, given in lists:
            if len(set(given)) != len(given):
                raise ConfigError(f"{what} {list(given)} repeat a value", hint="give each value once")
        TimingPlan(self.warmup, self.iterations, self.min_seconds)  # validates the plan

    @property
    def plan(self) -> TimingPlan:
        return TimingPlan(self.warmup, self.iterations, self.min_seconds)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
            elif isinstance(v, tuple):
                d[k] = [str(x) if isinstance(x, Path) else x for x in v]
        return d
