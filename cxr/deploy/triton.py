"""Write a Triton Inference Server model repository (and a KServe manifest) for a cxr ONNX model.

Takes: a cxr ONNX file (fused ensemble, its INT8 variant, or a single member) and a ``TritonConfig``.
Makes, under the repository folder ``OUT``::

    OUT/<name>/config.pbtxt        ONNX Runtime backend config written from the graph's real signature
    OUT/<name>/<version>/model.onnx  the model (copied or hard-linked; external-data files beside it)
    OUT/<name>/labels.txt          class names in output order (Triton's classification extension)
    OUT/<name>/cxr.json            the model's cxr metadata, signature, sha256 and the notice
    OUT/<name>/README.md           what the folder is and how to query it
    OUT/kserve-inferenceservice.yaml  a KServe InferenceService that serves the repository with Triton

Every name, data type and dimension in ``config.pbtxt`` comes from the graph (onnxruntime's view of its
inputs and outputs, exactly what Triton's ONNX Runtime backend sees); nothing about the model is
hard-coded. The copy in the version folder is reopened and its signature compared with the source before
the repository is moved into place. Needs onnxruntime; uses onnx (when installed) only to list
external-data files. No Triton, tritonclient or protobuf dependency: the config is written as text.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cxr import __version__
from cxr.errors import ConfigError, ModelError
from cxr.labels import NOTICE
from cxr.session import file_sha256
from cxr.spec import REEXPORT_HINT, ModelMetadata

log = logging.getLogger(__name__)

TrtPrecision = Literal["fp32", "fp16", "int8"]
TRT_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

KSERVE_FILE = "kserve-inferenceservice.yaml"
CXR_JSON = "cxr.json"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"
STORAGE_URI_PLACEHOLDER = "s3://REPLACE-ME/cxr-triton-repository"

ONNX_TO_TRITON: dict[str, str] = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(bfloat16)": "TYPE_BF16",
    "tensor(string)": "TYPE_STRING",
}
"""onnxruntime's type strings -> Triton ``DataType`` names (the HTTP/gRPC datatype drops ``TYPE_``)."""

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


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as Triton sees it."""

    name: str
    onnx_type: str  # onnxruntime's string, e.g. "tensor(uint8)"
    shape: tuple[int | str | None, ...]  # the full graph shape: ints, symbolic names or None
    data_type: str  # Triton's, e.g. "TYPE_UINT8"

    def dims(self, batched: bool) -> tuple[int, ...]:
        """Triton ``dims``: without the batch axis when batched; -1 for every variable dimension."""
        rest = self.shape[1:] if batched else self.shape
        return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in rest)

    def config_dims(self, batched: bool) -> tuple[int, ...]:
        """``dims`` as written in config.pbtxt: a [batch] tensor is written [1] with an empty reshape."""
        dims = self.dims(batched)
        return (1,) if batched and not dims else dims

    @property
    def wire_type(self) -> str:
        """The datatype on Triton's HTTP/gRPC wire (KServe v2 protocol), e.g. "UINT8"."""
        return self.data_type.removeprefix("TYPE_").replace("STRING", "BYTES")


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool  # every input and output has a variable first (batch) axis

    def to_dict(self) -> dict[str, Any]:
        def one(t: TensorSpec) -> dict[str, Any]:
            return {
                "name": t.name,
                "onnx_type": t.onnx_type,
                "shape": list(t.shape),
                "data_type": t.data_type,
                "datatype": t.wire_type,
                "dims": list(t.config_dims(self.batched)),
                "reshape": list(t.dims(self.batched))
                if t.config_dims(self.batched) != t.dims(self.batched)
                else None,
            }

        return {
            "batched": self.batched,
            "inputs": [one(t) for t in self.inputs],
            "outputs": [one(t) for t in self.outputs],
        }


@dataclass(frozen=True)
class TritonExportResult:
    repository: Path
    model_name: str
    model_dir: Path
    config_path: Path
    model_path: Path
    cxr_json: Path
    kserve_path: Path | None
    signature: ModelSignature
    metadata: ModelMetadata
    max_batch_size: int
    sha256: str
    linked: bool
    warnings: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------- reading the model


def _open_session(path: Path) -> Any:
    import onnxruntime as ort

    from cxr.session import cpu_session

    try:
        return cpu_session(path, 1, optimize=False)
    except Exception as e:  # onnxruntime raises its own untyped errors for bad or unsupported graphs
        raise ModelError(
            f"onnxruntime {ort.__version__} cannot load {path}: {str(e).splitlines()[0][:300]}",
            hint="pass a cxr ONNX model (`cxr fuse RUN_DIR` writes one); if it has external-data files, "
            "keep them beside it",
            path=path,
        ) from e


def _tensor(arg: Any, path: Path) -> TensorSpec:
    if arg.type not in ONNX_TO_TRITON:
        raise ModelError(
            f"{path}: tensor {arg.name!r} has type {arg.type}, which Triton's ONNX Runtime backend cannot serve",
            hint="a cxr model's inputs and outputs are plain tensors; re-export it with cxr",
            path=path,
        )
    shape = arg.shape
    if shape is None:
        raise ModelError(f"{path}: tensor {arg.name!r} has no declared shape", hint=REEXPORT_HINT, path=path)
    dims = tuple(d if isinstance(d, int) or d is None else str(d) for d in shape)
    return TensorSpec(arg.name, arg.type, dims, ONNX_TO_TRITON[arg.type])


def _is_batch_dim(d: int | str | None) -> bool:
    return not isinstance(d, int) or d < 0


def signature_of(session: Any, path: Path) -> ModelSignature:
    """Inputs and outputs of an onnxruntime session; batched when all share a variable first axis."""
    inputs = tuple(_tensor(a, path) for a in session.get_inputs())
    outputs = tuple(_tensor(a, path) for a in session.get_outputs())
    batched = all(len(t.shape) >= 1 and _is_batch_dim(t.shape[0]) for t in inputs + outputs)
    return ModelSignature(inputs, outputs, batched)


def read_model(path: Path) -> tuple[ModelSignature, ModelMetadata, dict[str, str]]:
    """Open ``path`` and return its signature, its cxr metadata (refused without it) and the raw props."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"model file {path} does not exist" if not path.exists() else f"{path} is not a file",
            hint="pass the fused .onnx file (`cxr fuse RUN_DIR` writes it)",
            path=path,
        )
    session = _open_session(path)
    props = dict(session.get_modelmeta().custom_metadata_map)
    metadata = ModelMetadata.from_props(props, source=str(path))
    return signature_of(session, path), metadata, props


def check_contract(sig: ModelSignature, meta: ModelMetadata, path: Path) -> None:
    """The graph must be what its metadata says: one input of the right type and size, known outputs."""
    if len(sig.inputs) != 1:
        raise ModelError(f"{path} has {len(sig.inputs)} inputs; a cxr model has exactly one", path=path)
    inp = sig.inputs[0]
    want_type = "tensor(uint8)" if meta.input_format == "uint8_gray" else "tensor(float)"
    if inp.onnx_type != want_type:
        raise ModelError(
            f"{path}: metadata says input format {meta.input_format} ({want_type}) but the graph input "
            f"{inp.name!r} is {inp.onnx_type}",
            hint=REEXPORT_HINT,
            path=path,
        )
    channels = 1 if meta.input_format == "uint8_gray" else meta.preprocess.channels
    want = (channels, *meta.preprocess.input_size)
    got = inp.shape[1:]
    if len(got) != 3 or any(isinstance(g, int) and g != w for g, w in zip(got, want, strict=True)):
        raise ModelError(
            f"{path}: graph input {inp.name!r} has shape {list(inp.shape)} but the metadata's "
            f"preprocessing gives [N, {want[0]}, {want[1]}, {want[2]}]",
            hint=REEXPORT_HINT,
            path=path,
        )
    names = [o.name for o in sig.outputs]
    if "probabilities" not in names and "logits" not in names:
        raise ModelError(
            f"{path}: outputs {names} include neither 'probabilities' nor 'logits'",
            hint=REEXPORT_HINT,
            path=path,
        )


def is_int8(meta: ModelMetadata) -> bool:
    return str(meta.card.get("precision", "fp32")).lower() == "int8"


def external_data_files(path: Path) -> list[str]:
    """Relative locations of the model's external-data files (empty without onnx or without such files)."""
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors, uses_external_data
    except ImportError:
        return []
    model = onnx.load(str(path), load_external_data=False)
    found: list[str] = []
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and loc not in found:
                found.append(loc)
    return found


# --------------------------------------------------------------------------- rendering


def _q(s: str) -> str:
    """A protobuf text-format string literal."""
    if any(ord(c) < 32 for c in s):
        raise ModelError(f"name {s!r} contains control characters, which a Triton config cannot hold")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dims(d: Sequence[int]) -> str:
    return "[ " + ", ".join(str(x) for x in d) + " ]" if d else "[ ]"


def _tensor_block(t: TensorSpec, batched: bool, label_file: bool) -> list[str]:
    dims, model_dims = t.config_dims(batched), t.dims(batched)
    lines = ["  {", f"    name: {_q(t.name)}", f"    data_type: {t.data_type}", f"    dims: {_dims(dims)}"]
    if dims != model_dims:
        # A [batch] tensor: Triton needs one non-batch dim; the reshape tells it the model's rank is 1.
        lines.append(f"    reshape: {{ shape: {_dims(model_dims)} }}")
    if label_file:
        lines.append(f"    label_filename: {_q(LABELS_FILE)}")
    lines.append("  }")
    return lines


def _list_block(key: str, blocks: list[list[str]]) -> list[str]:
    out = [f"{key} ["]
    for i, b in enumerate(blocks):
        out += b[:-1] + [b[-1] + ("," if i < len(blocks) - 1 else "")]
    return out + ["]"]


def _labelled_output(t: TensorSpec, meta: ModelMetadata, batched: bool) -> bool:
    return t.name in ("probabilities", "logits") and t.dims(batched) == (len(meta.classes),)


def resolve_trt_precision(cfg: TritonConfig, meta: ModelMetadata) -> str:
    if cfg.trt_precision is not None:
        return cfg.trt_precision
    return "int8" if is_int8(meta) else "fp16"


def _trt_shape(t: TensorSpec, batch: int) -> str:
    return f"{t.name}:" + "x".join(str(d) for d in (batch, *t.dims(True)))


def render_config(
    name: str, sig: ModelSignature, meta: ModelMetadata, cfg: TritonConfig, sha256: str, source: str
) -> str:
    """The ``config.pbtxt`` text for Triton's ONNX Runtime backend (protobuf text format)."""
    max_batch = cfg.max_batch_size if sig.batched else 0
    lines = [
        f"# Written by cxr {__version__} (`cxr export-triton`) from {Path(source).name}, sha256 {sha256}.",
        f"# {NOTICE}",
        "# Names, data types and dims below come from the ONNX graph; cxr.json beside this file holds the",
        "# preprocessing a client must apply (see examples/triton_client.py).",
        f"name: {_q(name)}",
        'backend: "onnxruntime"',
        f"default_model_filename: {_q(MODEL_FILE)}",
        f"max_batch_size: {max_batch}",
    ]
    lines += _list_block("input", [_tensor_block(t, sig.batched, False) for t in sig.inputs])
    lines += _list_block(
        "output", [_tensor_block(t, sig.batched, _labelled_output(t, meta, sig.batched)) for t in sig.outputs]
    )
    if sig.batched:
        lines += [
            "dynamic_batching {",
            f"  preferred_batch_size: {_dims(cfg.batch_sizes)}",
            f"  max_queue_delay_microseconds: {cfg.max_queue_delay_us}",
            "}",
        ]
    groups: list[list[str]] = []
    if cfg.gpu_instances:
        g = ["  {", f"    name: {_q(name + '_gpu')}", f"    count: {cfg.gpu_instances}", "    kind: KIND_GPU"]
        if cfg.gpus:
            g.append(f"    gpus: {_dims(cfg.gpus)}")
        groups.append(g + ["  }"])
    if cfg.cpu_instances:
        groups.append(
            [
                "  {",
                f"    name: {_q(name + '_cpu')}",
                f"    count: {cfg.cpu_instances}",
                "    kind: KIND_CPU",
                "  }",
            ]
        )
    lines += _list_block("instance_group", groups)
    if cfg.tensorrt:
        lines += _trt_block(name, sig, meta, cfg, sha256)
    if cfg.cpu_threads is not None:
        lines += [
            f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{cfg.cpu_threads}" }} }}',
            'parameters { key: "inter_op_thread_count" value: { string_value: "1" } }',
        ]
    if cfg.tensorrt and sig.batched and all(-1 not in t.dims(True) for t in sig.inputs):
        lines += _warmup_block(sig, cfg)
    return "\n".join(lines) + "\n"


def _trt_block(
    name: str, sig: ModelSignature, meta: ModelMetadata, cfg: TritonConfig, sha256: str
) -> list[str]:
    precision = resolve_trt_precision(cfg, meta)
    params: list[tuple[str, str]] = [
        ("precision_mode", precision.upper()),
        ("max_workspace_size_bytes", str(cfg.trt_workspace_mib * 1024 * 1024)),
        ("trt_engine_cache_enable", "1"),
        # Engines are only valid for one model, ORT/TensorRT build and GPU: key the folder by the model's
        # hash here; clear it when the Triton image (hence ORT/TensorRT) or the GPU model changes.
        ("trt_engine_cache_path", f"{cfg.trt_cache_dir.rstrip('/')}/{name}-{sha256[:16]}"),
    ]
    if precision == "fp16":
        # ConvNeXt's LayerNorm overflows in FP16 (TensorRT 2564): keep its Pow/Reduce ops in FP32.
        params.append(("trt_layer_norm_fp32_fallback", "1"))
    if sig.batched and all(-1 not in t.dims(True) for t in sig.inputs):
        top = cfg.max_batch_size
        opt = max(cfg.batch_sizes)
        params += [
            ("trt_profile_min_shapes", ",".join(_trt_shape(t, 1) for t in sig.inputs)),
            ("trt_profile_opt_shapes", ",".join(_trt_shape(t, opt) for t in sig.inputs)),
            ("trt_profile_max_shapes", ",".join(_trt_shape(t, top) for t in sig.inputs)),
        ]
    out = [
        "optimization {",
        "  execution_accelerators {",
        "    gpu_execution_accelerator: [",
        "      {",
        '        name: "tensorrt"',
    ]
    out += [f"        parameters {{ key: {_q(k)} value: {_q(v)} }}" for k, v in params]
    return out + ["      }", "    ]", "  }", "}"]


def _warmup_block(sig: ModelSignature, cfg: TritonConfig) -> list[str]:
    """Zero-data warm-up requests so TensorRT builds its engines at load, not on the first patient."""
    blocks = []
    for b in sorted({1, *cfg.batch_sizes}):
        block = ["  {", f'    name: "zeros_batch_{b}"', f"    batch_size: {b}"]
        for t in sig.inputs:
            block += [
                "    inputs {",
                f"      key: {_q(t.name)}",
                f"      value: {{ data_type: {t.data_type} dims: {_dims(t.dims(True))} zero_data: true }}",
                "    }",
            ]
        blocks.append(block + ["  }"])
    return _list_block("model_warmup", blocks)


def _dns_name(name: str) -> str:
    """A DNS-1035 label for Kubernetes: lowercase letters, digits and '-', starting with a letter."""
    s = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not s.startswith("cxr"):
        s = f"cxr-{s}".rstrip("-")
    return s[:45].rstrip("-")


def kserve_resources(model_bytes: int, cfg: TritonConfig) -> dict[str, dict[str, str]]:
    """A starting point: every instance holds the weights once; ONNX Runtime needs about as much again."""
    instances = cfg.gpu_instances * max(len(cfg.gpus), 1) + cfg.cpu_instances
    gib = model_bytes / 2**30
    limit = max(2, math.ceil(2 + 2 * gib * instances))
    cpus = max(2, (cfg.cpu_threads or 2) * max(cfg.cpu_instances, 1))
    limits = {"cpu": str(cpus), "memory": f"{limit}Gi"}
    requests = {"cpu": str(max(1, cpus // 2)), "memory": f"{max(1, limit // 2)}Gi"}
    if cfg.gpu_instances:
        limits["nvidia.com/gpu"] = str(max(len(cfg.gpus), 1))
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"]
    return {"limits": limits, "requests": requests}


def render_kserve(name: str, model_bytes: int, cfg: TritonConfig) -> str:
    """A KServe ``InferenceService`` (serving.kserve.io/v1beta1) that serves the repository with Triton."""
    res = kserve_resources(model_bytes, cfg)
    j = json.dumps

    def block(key: str, d: dict[str, str]) -> list[str]:
        return [f"        {key}:"] + [f"          {j(k)}: {j(v)}" for k, v in d.items()]

    lines = [
        f"# Written by cxr {__version__} (`cxr export-triton`) for the Triton model repository beside it.",
        f"# {NOTICE}",
        "# Upload this folder (the repository root, which holds the model folder) to object storage and",
        "# set storageUri to it; KServe downloads it to /mnt/models and starts Triton on it.",
        "# Resources are a starting point sized from the model file: measure and adjust.",
        "apiVersion: serving.kserve.io/v1beta1",
        "kind: InferenceService",
        "metadata:",
        f"  name: {j(_dns_name(name))}",
        "  annotations:",
        f"    cxr/model-name: {j(name)}",
        f"    cxr/notice: {j(NOTICE)}",
        "spec:",
        "  predictor:",
        "    triton:",
        f"      storageUri: {j(cfg.storage_uri)}",
        '      protocolVersion: "v2"',
        "      resources:",
    ]
    lines += block("requests", res["requests"]) + block("limits", res["limits"])
    return "\n".join(lines) + "\n"


def _model_readme(
    name: str, sig: ModelSignature, meta: ModelMetadata, cfg: TritonConfig, max_batch: int
) -> str:
    inp = sig.inputs[0]
    outs = ", ".join(f"`{o.name}` {o.wire_type} {list(o.config_dims(sig.batched))}" for o in sig.outputs)
    return (
        f"# Triton model `{name}` (written by cxr {__version__})\n\n"
        f"**{NOTICE}**\n\n"
        f"- Input `{inp.name}`: {inp.wire_type} {list(inp.config_dims(sig.batched))} per image "
        f"(batch axis first, up to {max_batch} per request; 0 means no batching).\n"
        f"- Outputs: {outs}.\n"
        f"- Classes, in output order: {', '.join(meta.classes)} (also in `{LABELS_FILE}`).\n"
        f"- Preprocessing the client must apply: decode to 8-bit grayscale, resize to "
        f"{meta.preprocess.input_size[0]}x{meta.preprocess.input_size[1]} with Pillow's bilinear filter"
        + (
            ", send uint8 pixels (the graph normalises).\n"
            if meta.input_format == "uint8_gray"
            else f", scale to [0, 1], replicate to {meta.preprocess.channels} channels, normalise with "
            f"mean {list(meta.preprocess.mean)} and std {list(meta.preprocess.std)}.\n"
        )
        + f"- `{CXR_JSON}` holds the full cxr metadata; `examples/triton_client.py` in the cxr repository reads "
        "it and preprocesses exactly as `cxr-predict` does.\n"
        f"- Version folder: `{cfg.version}/{MODEL_FILE}`.\n"
    )


# --------------------------------------------------------------------------- writing


def default_model_name(model: Path, meta: ModelMetadata) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).stem).strip("._-") or "cxr_model"
    if not stem[0].isalnum():
        stem = "cxr_" + stem
    return stem[:63]


def _check_destination(repo: Path, model_dir: Path, model: Path, sha: str, force: bool) -> None:
    if repo.exists() and not repo.is_dir():
        raise ModelError(
            f"output {repo} exists and is not a folder",
            hint="pass a folder for the model repository",
            path=repo,
        )
    if (repo / "config.pbtxt").exists():
        raise ModelError(
            f"{repo} holds a config.pbtxt: it is a Triton model folder, not a model repository",
            hint=f"pass its parent ({repo.parent}) as OUT, or another folder",
            path=repo,
        )
    if not model_dir.exists():
        return
    if not model_dir.is_dir():
        raise ModelError(
            f"{model_dir} exists and is not a folder", hint="remove it or choose --name", path=model_dir
        )
    if model.resolve().is_relative_to(model_dir.resolve()):
        raise ModelError(
            f"the model {model} lies inside the folder to be written ({model_dir})",
            hint="pass another OUT folder or --name",
            path=model_dir,
        )
    existing = None
    info = model_dir / CXR_JSON
    if info.is_file():
        try:
            existing = json.loads(info.read_text(encoding="utf-8")).get("model_sha256")
        except (json.JSONDecodeError, OSError, AttributeError):
            existing = None
    if existing == sha or not any(model_dir.iterdir()):
        return  # the same model again (or an empty folder): rewriting it is safe
    what = f"another model (sha256 {existing[:16]}…)" if existing else "files cxr did not write"
    if not force:
        raise ModelError(
            f"{model_dir} already holds {what}",
            hint="choose another --name or OUT folder, or pass --force to replace that model folder",
            path=model_dir,
        )
    log.warning("replacing %s, which held %s", model_dir, what)


def _place(src: Path, dst: Path, link: bool) -> bool:
    """Copy (or hard-link) ``src`` to ``dst``; returns True when it was linked."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return True
        except OSError as e:
            log.warning("cannot hard-link %s (%s); copying instead", src, e)
    shutil.copy2(src, dst)
    return False


def _copy_model(model: Path, version_dir: Path, link: bool) -> tuple[bool, int]:
    """Place the model and its external-data files; returns (linked, total bytes)."""
    linked = _place(model, version_dir / MODEL_FILE, link)
    total = model.stat().st_size
    for loc in external_data_files(model):
        rel = Path(loc)
        if rel.is_absolute() or ".." in rel.parts:
            raise ModelError(
                f"{model}: external-data location {loc!r} points outside the model's folder",
                hint="re-save the model with its data file beside it (onnx.save(..., location='x.data'))",
                path=model,
            )
        src = model.parent / rel
        if not src.is_file():
            raise ModelError(
                f"{model}: external-data file {src} is missing",
                hint="keep it beside the .onnx file",
                path=src,
            )
        _place(src, version_dir / rel, link)
        total += src.stat().st_size
    return linked, total


def write_triton_repository(model: Path, out: Path, cfg: TritonConfig = TritonConfig()) -> TritonExportResult:
    """Read ``model``, check it, and write its Triton model folder (and a KServe manifest) under ``out``."""
    model, repo = Path(model), Path(out)
    sig, meta, props = read_model(model)
    check_contract(sig, meta, model)
    name = cfg.model_name or default_model_name(model, meta)
    model_dir = repo / name
    sha = file_sha256(model)
    _check_destination(repo, model_dir, model, sha, cfg.force)

    warnings: list[str] = []
    if not sig.batched:
        warnings.append(
            f"{model.name} has no variable batch axis on every input and output: max_batch_size is 0 and "
            "dynamic batching is off"
        )
    if cfg.tensorrt and is_int8(meta) and resolve_trt_precision(cfg, meta) != "int8":
        warnings.append(
            "an INT8 (QDQ) model with TensorRT precision other than INT8: TensorRT may refuse its Q/DQ"
        )
    max_batch = cfg.max_batch_size if sig.batched else 0

    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=repo))
    try:
        linked, model_bytes = _copy_model(model, staging / str(cfg.version), cfg.link)
        copied = staging / str(cfg.version) / MODEL_FILE
        copy_sig = signature_of(_open_session(copied), copied)
        if copy_sig != sig:
            raise ModelError(
                f"the copied model {copied} does not have the source's signature",
                hint="check the disk and the external-data files, then retry",
                path=copied,
            )
        config = render_config(name, sig, meta, cfg, sha, str(model))
        (staging / "config.pbtxt").write_text(config, encoding="utf-8")
        (staging / LABELS_FILE).write_text("\n".join(meta.classes) + "\n", encoding="utf-8")
        info = {
            "notice": NOTICE,
            "written_by": f"cxr {__version__}",
            "source": str(model),
            "model_sha256": sha,
            "version": cfg.version,
            "max_batch_size": max_batch,
            "precision": str(meta.card.get("precision", "fp32")),
            "input_format": meta.input_format,
            "signature": sig.to_dict(),
            "metadata_props": props,
        }
        (staging / CXR_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(_model_readme(name, sig, meta, cfg, max_batch), encoding="utf-8")
        if model_dir.exists():
            shutil.rmtree(model_dir)
        staging.rename(model_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

    kserve_path = None
    if cfg.kserve:
        kserve_path = repo / KSERVE_FILE
        kserve_path.write_text(render_kserve(name, model_bytes, cfg), encoding="utf-8")
    for w in warnings:
        log.warning("%s", w)
    return TritonExportResult(
        repository=repo,
        model_name=name,
        model_dir=model_dir,
        config_path=model_dir / "config.pbtxt",
        model_path=model_dir / str(cfg.version) / MODEL_FILE,
        cxr_json=model_dir / CXR_JSON,
        kserve_path=kserve_path,
        signature=sig,
        metadata=meta,
        max_batch_size=max_batch,
        sha256=sha,
        linked=linked,
        warnings=tuple(warnings),
    )
