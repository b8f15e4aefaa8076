"""Each of the five paper architectures (random weights, 32 px) exports, runs at batch 1/3/8 and matches PyTorch.

32 px is the hard case for two of them: VGG19's head pools a 1x1 map *up* to 7x7 and Xception ends on a
1x1 map. The weights are as large as at 224 px (VGG19: ~530 MiB of ONNX), so these tests are slow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
onnx = pytest.importorskip("onnx")

from cxr.export.export_types import BATCH_AXIS  # noqa: E402
from cxr.export.exporters import EXPORTER_CHOICES  # noqa: E402
from cxr.export.inputs import random_inputs, synthetic_images  # noqa: E402
from cxr.export.onnx_export import ExportConfig, export_onnx  # noqa: E402
from cxr.export.onnx_files import read_metadata  # noqa: E402
from cxr.export.verify import VerifyConfig, verify_onnx  # noqa: E402
from cxr.labels import CLASSES  # noqa: E402
from cxr.spec import INPUT_MEMBER, ModelMetadata, PreprocessSpec  # noqa: E402

SIZE = 32
PAPER = ("convnext_base", "densenet121", "vgg19", "resnetv2_50", "legacy_xception")


@pytest.mark.slow
@pytest.mark.parametrize("timm_name", PAPER)
def test_paper_architecture_exports_and_verifies(timm_name: str, tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(timm_name, num_classes=len(CLASSES)).eval()
    spec = PreprocessSpec.square(SIZE)
    meta = ModelMetadata(CLASSES, spec, "float_normalized", {"member": timm_name, "timm_name": timm_name})
    out = tmp_path / f"{timm_name}.onnx"
    try:
        result = export_onnx(model, ExportConfig(out=out, metadata=meta, input_size=(SIZE, SIZE)))
        assert result.exporter == EXPORTER_CHOICES[timm_name].exporter and result.opset == 17
        assert [(c.batch, c.passed) for c in result.batch_checks] == [(1, True), (3, True), (8, True)]
        assert result.simplified, result.simplify_reason
        graph_input = onnx.load(str(out), load_external_data=False).graph.input[0]
        assert graph_input.name == INPUT_MEMBER
        assert graph_input.type.tensor_type.shape.dim[0].dim_param == BATCH_AXIS
        assert read_metadata(out).card["flops_per_image"] == result.flops_per_image > 0

        images = synthetic_images(4, seed=0).inputs(spec)
        noise = random_inputs(spec, 2, np.random.default_rng(0))
        report = verify_onnx(model, out, np.concatenate([images, noise]), VerifyConfig(name=timm_name))
        assert report.passed and report.n == 6 and report.max_abs <= 1e-4 and report.top1_agreement == 1.0
    finally:
        for f in tmp_path.glob(f"{timm_name}.onnx*"):
            f.unlink()  # free ~0.1-0.5 GB at once rather than when pytest rotates its temp dirs
