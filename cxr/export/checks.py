"""The checks an exported graph must pass before it ships: its I/O contract, and parity with PyTorch.

Takes: the raw ``onnx.ModelProto`` and the ``ExportConfig`` (``check_io``), the model (``reference_logits``)
and a written file (``batch_checks``). Makes: a ``ModelError`` for a graph whose inputs, outputs or batch
axis are wrong (the batch axis is renamed ``BATCH_AXIS``), seeded PyTorch reference logits for each batch
size, and one ``BatchCheck`` per batch size comparing onnxruntime with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from cxr.errors import ModelError
from cxr.export.export_types import BATCH_AXIS, INPUT_NAME, OUTPUT_NAME, BatchCheck, ExportConfig
from cxr.export.verify import VerifyConfig, compare_logits, onnx_logits, open_session, torch_logits

References = dict[int, tuple[np.ndarray, np.ndarray]]
"""Batch size -> (inputs, PyTorch logits)."""


def check_io(proto: onnx.ModelProto, cfg: ExportConfig) -> None:
    """Exactly one input ``INPUT_NAME`` [batch, C, H, W] and one output ``OUTPUT_NAME`` [batch, K]."""
    init = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    outputs = list(proto.graph.output)
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ModelError(
            f"exported graph has inputs {[i.name for i in inputs]} and outputs {[o.name for o in outputs]}, "
            f"expected [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]",
            hint="export a classifier whose forward takes one image tensor and returns one logits tensor",
        )
    k = len(cfg.metadata.classes)
    out_dims = _dims(outputs[0])
    if len(out_dims) != 2 or out_dims[1] != k:
        raise ModelError(
            f"the model outputs shape {out_dims}, but the metadata lists {k} classes "
            f"({', '.join(cfg.metadata.classes)})",
            hint="build the model with num_classes equal to the class list, or fix the class list",
        )
    for value in (inputs[0], outputs[0]):
        dim0 = value.type.tensor_type.shape.dim[0]
        if dim0.HasField("dim_value"):
            raise ModelError(
                f"the batch axis of {value.name!r} was exported as the fixed size {dim0.dim_value}",
                hint="report this: cxr exports a dynamic batch axis",
            )
        dim0.dim_param = BATCH_AXIS


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def reference_logits(model: torch.nn.Module, cfg: ExportConfig) -> References:
    """Inputs and PyTorch logits for every batch size in ``check_batches`` (seeded)."""
    rng = np.random.default_rng(cfg.seed + 1)
    c = cfg.metadata.preprocess.channels
    refs: References = {}
    for b in cfg.check_batches:
        x = rng.standard_normal((b, c, *cfg.input_size), dtype=np.float32)
        refs[b] = (x, torch_logits(model, x, batch_size=b))
    return refs


def batch_checks(path: Path, refs: References, cfg: ExportConfig) -> tuple[BatchCheck, ...]:
    """onnxruntime on the file at ``path`` vs the PyTorch references, one check per batch size."""
    session = open_session(path, threads=cfg.threads)
    checks = []
    vcfg = VerifyConfig(name=path.name, atol=cfg.check_atol, strict=False)
    for b, (x, ref) in refs.items():
        got = onnx_logits(session, x, batch_size=b)
        rep = compare_logits(ref, got, vcfg, reference="pytorch", candidate=f"onnx batch {b}")
        checks.append(BatchCheck(b, rep.max_abs, rep.top1_agreement, rep.passed))
    return tuple(checks)


def describe_failures(checks: tuple[BatchCheck, ...]) -> str:
    """The failed batch checks (all of them when none failed) in one line."""
    bad = [c for c in checks if not c.passed] or list(checks)
    return ", ".join(f"batch {c.batch}: max abs {c.max_abs:.2e}, top-1 {c.top1_agreement:.0%}" for c in bad)
