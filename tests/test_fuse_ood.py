"""The learned out-of-distribution score: its statistics, the in-graph version, the runtime flag, real images.

The real-data test fits the score on ImageNet Xception features (../shared/weights) of the real sample
(../shared/data/radiography-dev) and checks what must pass (unseen radiographs) and what must not
(generated photographs and drawings, inverted radiographs; wrongly windowed ones are the grey-range rule's).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("sklearn")

from cxr.fuse.ood import MemberOod, OodModel, _fit_member, fit_scores  # noqa: E402
from cxr.imaging.gate import MIN_GREY_RANGE, grey_range_reason  # noqa: E402
from tests.not_chest_factory import drawings, inverted, photographs, windowed  # noqa: E402

WEIGHTS = (
    Path(__file__).resolve().parents[2] / "shared" / "weights" / "legacy_xception-imagenet-keras.safetensors"
)


def _gaussian_features(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Features on a 5-dim subspace of 40 dims, 3 classes, little noise elsewhere."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(99).standard_normal((40, 5)))[0].T  # fixed subspace
    y = rng.integers(0, 3, n)
    centres = np.array([[3, 0, 0, 0, 0], [0, 3, 0, 0, 0], [0, 0, 3, 0, 0]], dtype=float)
    z = centres[y] + rng.standard_normal((n, 5))
    x = z @ basis + 0.05 * rng.standard_normal((n, 40)) + shift
    return x, y


def _fitted(x: np.ndarray, y: np.ndarray, x_val: np.ndarray) -> MemberOod:
    m = _fit_member("m", "f", x, y)
    a, b = m.parts(x_val)
    return MemberOod(m.name, m.feature, m.mean, m.components, m.whiten, m.centres, m.residual_scale,
                     float(np.median(a)), float(np.median(b)))  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "flagged_at_least"),
    [("off_subspace", 0.95), ("far_in_subspace", 0.95), ("in_distribution", 0.0)],
)
def test_score_flags_what_differs_from_the_training_features(kind: str, flagged_at_least: float) -> None:
    x, y = _gaussian_features(400, 0)
    x_val, _ = _gaussian_features(200, 1)
    m = _fitted(x, y, x_val)
    threshold = float(np.quantile(m.score(x_val), 0.99))
    probe, _ = _gaussian_features(200, 2)
    if kind == "off_subspace":
        probe = probe + 0.5 * np.random.default_rng(3).standard_normal(probe.shape)  # noise in all 40 dims
    elif kind == "far_in_subspace":
        probe = probe + 20.0 * m.components[:, 0]  # far along a direction the training images span
    flagged = float((m.score(probe) > threshold).mean())
    if kind == "in_distribution":
        assert flagged <= 0.05
    else:
        assert flagged >= flagged_at_least


@pytest.mark.parametrize("quantile", [0.9, 0.97])
def test_cross_fitted_threshold_refuses_the_target_share_of_new_images(quantile: float) -> None:
    """Train, val and new images from one known distribution: the threshold, fitted on cross-fitted held-out
    train scores and val, refuses about 1 - quantile of new images, and the card's estimate says so."""
    x, y = _gaussian_features(600, 0)
    x_val, _ = _gaussian_features(100, 1)
    fresh, _ = _gaussian_features(4000, 2)
    named = [("a", "fa"), ("b", "fb")]
    twice = [x, 2.0 * x]  # two members: the same images seen through two feature scales
    ood = fit_scores(named, twice, y, [x_val, 2.0 * x_val], quantile=quantile, folds=5,
                     rng=np.random.default_rng(0))  # fmt: skip
    refused = float((ood.score([fresh, 2.0 * fresh]) > ood.threshold).mean())
    assert abs(refused - (1 - quantile)) < 0.02
    card = ood.to_card()["false_refusal"]
    assert card["of"] == 700 and ood.folds == 5
    assert card["ci95"][0] <= 1 - quantile <= card["ci95"][1]
    # the old rule: a quantile of the scores of images the statistics were fitted on refuses more new images
    in_sample = float(np.quantile(ood.score(twice), quantile))
    assert float((ood.score([fresh, 2.0 * fresh]) > in_sample).mean()) >= refused


def test_fused_graph_computes_the_score_it_was_fitted_with(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import onnxruntime as ort

    from cxr.fuse import FuseConfig, fuse, run_members
    from cxr.fuse.members import load_member
    from cxr.fuse.ood import fit_ood
    from cxr.spec import ModelMetadata
    from tests.test_fuse import build_tiny_run

    run = build_tiny_run(tmp_path / "run", {"alpha": 32, "beta": 24})
    members, meta = run_members(run)
    res = fuse(members, meta, FuseConfig(run / "ensemble.onnx", run_dir=run, bf16_check=False))
    assert res.ood is not None and res.ood["threshold"] > 0
    card = ModelMetadata.from_props(
        {p.key: p.value for p in onnx.load(str(run / "ensemble.onnx")).metadata_props}
    ).card
    assert card["ood"]["quantile"] == 0.97 and set(card["ood"]["members"]) == {"alpha", "beta"}
    fr = card["ood"]["false_refusal"]  # estimated on held-out scores: cross-fitted train folds + val
    assert (
        fr["of"] == card["ood"]["n_train"] + card["ood"]["n_val"]
        and fr["ci95"][0] <= fr["estimate"] <= fr["ci95"][1]
    )
    ood = fit_ood([load_member(p) for p in members], run, (32, 32))  # the same fit, again
    assert isinstance(ood, OodModel) and ood.threshold == pytest.approx(card["ood"]["threshold"])
    assert ood.check_images is not None and ood.check_scores is not None
    got = ort.InferenceSession(str(run / "ensemble.onnx")).run(["ood_score"], {"image": ood.check_images})[0]
    assert np.allclose(got, ood.check_scores, rtol=1e-4, atol=1e-5)
    report = json.loads((run / "fuse_report.json").read_text())
    assert "ood" not in report or report["ood"] is None or report["ood"]["threshold"] > 0
    from cxr.evaluate import EvalConfig, evaluate

    ev = evaluate(EvalConfig(run_dir=run, plots=False, n_bootstrap=0))  # the gate's point, from this graph
    assert ev.selective is not None and ev.selective.gate is not None
    assert ev.selective.gate.n == ev.n and 0 < ev.selective.gate.kept <= ev.n
    assert "## Selective prediction" in ev.report_md.read_text()


@pytest.mark.parametrize(("threshold", "flagged"), [(-1.0, True), (1e9, False)])
def test_runtime_marks_images_above_the_threshold(
    fused_model_with_ood: Path, tmp_path: Path, threshold: float, flagged: bool
) -> None:
    from cxr.runtime.predictor import Predictor
    from cxr.spec import META_CARD

    m = onnx.load(str(fused_model_with_ood))
    props = {p.key: p.value for p in m.metadata_props}
    card = json.loads(props[META_CARD])
    card["ood"]["threshold"] = threshold
    props[META_CARD] = json.dumps(card)
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, props)
    path = tmp_path / "ensemble.onnx"
    onnx.save(m, str(path))
    rng = np.random.default_rng(0)
    grays = [rng.integers(0, 256, (40, 40), dtype=np.uint8) for _ in range(3)]
    preds = Predictor.from_path(path).predict_arrays(grays)
    codes = [[r.code for r in p.reasons] for p in preds]
    assert all(("out_of_distribution" in c) == flagged for c in codes)
    assert all(p.probabilities for p in preds)  # still predicted, only marked


@pytest.fixture(scope="module")
def fused_model_with_ood(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from cxr.fuse import FuseConfig, fuse, run_members
    from tests.test_fuse import build_tiny_run

    run = build_tiny_run(tmp_path_factory.mktemp("oodrun"), {"alpha": 32, "beta": 32})
    members, meta = run_members(run)
    fuse(members, meta, FuseConfig(run / "ensemble.onnx", run_dir=run, bf16_check=False, report=False))
    return run / "ensemble.onnx"


@pytest.mark.parametrize("spoil", [windowed, lambda g: [np.full_like(x, 200) for x in g]])
def test_grey_range_rule_passes_radiographs_and_refuses_crushed_ones(
    shared_data: Path, spoil: object
) -> None:
    from cxr.imaging.decode import decode_gray

    files = sorted((shared_data / "radiography-dev").rglob("*.png"))[::10]
    if not files:
        pytest.skip(f"no radiographs under {shared_data}/radiography-dev")
    grays = [decode_gray(f) for f in files]
    assert all(grey_range_reason(g) is None for g in grays)
    assert all(grey_range_reason(g) is not None for g in spoil(grays))  # type: ignore[operator]
    assert MIN_GREY_RANGE < 84  # below the narrowest real radiograph measured (benchmarks/README.md)


@pytest.mark.slow
@pytest.mark.real_data
def test_real_xception_features_separate_radiographs_from_what_is_not(
    shared_data: Path, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    if not WEIGHTS.is_file() or not (shared_data / "radiography-dev").is_dir():
        pytest.skip("needs ../shared/weights (Xception) and ../shared/data/radiography-dev")
    from safetensors.torch import load_file

    from cxr.data.manifest import SplitConfig, build_manifest
    from cxr.export.onnx_export import ExportConfig, export_onnx
    from cxr.fuse.members import load_member
    from cxr.fuse.ood import fit_ood, with_pooled_output
    from cxr.imaging.decode import decode_gray
    from cxr.imaging.preprocess import normalize, to_model_input
    from cxr.labels import CLASSES
    from cxr.session import cpu_session
    from cxr.spec import ModelMetadata, PreprocessSpec

    size = 160
    manifest = build_manifest(
        SplitConfig(
            shared_data / "radiography-dev", tmp_path / "manifest.csv", seed=0, fractions=(0.5, 0.2, 0.3)
        )
    ).manifest
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model("legacy_xception", num_classes=len(CLASSES)).eval()
    net.load_state_dict(load_file(str(WEIGHTS)), strict=False)
    spec = PreprocessSpec(input_size=(size, size), channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    meta = ModelMetadata(CLASSES, spec, "float_normalized", {"timm_name": "legacy_xception"})
    export_onnx(net, ExportConfig(out=tmp_path / "xception.onnx", metadata=meta, input_size=(size, size)))
    member = load_member(tmp_path / "xception.onnx")
    ood = fit_ood([member], tmp_path, (size, size), max_train=150, max_val=60)
    assert isinstance(ood, OodModel)
    probe = with_pooled_output(member.model)
    assert probe is not None
    sess = cpu_session(probe[0].SerializeToString())

    def flagged(images: list[np.ndarray]) -> float:
        x = to_model_input(images, spec, normalized=False).astype(np.float32)
        feats = np.concatenate(
            [
                sess.run(["pooled_features"], {"input": normalize(x[i : i + 16], spec)})[0]
                for i in range(0, len(x), 16)
            ]
        )
        return float((ood.score([feats.astype(np.float64)]) > ood.threshold).mean())

    test = [decode_gray(manifest.abspath(r)) for r in manifest.split("test")]
    assert flagged(test) <= 0.1  # unseen radiographs pass (the threshold is val's 99th percentile)
    assert flagged(photographs(30)) >= 0.5
    assert flagged(drawings(30)) >= 0.5
    assert flagged(inverted(test)) >= 0.8
