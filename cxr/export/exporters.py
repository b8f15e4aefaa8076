"""Pick the torch.onnx exporter for an architecture from a small table, and trace the model with it.

Takes: a timm name and the requested exporter, then an ``nn.Module`` and an ``ExportConfig``. Makes: an
``ExporterChoice`` with its reason and the raw ``onnx.ModelProto`` traced at ``cfg.trace_batch`` with a
dynamic batch axis; a failure is a ``ModelError`` naming the other exporter to try.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from cxr.errors import ConfigError, ModelError, first_line
from cxr.export.export_types import (
    BATCH_AXIS,
    DEFAULT_EXTERNAL_DATA_THRESHOLD,
    DYNAMIC_AXES,
    DYNAMO_MIN_OPSET,
    ExportConfig,
    Exporter,
    ExporterChoice,
)
from cxr.spec import INPUT_MEMBER, OUTPUT_LOGITS

_TS_REASON = (
    "TorchScript exporter: writes the pinned opset 17 (torch 2.14's dynamo exporter writes >= 18 and its "
    "down-conversion failed here), exports in 1-5 s vs 4-15 s"
)
EXPORTER_CHOICES: dict[str, ExporterChoice] = {
    "convnext_base": ExporterChoice(
        "torchscript",
        f"{_TS_REASON}; LayerNorm2d becomes one LayerNormalization (dynamo also needs a batch >= 2 trace)",
    ),
    "densenet121": ExporterChoice("torchscript", f"{_TS_REASON}; dynamo took 15 s for densenet121"),
    "vgg19": ExporterChoice(
        "torchscript",
        f"{_TS_REASON}; below 224 px VGG's ConvMlp upsamples with adaptive_avg_pool2d, exported as two "
        "exact MatMuls by cxr's scoped symbolic",
    ),
    "resnetv2_50": ExporterChoice(
        "torchscript", f"{_TS_REASON}; StdConv weight standardisation folds to constants in onnxsim"
    ),
    "legacy_xception": ExporterChoice(
        "torchscript", f"{_TS_REASON}; symmetric padding, so the input size is not frozen in Pad nodes"
    ),
}
DEFAULT_CHOICE = ExporterChoice("torchscript", f"{_TS_REASON} (default for architectures not in the table)")


def choose_exporter(timm_name: str | None, requested: Exporter, opset: int) -> ExporterChoice:
    """The exporter for ``timm_name``: the table's choice in ``auto``, else the one asked for."""
    if requested == "auto":
        choice = EXPORTER_CHOICES.get(timm_name or "", DEFAULT_CHOICE)
    else:
        choice = ExporterChoice(requested, f"{requested} exporter asked for explicitly")
    if choice.exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise ConfigError(
            f"the dynamo exporter of torch {torch.__version__} writes opset >= {DYNAMO_MIN_OPSET}, "
            f"not the requested {opset}",
            hint=f"pass --opset {DYNAMO_MIN_OPSET} with --exporter dynamo, or use --exporter torchscript",
        )
    return choice


def run_exporter(
    model: torch.nn.Module, cfg: ExportConfig, choice: ExporterChoice, tmp: Path
) -> onnx.ModelProto:
    """Trace ``model`` with ``choice``'s exporter at ``cfg.trace_batch`` (seeded input); ``tmp`` for >2 GB."""
    channels = cfg.metadata.preprocess.channels
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.trace_batch, channels, *cfg.input_size, generator=gen)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            if choice.exporter == "torchscript":
                return _torchscript(model, x, cfg.opset, tmp)
            return _dynamo(model, x, cfg.opset)
    except ModelError:
        raise
    except Exception as e:  # torch.onnx raises many error types (UnsupportedOperatorError, TorchExportError)
        other = "dynamo --opset 18" if choice.exporter == "torchscript" else "torchscript"
        raise ModelError(
            f"torch.onnx ({choice.exporter} exporter, opset {cfg.opset}) cannot export "
            f"{cfg.metadata.card.get('timm_name') or type(model).__name__}: {first_line(e)}",
            hint=f"try --exporter {other}, or a newer --opset; an operator no exporter supports must be "
            "replaced in the model",
        ) from e


def _torchscript(model: torch.nn.Module, x: torch.Tensor, opset: int, tmp: Path) -> onnx.ModelProto:
    kwargs: dict[str, Any] = dict(
        dynamo=False,
        input_names=[INPUT_MEMBER],
        output_names=[OUTPUT_LOGITS],
        dynamic_axes=DYNAMIC_AXES,
        opset_version=opset,
        do_constant_folding=True,
    )
    with adaptive_pool_symbolic(opset):
        if _param_bytes(model) < DEFAULT_EXTERNAL_DATA_THRESHOLD:  # in memory, no disk round trip
            buf = io.BytesIO()
            torch.onnx.export(model, (x,), buf, **kwargs)  # type: ignore[arg-type]
            return onnx.load_from_string(buf.getvalue())
        path = tmp / "torchscript.onnx"  # over 2 GB: the exporter writes external data
        torch.onnx.export(model, (x,), str(path), **kwargs)
    return onnx.load(str(path))


def _dynamo(model: torch.nn.Module, x: torch.Tensor, opset: int) -> onnx.ModelProto:
    program = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        input_names=[INPUT_MEMBER],
        output_names=[OUTPUT_LOGITS],
        dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS, min=1)},),
        opset_version=opset,
        optimize=True,
        verbose=False,
    )
    if program is None:  # only returned as None when a file name is given
        raise ModelError("the dynamo exporter returned no program")
    return program.model_proto


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@contextmanager
def adaptive_pool_symbolic(opset: int) -> Iterator[None]:
    """Scoped: adaptive average pooling to a size that does not divide the input as ``P_h @ x @ P_w^T``.

    timm's VGG head pools a map under 7x7 (inputs below 224 px) *up* to 7x7, which TorchScript refuses;
    with static sizes the pooling is linear and these MatMuls are exact. Other cases use the default.
    """
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic
    from torch.onnx._internal.torchscript_exporter import registration, symbolic_helper

    name = "aten::adaptive_avg_pool2d"
    group = registration.registry.get_function_group(name)
    default = group.get(opset) if group is not None else None

    def symbolic(g: Any, x: Any, output_size: Any) -> Any:
        sizes = symbolic_helper._get_tensor_sizes(x)
        try:
            out_hw = symbolic_helper._parse_arg(output_size, "is")
        except Exception:  # not a constant: leave it to the default (which reports it)
            out_hw = None
        if sizes is None or len(sizes) != 4 or out_hw is None or any(s is None for s in sizes[2:]):
            return default(g, x, output_size) if default is not None else None
        h, w = int(sizes[2]), int(sizes[3])
        oh, ow = int(out_hw[0]), int(out_hw[1])
        if (h % oh == 0 and w % ow == 0) or (oh, ow) == (1, 1):
            return default(g, x, output_size) if default is not None else None
        ph = g.op("Constant", value_t=torch.from_numpy(adaptive_pool_matrix(h, oh)))
        pw = g.op("Constant", value_t=torch.from_numpy(adaptive_pool_matrix(w, ow).T.copy()))
        return g.op("MatMul", g.op("MatMul", ph, x), pw)

    register_custom_op_symbolic(name, symbolic, opset)
    try:
        yield
    finally:
        unregister_custom_op_symbolic(name, opset)


def adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] float32 averaging matrix with PyTorch's adaptive pooling bins."""
    mat = np.zeros((size_out, size_in), dtype=np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)  # ceil
        mat[i, start:end] = 1.0 / (end - start)
    return mat
