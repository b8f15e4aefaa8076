"""Takes cxr-bench's options; makes a checked ``BenchConfig`` (what to measure, where, and how long).

``provider_precisions`` turns the providers x precisions asked for into the runs to measure: onnxruntime
runs a file as it is stored (``auto`` and ``fp32`` are one run there; ``bf16`` is refused), OpenVINO runs
``auto``, ``fp32`` or ``bf16``. A pair no provider can run is skipped with a note; a precision no asked
provider can run, or a provider left with no precision, is a ``ConfigError`` (exit 2) before measuring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cxr.bench.peak import DEFAULT_SIZE
from cxr.bench.timing import TimingPlan
from cxr.errors import ConfigError, ProviderError
from cxr.openvino_session import PRECISION_NAMES
from cxr.session import PROVIDER_NAMES, check_precision

ORT_SAME = ("auto", "fp32")  # what onnxruntime providers accept: both run the file as it is stored


def provider_precisions(
    providers: Sequence[str], precisions: Sequence[str]
) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The (provider, precision) runs to measure and one note per pair skipped; ``ConfigError`` when a
    precision or a provider would get no run at all. onnxruntime's runs are recorded as ``auto``."""
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
            run = (provider, precision if provider == "openvino" else "auto")
            if run not in runs:
                runs.append(run)
    for precision in precisions:
        if all((p, precision) in refused for p in providers):
            raise ConfigError(
                f"no provider asked for can run precision {precision!r}: {refused[(providers[0], precision)]}",
                hint="bf16 runs on --provider openvino only; onnxruntime runs a file as it is stored "
                "(pass the INT8 file with --variant for INT8)",
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
    """What cxr-bench measures: model files x providers x threads x batch sizes x concurrency."""

    model: Path
    variants: tuple[Path, ...] = ()
    providers: tuple[str, ...] = ("cpu",)
    precisions: tuple[str, ...] = (
        "auto",
    )  # openvino: auto | fp32 | bf16; onnxruntime runs the file as stored
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
    torch_best: bool = True  # beside PyTorch FP32 eager, "PyTorch best" (channels_last, bf16 autocast)
    openvino_peer: bool = False  # with members: the members in OpenVINO with its defaults (cxr.bench.peers)
    peak_gflops: float | str | Mapping[str, float] | None = None  # overrides (FP32, or per precision)
    measure_peak: bool = True  # measure the peaks not given (cxr.bench.peak); False: unknown
    peak_size: int = DEFAULT_SIZE  # M = N = K of the peak GEMMs
    agreement_folder: Path | None = None  # real images: top-1 agreement of reduced-precision rows vs FP32
    agreement_images: int = 100  # at most this many of them, spread evenly over the sorted files
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
        unknown = [p for p in self.precisions if p not in PRECISION_NAMES]
        if unknown or not self.precisions or len(set(self.precisions)) != len(self.precisions):
            raise ConfigError(
                f"precisions {list(self.precisions)}: give each of {', '.join(PRECISION_NAMES)} at most once",
                hint="e.g. --precision fp32,bf16 (bf16 needs --provider openvino)",
            )
        provider_precisions(self.providers, self.precisions)  # refuses pairs nothing can run
        if self.agreement_images < 1:
            raise ConfigError(
                f"agreement images must be >= 1, got {self.agreement_images}",
                hint="e.g. --agreement-images 100",
            )
        TimingPlan(self.warmup, self.iterations, self.min_seconds)  # validates the plan

    @property
    def runs(self) -> tuple[tuple[str, str], ...]:
        """The (provider, precision) pairs to measure, in the order asked (``provider_precisions``)."""
        return provider_precisions(self.providers, self.precisions)[0]

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
            elif isinstance(v, Mapping):
                d[k] = dict(v)
        return d
