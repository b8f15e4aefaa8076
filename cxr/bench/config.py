"""Takes cxr-bench's options; makes a checked ``BenchConfig`` and the (provider, precision) runs to
measure."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr.errors import ConfigError, ProviderError
from cxr.precision import PRECISION_NAMES
from cxr.session import PROVIDER_NAMES, SessionConfig, check_precision


@dataclass(frozen=True)
class TimingPlan:
    warmup: int = 3
    iterations: int = 20  # at least this many timed calls (per client)
    min_seconds: float = 0.0  # and at least this long

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ConfigError(f"warm-up runs must be >= 0, got {self.warmup}", hint="e.g. --warmup 3")
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}", hint="e.g. --iterations 20")
        if self.min_seconds < 0:
            raise ConfigError(
                f"minimum seconds must be >= 0, got {self.min_seconds}", hint="e.g. --min-seconds 10"
            )


def provider_precisions(
    providers: Sequence[str], precisions: Sequence[str]
) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The (provider, precision) runs to measure and one note per pair skipped; ``ConfigError`` when a
    precision or a provider would get no run at all."""
    runs: list[tuple[str, str]] = []
    notes: list[str] = []
    refused: dict[tuple[str, str], str] = {}
    for provider in providers:
        for precision in precisions:
            try:
                check_precision(provider, precision)
            except ProviderError as e:
                refused[(provider, precision)] = e.message
                continue
            # onnxruntime runs a file as stored, but auto may pick its verified INT8 file: fp32 stays apart
            run = (provider, precision if provider == "openvino" or precision != "bf16" else "auto")
            if run not in runs:
                runs.append(run)
    for precision in precisions:
        if all((p, precision) in refused for p in providers):
            raise ConfigError(
                f"no provider asked for can run precision {precision!r}: {refused[(providers[0], precision)]}",
                hint="bf16 runs on --provider openvino only, int8 on openvino and cpu; onnxruntime otherwise "
                "runs a file as it is stored",
            )
    for provider in providers:
        if not any(r[0] == provider for r in runs):
            raise ConfigError(
                f"provider {provider!r} can run none of the precisions {', '.join(precisions)}",
                hint="add --precision auto (or fp32), or drop that provider",
            )
    notes += [f"skipped {p} {q}: {why}" for (p, q), why in refused.items()]
    return tuple(runs), tuple(notes)


@dataclass(frozen=True)
class BenchConfig:
    """What cxr-bench measures: model files x providers x precisions x threads x batch sizes x clients."""

    model: Path
    variants: tuple[Path, ...] = ()  # other precisions of the same model (FP16/INT8 files)
    session: SessionConfig = field(default_factory=SessionConfig)  # shared options; the sweep sets the rest
    providers: tuple[str, ...] = ("cpu",)
    # openvino: auto | fp32 | bf16 | int8; cpu: auto | int8 (the verified INT8 file beside), else as stored
    precisions: tuple[str, ...] = ("auto",)
    threads: tuple[int | None, ...] = (None,)  # None: onnxruntime's default
    batch_sizes: tuple[int, ...] = (1,)
    concurrency: tuple[int, ...] = (1,)
    pool: bool = True  # with concurrency N > 1, also run N clients against N sessions
    warmup: int = 3
    iterations: int = 20
    min_seconds: float = 0.0
    folder: Path | None = None  # end-to-end rows: decode + preprocess + inference on these files
    peak_gflops: float | str | Mapping[str, float] | None = None  # efficiency's denominators (FP32 or each)
    seed: int = 0  # for the random input pixels when there is no folder
    command: str = ""  # recorded in the report

    def __post_init__(self) -> None:
        for p in self.providers or ("",):
            if p not in PROVIDER_NAMES:
                raise ConfigError(
                    f"unknown provider {p!r}", hint=f"use one or more of: {', '.join(PROVIDER_NAMES)}"
                )
        lists: tuple[tuple[str, tuple[Any, ...]], ...] = (
            ("providers", self.providers),
            ("batch sizes", self.batch_sizes),
            ("threads", self.threads),
            ("concurrency", self.concurrency),
        )
        for what, given in lists:
            if not given:
                raise ConfigError(f"no {what} given", hint="e.g. 1,8")
            if len(set(given)) != len(given):
                raise ConfigError(f"{what} {list(given)} repeat a value", hint="give each value once")
        for name, values in (("batch size", self.batch_sizes), ("concurrency", self.concurrency)):
            if any(v < 1 for v in values):
                raise ConfigError(f"every {name} must be >= 1, got {list(values)}", hint="e.g. 1,8")
        if any(t is not None and t < 1 for t in self.threads):
            raise ConfigError(
                f"thread counts must be >= 1, got {list(self.threads)}", hint="e.g. --threads 1,2"
            )
        unknown = [p for p in self.precisions if p not in PRECISION_NAMES]
        if unknown or not self.precisions or len(set(self.precisions)) != len(self.precisions):
            raise ConfigError(
                f"precisions {list(self.precisions)}: give each of {', '.join(PRECISION_NAMES)} at most once",
                hint="e.g. --precision fp32,bf16,int8 (bf16 needs --provider openvino)",
            )
        provider_precisions(self.providers, self.precisions)  # refuses pairs nothing can run
        TimingPlan(self.warmup, self.iterations, self.min_seconds)  # validates the plan

    @property
    def runs(self) -> tuple[tuple[str, str], ...]:
        """The (provider, precision) pairs to measure, in the order asked (``provider_precisions``)."""
        return provider_precisions(self.providers, self.precisions)[0]

    @property
    def plan(self) -> TimingPlan:
        return TimingPlan(self.warmup, self.iterations, self.min_seconds)

    def session_for(self, provider: str, precision: str, threads: int | None) -> SessionConfig:
        """The shared session options with one run's provider, precision and threads."""
        return dataclasses.replace(self.session, provider=provider, precision=precision, threads=threads)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d, default=str))
