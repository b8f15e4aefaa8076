"""Fusion on tiny members: parity with the separate pipeline and with PyTorch, shapes, metadata, refusals.

The module fixture builds a whole tiny run: PNG images, a manifest, five tiny torch CNNs with their PyTorch
val/test predictions and ONNX exports (with cxr metadata, FP16 and INT8 variants), and the meta-learner.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skl2onnx")

from torch import nn  # noqa: E402

from cxr.data.manifest import SplitConfig, build_manifest  # noqa: E402
from cxr.errors import CxrError, ModelError  # noqa: E402
from cxr.fuse import FuseConfig, fuse, run_members  # noqa: E402
from cxr.fuse.members import load_member  # noqa: E402
from cxr.imaging.decode import decode_gray  # noqa: E402
from cxr.imaging.preprocess import to_model_input  # noqa: E402
from cxr.labels import CLASSES, NOTICE  # noqa: E402
from cxr.spec import (  # noqa: E402
    INPUT_IMAGE,  # noqa: E402
    ModelMetadata,
    PreprocessSpec,
)
from cxr.stack.calibrate import MIN_CALIBRATION_PREDICTIONS  # noqa: E402
from cxr.stack.features import MemberOrderError, load_split  # noqa: E402
from cxr.stack.stack import MetaConfig, fit_meta  # noqa: E402
from cxr.train.predictions import PredictionTable, write_predictions  # noqa: E402

K = len(CLASSES)
MEMBERS = {"alpha": 32, "beta": 32, "gamma": 32, "delta": 32, "epsilon": 32}


class TinyNet(nn.Module):
    def __init__(self, width: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, K)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            self.bn.running_mean.copy_(torch.randn(width, generator=g) * 0.1)
            self.bn.running_var.copy_(torch.rand(width, generator=g) + 0.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))) * 3.0


def _write_images(root: Path, rng: np.random.Generator, per_class: int = 10) -> None:
    from PIL import Image

    for ci, c in enumerate(CLASSES):
        d = root / c / "images"
        d.mkdir(parents=True)
        for i in range(per_class):
            h, w = (48, 48) if i % 2 else (44, 52)
            base = rng.integers(0, 256, size=(h, w)).astype(np.float64)
            img = np.clip(base * 0.6 + 40 * ci + 20, 0, 255).astype(np.uint8)
            Image.fromarray(img, mode="L").save(d / f"{c}-{i}.png")


def _export(model: nn.Module, size: int, path: Path, card: dict) -> None:
    x = torch.randn(2, 3, size, size)  # traced at batch 2 so the batch stays dynamic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is the legacy exporter, on purpose
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    m = onnx.load(str(path))
    md = ModelMetadata(CLASSES, PreprocessSpec.square(size), "float_normalized", card)
    onnx.helper.set_model_props(m, md.to_props())
    onnx.save(m, str(path))


def _variants(path: Path, size: int) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = onnx.load(str(path))
    props = {p.key: p.value for p in m.metadata_props}
    half = convert_float_to_float16(m, keep_io_types=False)
    onnx.save(half, str(path.with_name(path.stem + ".fp16.onnx")))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter(
                [{"input": rng.normal(size=(2, 3, size, size)).astype(np.float32)} for _ in range(2)]
            )

        def get_next(self):  # noqa: ANN201
            return next(self.batches, None)

    q = path.with_name(path.stem + ".int8.onnx")
    quantize_static(
        str(path),
        str(q),
        Reader(),
        quant_format=QuantFormat.QDQ,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    qm = onnx.load(str(q))
    onnx.helper.set_model_props(qm, props)
    onnx.save(qm, str(q))


def _predict(model: nn.Module, grays: list[np.ndarray], size: int) -> np.ndarray:
    x = torch.from_numpy(to_model_input(grays, PreprocessSpec.square(size), normalized=True))
    with torch.no_grad():
        return torch.softmax(model(x), dim=1).double().numpy()


def _train(model: nn.Module, manifest: Any, size: int, steps: int) -> None:
    """Fit ``model`` to the train split (the classes differ in brightness: a few steps separate them)."""
    rows = manifest.split("train")
    grays = [decode_gray(manifest.abspath(r)) for r in rows]
    x = torch.from_numpy(to_model_input(grays, PreprocessSpec.square(size), normalized=True))
    y = torch.tensor([CLASSES.index(r.label) for r in rows])
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


def build_tiny_run(
    run: Path, sizes: dict[str, int], *, variants: bool = False, train_steps: int = 0, per_class: int = 10
) -> Path:
    """A whole tiny run in ``run`` (see the module docstring); ``train_steps`` > 0 trains each member first."""
    rng = np.random.default_rng(0)
    data = run / "data"
    _write_images(data, rng, per_class)
    manifest = build_manifest(
        SplitConfig(data, run / "manifest.csv", seed=0, fractions=(0.2, 0.5, 0.3))
    ).manifest
    (run / "onnx").mkdir(parents=True)
    for seed, (name, size) in enumerate(sizes.items()):
        model = TinyNet(8, seed)
        if train_steps:
            _train(model, manifest, size, train_steps)
        sha = hashlib.sha256(f"{name}-{seed}".encode()).hexdigest()
        for split in ("val", "test"):
            rows = manifest.split(split)
            probs = _predict(model, [decode_gray(manifest.abspath(r)) for r in rows], size)
            table = PredictionTable(
                name,
                split,
                manifest.digest(),
                CLASSES,
                tuple(r.path for r in rows),
                tuple(r.label for r in rows),
                probs,
                sha,
            )
            write_predictions(table, run / "members" / name / "predictions")
        best = {
            "name": name,
            "timm_name": "tiny",
            "classes": list(CLASSES),
            "preprocess": PreprocessSpec.square(size).to_dict(),
            "metrics": {"val_accuracy": 0.5},
            "sha256": sha,
        }
        (run / "members" / name / "best.json").write_text(json.dumps(best))
        card = {
            "name": name,
            "timm_name": "tiny",
            "checkpoint_sha256": sha,
            "metrics": {"val_accuracy": 0.5},
            "flops_per_image": 1000.0,
            "precision": "fp32",
        }
        _export(model, size, run / "onnx" / f"{name}.onnx", card)
        if variants:
            _variants(run / "onnx" / f"{name}.onnx", size)
    fit_meta(MetaConfig(run, members=tuple(sizes), cv_folds=3))
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_run(tmp_path_factory.mktemp("run"), MEMBERS, variants=True)


@pytest.fixture(scope="module")
def fused(tiny_run: Path):
    members, meta = run_members(tiny_run)
    return fuse(
        members,
        meta,
        FuseConfig(tiny_run / "ensemble.onnx", variants=("fp16", "int8"), run_dir=tiny_run, benchmark_runs=5),
    )


def _copy_members(run: Path, dest: Path, names: list[str], variants: tuple[str, ...] = ()) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for n in names:
        out.append(Path(shutil.copy(run / "onnx" / f"{n}.onnx", dest / f"{n}.onnx")))
        for v in variants:
            shutil.copy(run / "onnx" / f"{n}.{v}.onnx", dest / f"{n}.{v}.onnx")
    return out


def _rewrite_member(src: Path, dest: Path, **changes: object) -> Path:
    m = onnx.load(str(src))
    md = ModelMetadata.from_props({p.key: p.value for p in m.metadata_props})
    card = {**dict(md.card), **dict(changes.pop("card", {}))}  # type: ignore[arg-type]
    new = ModelMetadata(
        classes=changes.get("classes", md.classes),  # type: ignore[arg-type]
        preprocess=changes.get("preprocess", md.preprocess),  # type: ignore[arg-type]
        input_format="float_normalized",
        card=card,
    )
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, new.to_props())
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(dest))
    return dest


# --- the fused graph -----------------------------------------------------------------------------------------


def test_fused_equals_separate_members_and_meta(fused) -> None:
    par = fused.parity
    assert par.batches == (1, 8)
    assert par.max_abs_diff_probabilities <= 1e-5 and par.max_abs_diff_member_probabilities <= 1e-5
    assert par.labels_equal


@pytest.mark.parametrize("batch", [1, 8])
def test_output_shapes_and_types(fused, batch: int) -> None:
    sess = ort.InferenceSession(str(fused.path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert (inp.name, inp.type, inp.shape[1:]) == (INPUT_IMAGE, "tensor(uint8)", [1, 32, 32])
    images = np.random.default_rng(batch).integers(0, 256, size=(batch, 1, 32, 32), dtype=np.uint8)
    probs, label, member = sess.run(["probabilities", "label", "member_probabilities"], {INPUT_IMAGE: images})
    assert probs.shape == (batch, K) and probs.dtype == np.float32
    assert label.shape == (batch,) and label.dtype == np.int64
    assert member.shape == (batch, len(MEMBERS), K)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(member.sum(axis=2), 1.0, atol=1e-5)
    np.testing.assert_array_equal(label, probs.argmax(axis=1))


def test_end_to_end_top1_identical_to_pytorch_and_scikit_learn(fused, tiny_run: Path) -> None:
    e2e = fused.end_to_end
    assert e2e is not None and e2e.n == 12
    assert e2e.top1_identical and e2e.mismatches == ()
    assert e2e.max_abs_diff_probabilities < 1e-4  # same preprocessing: only float noise
    assert set(e2e.member_top1_agreement.values()) == {1.0}


def test_metadata(fused, tiny_run: Path) -> None:
    from cxr.session import file_sha256

    model = onnx.load(str(fused.path))
    md = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    assert md.classes == CLASSES and md.input_format == "uint8_gray"
    assert md.preprocess.input_size == (32, 32) and md.preprocess.channels == 3
    card = md.card
    assert card["kind"] == "ensemble" and card["precision"] == "fp32" and card["notice"] == NOTICE
    assert card["member_order"] == list(MEMBERS)
    assert [m["name"] for m in card["members"]] == list(MEMBERS)
    first = card["members"][0]
    assert first["onnx_sha256"] == file_sha256(tiny_run / "onnx" / "alpha.onnx")
    assert first["checkpoint_sha256"] == hashlib.sha256(b"alpha-0").hexdigest()
    assert first["metrics"] == {"val_accuracy": 0.5} and first["input_size"] == [32, 32]
    meta = json.loads((tiny_run / "stack" / "meta.json").read_text())
    assert card["meta"]["type"] == "logistic_regression" and card["meta"]["params"] == meta["params"]
    assert (
        card["meta"]["cv_score"] == pytest.approx(meta["cv_score"])
        and "accuracy" in card["meta"]["val_metrics"]
    )
    assert card["flops_per_image"] > 5 * 1000.0
    assert card["created"] and card["cxr_version"]
    assert any("resize" in s for s in card["runtime_preprocess"])


def test_graph_is_wired_by_hand_with_prefixes(fused) -> None:
    model = onnx.load(str(fused.path))
    assert {o.domain or "": o.version for o in model.opset_import}[""] == 17
    names = [n.name for n in model.graph.node]
    for member in MEMBERS:
        assert any(n.startswith(f"{member}/") for n in names)
    assert any(n.startswith("meta/") for n in names)
    assert [i.name for i in model.graph.input] == [INPUT_IMAGE]
    keys = {p.key for p in model.metadata_props}
    assert (
        keys - {"cxr.verified_precisions"}
        == {
            "cxr.format_version",
            "cxr.classes",
            "cxr.preprocess",
            "cxr.input",
            "cxr.card",
        }
    )  # members' stripped; the OpenVINO BF16 record where openvino is installed (tests/test_fuse_bf16_check.py)
    assert fused.files["fp32"].simplified


def test_fp16_and_int8_variants(fused, tiny_run: Path) -> None:
    for v in ("fp16", "int8"):
        f = fused.files[v]
        assert f.path == tiny_run / f"ensemble.{v}.onnx" and f.path.is_file()
        md = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(f.path)).metadata_props})
        assert md.card["precision"] == v and md.input_format == "uint8_gray"
        assert f.parity.labels_equal and f.parity.max_abs_diff_probabilities <= 1e-3
        assert f.drift_vs_fp32 is not None and 0 <= f.drift_vs_fp32["top1_agreement"] <= 1


def test_reports_and_latency(fused, tiny_run: Path) -> None:
    report = json.loads((tiny_run / "fuse_report.json").read_text())
    assert report["member_order"] == list(MEMBERS)
    assert set(report["files"]) == {"fp32", "fp16", "int8"}
    assert report["end_to_end"]["top1_identical"] is True
    assert NOTICE in (tiny_run / "fuse_report.md").read_text()
    lat = fused.latency
    assert lat is not None and lat["fused_ms_median"] > 0 and lat["separate_ms_median"] > 0


def test_calibration_skipped_below_the_minimum_is_said_in_report_card_and_warnings(
    fused, tiny_run: Path
) -> None:
    """The tiny run's validation split is far below the minimum: T = 1, and every place says why."""
    n_val = len(load_split(tiny_run, MEMBERS, "val").labels)
    assert n_val < MIN_CALIBRATION_PREDICTIONS
    why = f"calibration skipped: {n_val} validation predictions < minimum {MIN_CALIBRATION_PREDICTIONS}"
    report = json.loads((tiny_run / "fuse_report.json").read_text())
    assert report["calibration"]["skipped"] == why and report["calibration"]["temperature"] == 1.0
    assert f"- Calibration: {why}; T = 1" in (tiny_run / "fuse_report.md").read_text()
    card = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(fused.path)).metadata_props}).card
    assert card["calibration"]["skipped"] == why and card["calibration"]["method"] == "none"
    assert any(why in w for w in fused.warnings)


def test_missing_variant_is_skipped_and_external_data_is_used(tiny_run: Path, tmp_path: Path) -> None:
    members = _copy_members(tiny_run, tmp_path / "onnx", list(MEMBERS), variants=("fp16",))
    (tmp_path / "onnx" / "gamma.fp16.onnx").unlink()
    cfg = FuseConfig(tmp_path / "ensemble.onnx", variants=("fp16",), external_data_threshold=0, report=False)
    res = fuse(members, tiny_run / "stack" / "meta.onnx", cfg)
    assert "fp16" not in res.files and "gamma.fp16.onnx" in res.skipped_variants["fp16"]
    assert res.files["fp32"].external_data and (tmp_path / "ensemble.onnx.data").is_file()
    assert res.parity.max_abs_diff_probabilities <= 1e-5


# --- refusals ----------------------------------------------------------------------------------------------


def _paths(run: Path) -> list[Path]:
    return [run / "onnx" / f"{n}.onnx" for n in MEMBERS]


def test_member_order_differs_from_the_meta_learner(tiny_run: Path, tmp_path: Path) -> None:
    paths = _paths(tiny_run)
    paths[1], paths[2] = paths[2], paths[1]
    with pytest.raises(MemberOrderError, match="position 1: 'gamma' where 'beta' belongs"):
        fuse(paths, tiny_run / "stack" / "meta.onnx", FuseConfig(tmp_path / "e.onnx"))


def test_missing_member_is_named(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(MemberOrderError, match="member\\(s\\) epsilon missing"):
        fuse(_paths(tiny_run)[:-1], tiny_run / "stack" / "meta.onnx", FuseConfig(tmp_path / "e.onnx"))


def test_meta_learner_trained_on_another_member_order(tiny_run: Path, tmp_path: Path) -> None:
    meta = onnx.load(str(tiny_run / "stack" / "meta.onnx"))
    props = {p.key: p.value for p in meta.metadata_props}
    info = json.loads(props["cxr.meta"])
    info["member_order"] = list(reversed(info["member_order"]))
    del meta.metadata_props[:]
    onnx.helper.set_model_props(meta, {**props, "cxr.meta": json.dumps(info)})
    onnx.save(meta, str(tmp_path / "meta.onnx"))
    with pytest.raises(
        MemberOrderError, match="differs from the meta-learner's epsilon, delta, gamma, beta, alpha"
    ):
        fuse(_paths(tiny_run), tmp_path / "meta.onnx", FuseConfig(tmp_path / "e.onnx"))


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"classes": ("Lung_Opacity", "COVID", "Normal", "Viral Pneumonia")}, "class order"),
        ({"card": {"checkpoint_sha256": "e" * 64}}, "was exported from checkpoint eeeeeeeeeeee"),
        ({"card": {"name": "meta"}}, "clashes"),
    ],
)
def test_incompatible_member_is_refused(tiny_run: Path, tmp_path: Path, changes: dict, words: str) -> None:
    paths = _paths(tiny_run)
    paths[-1] = _rewrite_member(paths[-1], tmp_path / "epsilon.onnx", **changes)
    if changes.get("card", {}).get("name") == "meta":  # the meta-learner must know the renamed member
        meta = onnx.load(str(tiny_run / "stack" / "meta.onnx"))
        props = {p.key: p.value for p in meta.metadata_props}
        info = json.loads(props["cxr.meta"])
        info["member_order"][-1] = "meta"
        del meta.metadata_props[:]
        onnx.helper.set_model_props(meta, {**props, "cxr.meta": json.dumps(info)})
        onnx.save(meta, str(tmp_path / "meta.onnx"))
        meta_path = tmp_path / "meta.onnx"
    else:
        meta_path = tiny_run / "stack" / "meta.onnx"
    with pytest.raises(ModelError, match=words):
        fuse(paths, meta_path, FuseConfig(tmp_path / "e.onnx"))


def test_members_with_their_own_normalisation_get_their_own_chain(tiny_run: Path, tmp_path: Path) -> None:
    """legacy_xception expects mean = std = 0.5, the others ImageNet's: one chain per (size, mean, std)."""
    paths = _paths(tiny_run)
    half = PreprocessSpec(input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    paths[-1] = _rewrite_member(paths[-1], tmp_path / "m" / paths[-1].name, preprocess=half)
    res = fuse(paths, tiny_run / "stack" / "meta.onnx", FuseConfig(tmp_path / "e.onnx", report=False))
    rng = np.random.default_rng(3)
    grays = [rng.integers(0, 256, size=(32, 32), dtype=np.uint8) for _ in range(4)]
    fused = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    member = fused.run(["member_probabilities"], {INPUT_IMAGE: np.stack(grays)[:, None]})[0][:, -1]
    alone = ort.InferenceSession(str(paths[-1]), providers=["CPUExecutionProvider"])

    def probs(spec: PreprocessSpec) -> np.ndarray:
        logits = alone.run(None, {alone.get_inputs()[0].name: to_model_input(grays, spec, normalized=True)})[
            0
        ]
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    np.testing.assert_allclose(member, probs(half), atol=1e-5)
    assert np.abs(member - probs(PreprocessSpec(input_size=(32, 32)))).max() > 1e-3  # ImageNet's differs
    card = json.loads(dict((p.key, p.value) for p in onnx.load(str(res.path)).metadata_props)["cxr.card"])
    assert card["members"][-1]["mean"] == [0.5, 0.5, 0.5] and card["members"][0]["std"] != [0.5, 0.5, 0.5]


def test_member_without_cxr_metadata_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    m = onnx.load(str(tiny_run / "onnx" / "alpha.onnx"))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "alpha.onnx"))
    with pytest.raises(ModelError, match="no cxr metadata"):
        load_member(tmp_path / "alpha.onnx")


# --- members of different input sizes ----------------------------------------------------------------------


def test_members_of_different_sizes_get_an_in_graph_resize(tmp_path: Path) -> None:
    run = build_tiny_run(tmp_path / "run", {"small": 24, "large": 40})
    members, meta = run_members(run)
    res = fuse(members, meta, FuseConfig(run / "ensemble.onnx", run_dir=run, e2e_strict=False, report=False))
    assert res.input_size == (40, 40)
    assert [(r["member"], r["to"]) for r in res.resizes] == [("small", [24, 24])]
    assert res.parity.max_abs_diff_probabilities <= 1e-5 and res.parity.labels_equal
    assert res.end_to_end is not None and res.end_to_end.n == 12
    assert any("resizes again" in w for w in res.warnings)


# --- CLI ---------------------------------------------------------------------------------------------------


def test_cli_fuse(tiny_run: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from cxr.cli import fuse as fuse_cli

    app = typer.Typer()
    app.command()(fuse_cli.fuse)
    out = tmp_path / "cli.onnx"
    r = CliRunner().invoke(app, [str(tiny_run), "--output", str(out), "--bench-runs", "0", "--no-simplify"])
    assert r.exit_code == 0, r.output
    assert "top-1 identical" in r.output and NOTICE in r.output and out.is_file()
    r = CliRunner().invoke(app, [str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "meta-learner" in r.output and "cxr stack" in r.output


def test_fuse_error_is_a_cxr_error() -> None:
    assert issubclass(MemberOrderError, CxrError)


def test_nodes_out_of_order_are_sorted_and_a_dangling_input_is_named() -> None:
    """onnxconverter-common's FP16 casts can come after their readers; onnx.checker refuses that order."""
    from cxr.fuse.graph import topological_order

    a = onnx.helper.make_node("Relu", ["x"], ["a"], name="a")
    b = onnx.helper.make_node("Relu", ["a"], ["b"], name="b")
    c = onnx.helper.make_node("Add", ["b", "a"], ["c"], name="c")
    assert [n.name for n in topological_order([c, b, a], {"x"})] == ["a", "b", "c"]
    assert [n.name for n in topological_order([a, b, c], {"x"})] == ["a", "b", "c"]
    with pytest.raises(ModelError, match="no node makes: ghost"):
        topological_order([onnx.helper.make_node("Relu", ["ghost"], ["y"])], {"x"})
