"""Takes a model's signature, metadata and ``TritonConfig``; makes its ``config.pbtxt`` (protobuf text)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cxr import __version__
from cxr.deploy.triton.config import LABELS_FILE, MODEL_FILE, TritonConfig
from cxr.deploy.triton.signature import ModelSignature, TensorSpec, is_int8
from cxr.errors import ModelError
from cxr.labels import NOTICE
from cxr.spec import OUTPUT_LOGITS, OUTPUT_PROBABILITIES, ModelMetadata


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
    return t.name in (OUTPUT_PROBABILITIES, OUTPUT_LOGITS) and t.dims(batched) == (len(meta.classes),)


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
        cpu = [f"    name: {_q(name + '_cpu')}", f"    count: {cfg.cpu_instances}", "    kind: KIND_CPU"]
        groups.append(["  {", *cpu, "  }"])
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
