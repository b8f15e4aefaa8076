"""cxr-bench input checks: ONNX header reader, variants, batch sizes, folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cxr.bench.inputs import check_batch_sizes, check_variants, inspect_model, list_images
from cxr.errors import ConfigError, DataError, ModelError
from cxr.onnx_header import read_onnx_header
from cxr.session import file_sha256
from tests.onnx_factory import make_fused_model, make_member_model
from tests.test_bench_support import fixed_batch, variant_of, with_card


@pytest.mark.parametrize("which", ["fused_model", "member_model"])
def test_header_matches_onnxruntime(which: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(which)
    header = read_onnx_header(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert header.metadata == sess.get_modelmeta().custom_metadata_map
    (inp,) = header.inputs
    assert inp.name == sess.get_inputs()[0].name
    assert list(inp.shape) == sess.get_inputs()[0].shape
    assert inp.elem_type == {"tensor(uint8)": "uint8", "tensor(float)": "float"}[sess.get_inputs()[0].type]


@pytest.mark.parametrize("location", [None, "weights.bin"])
def test_header_names_the_external_data_files(
    fused_model: Path, tmp_path: Path, location: str | None
) -> None:
    path = tmp_path / "m.onnx"
    model = onnx.load(str(fused_model))
    if location is None:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, location=location, size_threshold=256)
    assert read_onnx_header(path).external_data == (() if location is None else (location,))


def test_header_skips_initializers_listed_as_inputs(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "old_style",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])],
        [w],
    )
    path = tmp_path / "old.onnx"
    onnx.save(helper.make_model(graph), str(path))
    header = read_onnx_header(path)
    assert [i.name for i in header.inputs] == ["x"]
    assert header.inputs[0].shape == (3, 2)


@pytest.mark.parametrize("content", [b"", b"not an onnx file at all \xff\xff\xff\xff", b"\x08\x07"])
def test_header_rejects_non_onnx(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError):
        read_onnx_header(path)


def test_inspect_reads_card(fused_model: Path, member_model: Path) -> None:
    fused, member = inspect_model(fused_model), inspect_model(member_model)
    assert (fused.kind, fused.precision, fused.member_order) == ("ensemble", "fp32", ("alpha", "beta"))
    assert fused.flops_per_image == 2 * 32 * 32 * 4 * 2
    assert fused.root_sha256 == {fused.sha256} and fused.sha256 == file_sha256(fused_model)
    assert fused.fixed_batch is None
    assert (member.kind, member.member_name, member.precision) == ("member", "tiny", "fp32")


def test_inspect_refuses_file_without_metadata(tmp_path: Path) -> None:
    path = make_fused_model(tmp_path / "bare.onnx", with_metadata=False)
    with pytest.raises(ModelError, match="no cxr metadata"):
        inspect_model(path)


def test_variant_of_the_same_model_is_accepted(fused_model: Path, tmp_path: Path) -> None:
    int8 = inspect_model(variant_of(fused_model, tmp_path / "int8.onnx", "int8"))
    fp16 = inspect_model(variant_of(fused_model, tmp_path / "fp16.onnx", "fp16"))
    main = inspect_model(fused_model)
    check_variants(main, [int8, fp16])
    check_variants(int8, [main, fp16])  # the order does not matter: all share the FP32 root
    assert int8.precision == "int8" and int8.root_sha256 == {main.sha256} and int8.sha256 != main.sha256


def test_variant_of_another_ensemble_is_refused(fused_model: Path, tmp_path: Path) -> None:
    other_fp32 = make_fused_model(tmp_path / "other.onnx", seed=5)
    stranger = inspect_model(variant_of(other_fp32, tmp_path / "other_int8.onnx"))
    with pytest.raises(ModelError, match="metadata hash mismatch") as err:
        check_variants(inspect_model(fused_model), [stranger])
    assert "other_int8.onnx" in err.value.message and err.value.hint
    assert err.value.exit_code == 2


def _ensemble_card(ckpts: list[str], meta: str = "m" * 64) -> dict:  # type: ignore[type-arg]
    return {
        "members": [
            {"name": n, "checkpoint_sha256": c} for n, c in zip(("alpha", "beta"), ckpts, strict=True)
        ],
        "meta": {"onnx_sha256": meta},
    }


@pytest.mark.parametrize(
    ("card_b", "ok"),
    [
        (_ensemble_card(["a" * 64, "b" * 64]), True),  # same checkpoints and meta-learner
        (_ensemble_card(["a" * 64, "c" * 64]), False),  # one member retrained
        (_ensemble_card(["a" * 64, "b" * 64], meta="n" * 64), False),  # another meta-learner
        ({"members": [{"name": "alpha"}, {"name": "beta"}]}, False),  # nothing to tell
    ],
)
def test_fused_variants_match_on_trained_weights(tmp_path: Path, card_b: dict, ok: bool) -> None:  # type: ignore[type-arg]
    """Fused INT8 ensembles carry no fp32_sha256: they match the FP32 ensemble on checkpoints + meta."""
    fp32 = with_card(
        make_fused_model(tmp_path / "a.onnx"), tmp_path / "fp32.onnx", **_ensemble_card(["a" * 64, "b" * 64])
    )
    int8 = with_card(
        make_fused_model(tmp_path / "b.onnx", seed=4), tmp_path / "int8.onnx", precision="int8", **card_b
    )
    if ok:
        check_variants(inspect_model(fp32), [inspect_model(int8)])
    else:
        with pytest.raises(ModelError, match="metadata hash mismatch"):
            check_variants(inspect_model(fp32), [inspect_model(int8)])


def test_member_variants_match_on_checkpoint(member_model: Path, tmp_path: Path) -> None:
    a = with_card(member_model, tmp_path / "a.onnx", checkpoint_sha256="c" * 64)
    b = with_card(
        make_member_model(tmp_path / "x.onnx", seed=2), tmp_path / "b.onnx", checkpoint_sha256="c" * 64
    )
    c = with_card(
        make_member_model(tmp_path / "y.onnx", seed=3), tmp_path / "c.onnx", checkpoint_sha256="d" * 64
    )
    check_variants(inspect_model(a), [inspect_model(b)])
    with pytest.raises(ModelError):
        check_variants(inspect_model(a), [inspect_model(c)])


def test_external_data_counts_in_the_fp32_hash(fused_model: Path, tmp_path: Path) -> None:
    import hashlib
    import shutil

    main = shutil.copy(fused_model, tmp_path / "big.onnx")
    (tmp_path / "big.onnx.data").write_bytes(b"weights")
    content = hashlib.sha256(Path(main).read_bytes() + b"weights").hexdigest()
    v = with_card(fused_model, tmp_path / "big.int8.onnx", precision="int8", fp32_sha256=content)
    check_variants(inspect_model(main), [inspect_model(v)])


def test_variant_without_provenance_is_refused(fused_model: Path, tmp_path: Path) -> None:
    plain = inspect_model(make_fused_model(tmp_path / "plain.onnx", seed=3))
    with pytest.raises(ModelError, match="does not belong"):
        check_variants(inspect_model(fused_model), [plain])


def test_variant_with_other_classes_is_refused(fused_model: Path, tmp_path: Path) -> None:
    path = make_fused_model(tmp_path / "c.onnx", classes=("a", "b", "c", "d"))
    odd = with_card(path, tmp_path / "c8.onnx", precision="int8", fp32_sha256=file_sha256(fused_model))
    with pytest.raises(ModelError, match="classes"):
        check_variants(inspect_model(fused_model), [inspect_model(odd)])


def test_same_file_twice_is_refused(fused_model: Path) -> None:
    with pytest.raises(ConfigError, match="same file"):
        check_variants(inspect_model(fused_model), [inspect_model(fused_model)])


@pytest.mark.parametrize(("fixed", "sizes", "ok"), [(1, (1,), True), (1, (1, 8), False), (4, (4,), True)])
def test_fixed_batch_dimension(
    fused_model: Path, tmp_path: Path, fixed: int, sizes: tuple[int, ...], ok: bool
) -> None:
    mf = inspect_model(fixed_batch(fused_model, tmp_path / "fixed.onnx", fixed))
    assert mf.fixed_batch == fixed
    if ok:
        check_batch_sizes(mf, sizes)
    else:
        with pytest.raises(ModelError, match=f"takes batch size {fixed} only"):
            check_batch_sizes(mf, sizes)


def test_list_images(tmp_path: Path, gray_pngs: list[Path]) -> None:
    (gray_pngs[0].parent / "notes.txt").write_text("not an image")
    nested = gray_pngs[0].parent / "sub" / "x.PNG"
    nested.parent.mkdir()
    nested.write_bytes(gray_pngs[0].read_bytes())
    files = list_images(gray_pngs[0].parent)
    assert len(files) == len(gray_pngs) + 1 and nested in files
    assert all(f.suffix.lower() == ".png" for f in files)


@pytest.mark.parametrize("make", ["missing", "empty", "no_images"])
def test_list_images_refuses_empty_folders(tmp_path: Path, make: str) -> None:
    folder = tmp_path / "imgs"
    if make != "missing":
        folder.mkdir()
    if make == "no_images":
        (folder / "readme.txt").write_text("x")
    with pytest.raises(DataError):
        list_images(folder)
