"""Takes an ONNX path and a ``SessionConfig``; makes ``SessionInfo`` (session, providers really used,
warnings)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cxr.digest import file_sha256 as file_sha256
from cxr.digest import files_sha256 as files_sha256
from cxr.errors import ModelError, ProviderError, first_line
from cxr.ort_flavour import onnxruntime

if TYPE_CHECKING:
    import onnxruntime as ort

from cxr.openvino_session import OpenVinoSession, open_openvino
from cxr.precision import PRECISION_NAMES, choose_precision, plan_int8

log = logging.getLogger(__name__)

ProviderName = Literal["auto", "cpu", "cuda", "tensorrt", "openvino"]
PROVIDER_NAMES: tuple[str, ...] = ("auto", "cpu", "cuda", "tensorrt", "openvino")
ORT_PRECISION_HINT = (
    "onnxruntime runs the FP32 file as it is stored, or its verified INT8 variant on the CPU (--provider cpu "
    "or auto); use --precision auto/fp32, or --provider openvino for bf16"
)
INT8_PROVIDERS = ("auto", "cpu", "openvino")  # INT8 is verified per CPU kind: CPU providers only
ORT_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
SHORT_NAMES = {v: k for k, v in ORT_NAMES.items()}


@dataclass(frozen=True)
class SessionConfig:
    provider: str = "auto"
    threads: int | None = None  # intra-op threads; None = onnxruntime's default (all cores)
    device_id: int = 0
    strict_provider: bool = False  # an error instead of a warning when the provider falls back
    trt_fp16: bool = False
    trt_cache_dir: Path | None = None
    allow_spinning: bool = False  # spinning threads fight each other when several sessions share cores
    # openvino: auto | fp32 | bf16 | int8; cpu (and auto): auto | fp32 | int8; cuda, tensorrt: auto | fp32
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.provider not in PROVIDER_NAMES:
            raise ProviderError(
                f"unknown provider {self.provider!r}", hint=f"use one of: {', '.join(PROVIDER_NAMES)}"
            )
        check_precision(self.provider, self.precision)
        if self.threads is not None and self.threads < 1:
            raise ProviderError(f"threads must be >= 1, got {self.threads}", hint="omit it to use all cores")


def check_precision(provider: str, precision: str) -> None:
    """``ProviderError`` for an unknown precision, or one the provider cannot run (bf16 off OpenVINO, int8 off
    the CPU providers)."""
    if precision not in PRECISION_NAMES:
        raise ProviderError(
            f"unknown precision {precision!r}", hint=f"use one of: {', '.join(PRECISION_NAMES)}"
        )
    ok = ("auto", "fp32", "int8") if provider in INT8_PROVIDERS else ("auto", "fp32")
    if provider != "openvino" and precision not in ok:
        raise ProviderError(
            f"provider {provider!r} cannot run precision {precision!r}", hint=ORT_PRECISION_HINT
        )


@dataclass(frozen=True)
class SessionInfo:
    session: ort.InferenceSession | OpenVinoSession
    requested: str
    providers: tuple[str, ...]  # what the session really uses, short names, in priority order
    warnings: tuple[str, ...] = field(default=())
    precision: str | None = None  # what really runs (openvino: its compiled one; int8); None: the file's own
    device: str | None = None  # openvino: the device it compiled for (CPU)
    model: Path | None = None  # the file really opened (the INT8 variant beside the one asked)
    note: str | None = None  # why this precision runs (auto's choice, also in warnings); None: as asked

    @property
    def provider(self) -> str:
        """The provider that runs the model's main ops (the first one the session really uses)."""
        return self.providers[0] if self.providers else "cpu"

    @property
    def label(self) -> str:
        """The provider for one-line reports: ``cpu``, or ``openvino (CPU, bf16)``."""
        extra = ", ".join(x for x in (self.device, self.precision) if x)
        return f"{self.provider} ({extra})" if extra else self.provider


def available_providers() -> tuple[str, ...]:
    """Short names of the providers this onnxruntime build offers (not necessarily usable)."""
    ort = onnxruntime()
    return tuple(SHORT_NAMES[p] for p in ort.get_available_providers() if p in SHORT_NAMES)


def tensorrt_version() -> str:
    """The TensorRT library version onnxruntime will load ("none" when it is not installed)."""
    import ctypes
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-libs", "tensorrt-cu12-libs"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    for lib in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            v = int(ctypes.CDLL(lib).getInferLibVersion())
        except (OSError, AttributeError):
            continue
        if v >= 10000:  # TensorRT 10+: major * 10000 + minor * 100 + patch
            return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
        return f"{v // 1000}.{v // 100 % 10}.{v % 100}"  # TensorRT 8: major * 1000 + minor * 100 + patch
    return "none"


def nvidia_smi(*args: str) -> list[str]:
    """The non-empty lines ``nvidia-smi ARGS`` prints (none when it is absent or fails)."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=15, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def gpu_name(device_id: int = 0) -> str:
    """The GPU's product name from nvidia-smi (``CXR_GPU_NAME`` overrides; ``dev<N>`` when unknown)."""
    if name := os.environ.get("CXR_GPU_NAME"):
        return name
    names = nvidia_smi("--query-gpu=name", "--format=csv,noheader", "-i", str(device_id))
    return names[0] if names else f"dev{device_id}"


def trt_cache_dir(cfg: SessionConfig, model: Path) -> Path:
    """Engine cache folder keyed by model hash, onnxruntime and TensorRT versions, GPU and precision."""
    ort = onnxruntime()
    base = cfg.trt_cache_dir or Path(os.environ.get("CXR_TRT_CACHE", Path.home() / ".cache" / "cxr" / "trt"))
    key = "-".join(
        [
            file_sha256(model)[:16],
            f"ort{ort.__version__}",
            f"trt{tensorrt_version()}",
            "".join(c if c.isalnum() or c in ".-_" else "_" for c in gpu_name(cfg.device_id)),
            "fp16" if cfg.trt_fp16 else "fp32",
        ]
    )
    path = Path(base) / key
    path.mkdir(parents=True, exist_ok=True)
    return path


def _provider_list(cfg: SessionConfig, model: Path) -> list[Any]:
    """onnxruntime's providers for ``cfg.provider``, best first, those this build offers; the CPU last."""
    offered = available_providers()
    gpu = {"auto": ("tensorrt", "cuda"), "cpu": (), "cuda": ("cuda",), "tensorrt": ("tensorrt", "cuda")}
    out: list[Any] = []
    for name in (n for n in gpu[cfg.provider] if n in offered):
        options: dict[str, Any] = {"device_id": cfg.device_id}
        if name == "tensorrt":
            cache = str(trt_cache_dir(cfg, model))
            options.update(
                trt_fp16_enable=cfg.trt_fp16,
                trt_engine_cache_enable=True,
                trt_engine_cache_path=cache,
                trt_timing_cache_enable=True,
                trt_timing_cache_path=cache,
            )
        out.append((ORT_NAMES[name], options))
    return [*out, ORT_NAMES["cpu"]]


def session_options(
    threads: int | None = None, *, allow_spinning: bool = False, optimize: bool = True
) -> ort.SessionOptions:
    """Quiet logs, no spinning threads (unless asked), ``threads`` intra-op threads (None: all cores)."""
    ort = onnxruntime()
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not allow_spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return opts


def cpu_session(
    model: Path | str | bytes, threads: int | None = None, *, optimize: bool = True
) -> ort.InferenceSession:
    """A CPU session with cxr's options, for checks; onnxruntime's own errors pass through untouched."""
    ort = onnxruntime()
    source = model if isinstance(model, bytes) else str(model)
    opts = session_options(threads, optimize=optimize)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def create_session(model: Path | str, cfg: SessionConfig = SessionConfig()) -> SessionInfo:
    """Open ``model`` (or its verified INT8 variant, ``cxr.precision.plan_int8``) with the provider and
    precision ``cfg`` asks for and check which ones it really got."""
    model = Path(model)
    if not model.is_file():
        raise ModelError(
            f"model file {model} does not exist",
            hint="build one with `make demo` or `cxr fuse RUN_DIR`, then pass --model or set CXR_MODEL",
            path=model,
        )
    plan = plan_int8(model, cfg.provider, cfg.precision, int8_backends(cfg.provider))
    if plan.provider == "openvino":  # open_openvino imports openvino, lazily
        ov, warned = open_openvino(
            plan.model,
            threads=cfg.threads,
            precision=cfg.precision,
            strict=cfg.strict_provider,
            int8=plan.int8,
            name=model.name,
        )
        info = SessionInfo(ov, cfg.provider, ("openvino",), warned, ov.precision, ov.device, plan.model)
        return replace(info, note=ov.note)
    choice = choose_precision(
        cfg.precision,
        cpu_bf16=None,
        props=plan.props or {},
        model_name=model.name,
        int8=plan.int8,
        backend="onnxruntime",
    )
    if choice.note:
        log.info("%s", choice.note)
    requested = cfg.provider
    if choice.precision == "int8":  # the verified INT8 file, on onnxruntime's CPU kernels
        cfg = replace(cfg, provider="cpu")
    model = plan.model if choice.precision == "int8" else model
    ort = onnxruntime()
    opts = session_options(cfg.threads, allow_spinning=cfg.allow_spinning)
    providers = _provider_list(cfg, model)
    try:
        sess = ort.InferenceSession(str(model), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own untyped errors for bad or unsupported graphs
        raise ModelError(
            f"onnxruntime {ort.__version__} cannot load {model}: {first_line(e, 300)}",
            hint="re-export with a supported opset (cxr exports opset 17), or upgrade onnxruntime",
            path=model,
        ) from e
    got = tuple(SHORT_NAMES.get(p, p) for p in sess.get_providers())
    warnings: list[str] = [choice.note] if choice.note else []
    if cfg.provider != "auto" and (not got or got[0] != cfg.provider):
        msg = (
            f"asked for provider '{cfg.provider}' but onnxruntime runs {model.name} on '{got[0] if got else '?'}' "
            f"(this onnxruntime offers: {', '.join(available_providers())})"
        )
        hint = (
            "install onnxruntime-gpu (pip uninstall -y onnxruntime; pip install -e '.[gpu]' in a clone of cxr) with a "
            "matching CUDA/cuDNN, check the GPU driver, or use --provider cpu"
        )
        if cfg.strict_provider:
            raise ProviderError(msg, hint=hint)
        warnings.append(f"{msg}; {hint}")
        log.warning("%s", warnings[-1])
    int8 = choice.precision == "int8"
    precision = "int8" if int8 else None
    return SessionInfo(sess, requested, got, tuple(warnings), precision, None, model, choice.note)


def int8_backends(provider: str) -> tuple[str, ...]:
    """The providers that may run ``provider``'s INT8, best first: itself when it is openvino or cpu; for auto
    on a host without a GPU provider, OpenVINO when it is installed, then onnxruntime's CPU."""
    if provider in ("openvino", "cpu"):
        return (provider,)
    if provider != "auto" or any(p in ("cuda", "tensorrt") for p in available_providers()):
        return ()
    import importlib.util  # find_spec: whether OpenVINO is installed, without importing it

    return (("openvino",) if importlib.util.find_spec("openvino") is not None else ()) + ("cpu",)
