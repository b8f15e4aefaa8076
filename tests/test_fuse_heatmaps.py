"""Heatmaps in the fused graph: exact class maps per member type, equal to PyTorch, and they localise findings.

The PyTorch references are computed here from the torch modules (timm's ``forward_features`` and the
classifier's weights, or TinyNet's layers) with the CAM formula; the graph side is cxr's ONNX surgery run by
onnxruntime. Localisation: a small CAM network trained on synthetic Normal vs Lung_Opacity images, scored
against where the generator put the consolidation, and against random locations.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skl2onnx")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from cxr.data.synthetic.render import render_with_finding  # noqa: E402
from cxr.fuse import FuseConfig, fuse, run_members  # noqa: E402
from cxr.fuse.class_maps import CLASS_MAPS, ClassMapExclusion, ClassMapInfo, with_class_maps  # noqa: E402
from cxr.fuse.heatmap_file import bilinear_matrix, heatmap_path  # noqa: E402
from cxr.imaging.preprocess import normalize  # noqa: E402
from cxr.labels import CLASSES  # noqa: E402
from cxr.spec import ModelMetadata  # noqa: E402
from tests.test_fuse import TinyNet, build_tiny_run  # noqa: E402

SIZES = {"alpha": 32, "beta": 32, "gamma": 32}


def _onnx_of(module: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (x,), buf, dynamo=False, opset_version=17, input_names=["input"],
            output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


def _class_maps(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, maps = sess.run(["logits", CLASS_MAPS], {"input": x})
    return logits, maps


@pytest.fixture(scope="module")
def heat_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = build_tiny_run(tmp_path_factory.mktemp("heat"), SIZES)
    members, meta = run_members(run)
    fuse(members, meta, FuseConfig(run / "ensemble.onnx", run_dir=run, heatmaps=True, bf16_check=False))
    return run


def test_fuse_writes_a_verified_heatmap_variant_with_its_rule(heat_run: Path) -> None:
    path = heatmap_path(heat_run / "ensemble.onnx")
    card = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(path)).metadata_props}).card
    heat = card["heatmaps"]
    assert card["variant"] == "heatmaps" and "meta-learner" in heat["rule"]
    assert all(heat["members"][n]["mapped"] for n in SIZES)
    for c in CLASSES:
        assert sum(heat["weights"][n][c] for n in SIZES) == pytest.approx(1.0, abs=1e-5)
    report = json.loads((heat_run / "fuse_report.json").read_text())
    assert report["heatmaps"]["max_abs_logit_identity"] < 1e-4
    plain = ort.InferenceSession(str(heat_run / "ensemble.onnx"))
    assert "heatmap" not in [o.name for o in plain.get_outputs()]  # the plain graph stays as it was


def test_fused_heatmaps_equal_the_pytorch_reference(heat_run: Path) -> None:
    path = heatmap_path(heat_run / "ensemble.onnx")
    card = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(path)).metadata_props}).card
    images = np.random.default_rng(3).integers(0, 256, size=(4, 1, 32, 32), dtype=np.uint8)
    sess = ort.InferenceSession(str(path))
    heat, class_heat, label, probs = sess.run(
        ["heatmap", "class_heatmaps", "label", "probabilities"], {"image": images}
    )
    spec = ModelMetadata.from_props(
        {p.key: p.value for p in onnx.load(str(heat_run / "onnx" / "alpha.onnx")).metadata_props}
    ).preprocess
    x = torch.from_numpy(normalize(images.astype(np.float32), spec))
    want = torch.zeros(4, 4, 32, 32, dtype=torch.float64)
    for seed, name in enumerate(SIZES):  # build_tiny_run seeds member i with i
        net = TinyNet(8, seed)
        with torch.no_grad():
            f = torch.relu(net.bn(net.conv(x))).double()
            cam = 3.0 * (
                torch.einsum("kc,nchw->nkhw", net.head.weight.double(), f)
                + net.head.bias.double()[:, None, None]
            )
            lo = cam.amin(dim=(2, 3), keepdim=True)
            hi = cam.amax(dim=(2, 3), keepdim=True)
            up = F.interpolate(
                (cam - lo) / (hi - lo + 1e-6), size=(32, 32), mode="bilinear", align_corners=False
            )
        w = torch.tensor([card["heatmaps"]["weights"][name][c] for c in CLASSES], dtype=torch.float64)
        want += up * w[None, :, None, None]
    assert np.abs(class_heat - want.numpy()).max() < 1e-4
    assert np.array_equal(heat, class_heat[np.arange(4), label]) and np.array_equal(label, probs.argmax(1))
    assert heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6


@pytest.mark.parametrize(("src", "dst"), [(7, 224), (2, 32), (10, 299), (5, 5)])
def test_bilinear_matrix_matches_torch(src: int, dst: int) -> None:
    x = np.random.default_rng(src).standard_normal((src, src))
    want = F.interpolate(
        torch.from_numpy(x)[None, None], size=(dst, dst), mode="bilinear", align_corners=False
    )
    a = bilinear_matrix(src, dst)
    assert np.abs(a @ x @ a.T - want[0, 0].numpy()).max() < 1e-9


class _Head(nn.Module):
    def __init__(self, head: nn.Module, pool: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head, self.pool = head, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.conv(x))
        return self.head(f.mean(dim=(2, 3)) if self.pool else f.flatten(1))


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (_Head(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))), "Relu"),
        (_Head(nn.Linear(8 * 16 * 16, 4), pool=False), "no global average pooling"),
    ],
)
def test_heads_without_an_exact_map_are_excluded_with_the_reason(module: nn.Module, reason: str) -> None:
    model, info = with_class_maps(_onnx_of(module, torch.randn(2, 3, 32, 32)))
    assert isinstance(info, ClassMapExclusion) and reason in info.reason
    assert len(model.graph.output) == 1


def test_meta_weights_follow_the_linear_meta_learner(heat_run: Path) -> None:
    """For a logistic regression the sensitivity is its coefficients' effect on the centred logits."""
    from cxr.fuse.heatmaps import STEP, meta_sensitivity
    from cxr.fuse.members import load_meta

    meta = load_meta(heat_run / "stack" / "meta.onnx")
    assert meta.info["type"] == "logistic_regression"
    with np.load(heat_run / "stack" / "meta.npz", allow_pickle=False) as arrays:
        coef = arrays["coef_"]
    m, k = len(SIZES), 4
    temperature = float((meta.info.get("calibration") or {}).get("temperature", 1.0))
    want = np.zeros((m, k))
    for i in range(m):
        for c in range(k):
            delta = np.zeros(m * k)
            delta[i * k : (i + 1) * k] = -STEP / (k - 1)
            delta[i * k + c] = STEP
            z = coef @ delta / temperature
            want[i, c] = (z - z.mean())[c] / STEP
    assert np.abs(meta_sensitivity(meta, m, k) - want).max() < 1e-3


PAPER_AT_64 = ("densenet121", "resnetv2_50", "legacy_xception", "convnext_base", "vgg19")


@pytest.mark.slow
@pytest.mark.parametrize("timm_name", PAPER_AT_64)
def test_class_maps_of_each_paper_architecture_equal_timm(timm_name: str, tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    from cxr.export.onnx_export import ExportConfig, export_onnx
    from cxr.spec import PreprocessSpec

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model(timm_name, num_classes=4).eval()
    meta = ModelMetadata(CLASSES, PreprocessSpec.square(64), "float_normalized", {"timm_name": timm_name})
    out = tmp_path / f"{timm_name}.onnx"
    export_onnx(net, ExportConfig(out=out, metadata=meta, input_size=(64, 64)))
    model, info = with_class_maps(onnx.load(str(out)))
    if timm_name == "vgg19":
        assert isinstance(info, ClassMapExclusion) and "1x1" in info.reason
        return
    assert isinstance(info, ClassMapInfo) and info.map_size == (2, 2)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    logits, maps = _class_maps(model, x.numpy())
    with torch.no_grad():
        f = net.forward_features(x).double()
        if timm_name == "convnext_base":  # LayerNorm's statistics from the pooled vector, one scale per image
            norm = net.head.norm
            p = f.mean(dim=(2, 3), keepdim=True)
            sigma = torch.sqrt(p.var(dim=1, unbiased=False, keepdim=True) + norm.eps)
            f = (f - f.mean(dim=1, keepdim=True)) / sigma * norm.weight.double()[
                :, None, None
            ] + norm.bias.double()[:, None, None]
        fc = net.get_classifier()
        w = fc.weight.double().reshape(fc.weight.shape[0], -1)
        want = torch.einsum("kc,nchw->nkhw", w, f) + fc.bias.double()[:, None, None]
        ref_logits = net(x)
    scale = max(1.0, float(np.abs(want.numpy()).max()))
    assert np.abs(maps - want.numpy()).max() <= 1e-4 * scale
    assert np.abs(maps.mean(axis=(2, 3)) - ref_logits.numpy()).max() <= 1e-4 * scale  # exact CAM
    assert np.abs(logits - ref_logits.numpy()).max() <= 1e-4 * scale


def _synthetic(n: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, labels, masks = [], [], []
    for i in range(n):
        img, density = render_with_finding(("Normal", "Lung_Opacity")[i % 2], rng, size)
        images.append(img)
        labels.append(i % 2)
        masks.append(density > 0.25 * density.max() if density.max() > 0 else density > 0)
    x = (np.stack(images)[:, None].astype(np.float32) / 255.0 - 0.5) / 0.25
    return x, np.array(labels), np.stack(masks)


@pytest.mark.slow
def test_heatmap_maximum_falls_inside_the_finding_far_more_often_than_chance() -> None:
    """The map's peak lands on the synthetic consolidation far more often than a random location does."""
    size = 64
    x_train, y_train, _ = _synthetic(600, 0, size)
    x_test, y_test, masks = _synthetic(100, 1, size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(1, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2),
        )  # fmt: skip
        opt = torch.optim.Adam(net.parameters(), 2e-3)
        xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
        for _ in range(30):
            net.train()
            for idx in torch.randperm(len(xt)).split(32):
                opt.zero_grad()
                F.cross_entropy(net(xt[idx]), yt[idx]).backward()
                opt.step()
    model, info = with_class_maps(_onnx_of(net, torch.from_numpy(x_test[:2])))
    assert isinstance(info, ClassMapInfo)
    logits, maps = _class_maps(model, x_test)
    accuracy = float((logits.argmax(1) == y_test).mean())
    assert accuracy >= 0.7, f"the network did not learn the finding (accuracy {accuracy:.2f})"
    opacity = np.where(y_test == 1)[0]
    a = bilinear_matrix(maps.shape[2], size)
    hits = []
    for i in opacity:
        up = a @ maps[i, 1] @ a.T
        hits.append(masks[i].flat[int(up.argmax())])
    rng = np.random.default_rng(2)
    random_hits = [masks[i].flat[int(rng.integers(0, size * size))] for i in opacity for _ in range(20)]
    rate, chance = float(np.mean(hits)), float(np.mean(random_hits))
    assert rate >= 0.5 and rate >= 3 * chance, f"peak inside the finding {rate:.2f} vs random {chance:.2f}"
