"""examples/triton_client.py: the request it builds equals what the cxr runtime feeds onnxruntime.

``build_batch`` is compared with ``Predictor.prepare`` on the same files; then ``main`` runs end to end
against a stand-in for ``tritonclient.http`` that enforces the generated config.pbtxt (input name, wire
datatype, dims without the batch axis, max_batch_size, the [batch] -> [batch, 1] reshape) and runs the
model in the repository's version folder with onnxruntime. No real Triton server runs here.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import types
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from cxr.deploy.triton import TritonConfig, TritonExportResult, write_triton_repository
from cxr.errors import ModelError
from cxr.imaging.decode import decode_gray
from cxr.labels import NOTICE
from cxr.runtime.predictor import Predictor
from tests.onnx_factory import write_gray_pngs
from tests.test_deploy_triton_pbtxt import one, parse_pbtxt

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "triton_client.py"


@pytest.fixture(scope="module")
def client_mod() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("cxr_example_triton_client", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(params=["fused", "member"])
def exported(request: pytest.FixtureRequest, tmp_path: Path) -> TritonExportResult:
    model = request.getfixturevalue(f"{request.param}_model")
    return write_triton_repository(model, tmp_path / "repo", TritonConfig(max_batch_size=4))


@pytest.fixture()
def images(tmp_path: Path) -> list[Path]:
    paths = write_gray_pngs(tmp_path / "imgs", 5, size=45, seed=3)  # 45 px: every image is resized
    from PIL import Image

    rgb = tmp_path / "imgs" / "rgb.jpg"  # a colour JPEG goes through the same luma conversion
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(rgb)
    return [*paths, rgb]


def test_build_batch_equals_runtime_prepare(
    client_mod: Any, exported: TritonExportResult, images: list[Path]
) -> None:
    served = client_mod.load_served_model(exported.model_dir)
    pred = Predictor.from_path(exported.model_path)
    assert served.metadata == pred.metadata
    got = client_mod.build_batch(images, served.metadata)
    want = pred.prepare([decode_gray(p) for p in images])
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    # the same images sent as raw bytes give the same tensor
    np.testing.assert_array_equal(
        client_mod.build_batch([p.read_bytes() for p in images], served.metadata), want
    )


def test_served_model_matches_config(client_mod: Any, exported: TritonExportResult) -> None:
    served = client_mod.load_served_model(exported.model_dir)
    cfg = parse_pbtxt(exported.config_path.read_text())
    (inp,) = cfg["input"]
    assert served.name == one(cfg, "name")
    assert served.input_name == one(inp, "name")
    assert "TYPE_" + served.input_datatype == one(inp, "data_type")
    assert list(served.output_names) == [one(o, "name") for o in cfg["output"]]
    assert served.max_batch_size == one(cfg, "max_batch_size") == 4
    batch = client_mod.build_batch([np.zeros((50, 60), np.uint8)], served.metadata)
    assert list(batch.shape[1:]) == inp["dims"]


def test_missing_cxr_json_is_a_clear_error(client_mod: Any, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a model folder written by `cxr export-triton`"):
        client_mod.load_served_model(tmp_path)


@pytest.mark.parametrize(
    ("n", "max_batch", "want"), [(6, 4, [4, 2]), (3, 0, [1, 1, 1]), (0, 8, []), (8, 8, [8])]
)
def test_chunks(client_mod: Any, n: int, max_batch: int, want: list[int]) -> None:
    got = client_mod.chunks(n, max_batch)
    assert [len(r) for r in got] == want and [i for r in got for i in r] == list(range(n))


class FakeTriton:
    """Enough of ``tritonclient.http`` to run the example against a repository, strictly."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.requests: list[tuple[int, ...]] = []
        fake = self

        class InferenceServerException(Exception):
            pass

        class InferInput:
            def __init__(self, name: str, shape: list[int], datatype: str) -> None:
                self.name, self.shape, self.datatype = name, list(shape), datatype
                self.data: np.ndarray | None = None

            def set_data_from_numpy(self, arr: np.ndarray, binary_data: bool = True) -> None:
                if list(arr.shape) != self.shape:
                    raise InferenceServerException(f"shape {arr.shape} != declared {self.shape}")
                self.data = arr

        class InferRequestedOutput:
            def __init__(self, name: str, binary_data: bool = True) -> None:
                self.name = name

        class Result:
            def __init__(self, outs: dict[str, np.ndarray]) -> None:
                self.outs = outs

            def as_numpy(self, name: str) -> np.ndarray:
                return self.outs[name]

        class InferenceServerClient:
            def __init__(self, url: str, **kwargs: Any) -> None:
                self.url = url

            def is_model_ready(self, name: str, version: str = "") -> bool:
                if self.url.startswith("down:"):
                    raise ConnectionRefusedError(111, "Connection refused")
                return (fake.repo / name / version / "model.onnx").is_file()

            def infer(
                self, model_name: str, inputs: list[Any], model_version: str = "", outputs: Any = None
            ) -> Any:
                return Result(fake.serve(model_name, model_version, inputs, [o.name for o in outputs]))

        self.exc = InferenceServerException
        self.http = types.SimpleNamespace(
            InferInput=InferInput,
            InferRequestedOutput=InferRequestedOutput,
            InferenceServerClient=InferenceServerClient,
        )

    def serve(self, name: str, version: str, inputs: list[Any], wanted: list[str]) -> dict[str, np.ndarray]:
        cfg = parse_pbtxt((self.repo / name / "config.pbtxt").read_text())
        max_batch = one(cfg, "max_batch_size")
        feeds = {}
        for inp in inputs:
            (spec,) = [c for c in cfg["input"] if one(c, "name") == inp.name]
            if "TYPE_" + inp.datatype != one(spec, "data_type"):
                raise self.exc(f"datatype {inp.datatype} != {one(spec, 'data_type')}")
            if inp.shape[1:] != spec["dims"] or not 1 <= inp.shape[0] <= max_batch:
                raise self.exc(f"shape {inp.shape} does not fit dims {spec['dims']} / max batch {max_batch}")
            wire = {"UINT8": np.uint8, "FP32": np.float32}[inp.datatype]
            if inp.data.dtype != wire:
                raise self.exc(f"data {inp.data.dtype} sent as {inp.datatype}")
            feeds[inp.name] = inp.data
            self.requests.append(tuple(inp.shape))
        sess = ort.InferenceSession(
            str(self.repo / name / version / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        outs = dict(zip(wanted, sess.run(wanted, feeds), strict=True))
        for o in cfg["output"]:  # Triton reports dims as configured: [batch] comes back as [batch, 1]
            if one(o, "name") in outs and "reshape" in o:
                outs[one(o, "name")] = outs[one(o, "name")].reshape(-1, *o["dims"])
        return outs


@pytest.fixture()
def fake_triton(monkeypatch: pytest.MonkeyPatch, exported: TritonExportResult) -> Iterator[FakeTriton]:
    fake = FakeTriton(exported.repository)
    pkg = types.ModuleType("tritonclient")
    http = types.ModuleType("tritonclient.http")
    utils = types.ModuleType("tritonclient.utils")
    vars(http).update(vars(fake.http))
    utils.InferenceServerException = fake.exc  # type: ignore[attr-defined]
    for name, mod in {"tritonclient": pkg, "tritonclient.http": http, "tritonclient.utils": utils}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    yield fake


def run_main(client_mod: Any, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = client_mod.main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_main_end_to_end_matches_predictor(
    client_mod: Any, exported: TritonExportResult, fake_triton: FakeTriton, images: list[Path]
) -> None:
    rc, out, err = run_main(client_mod, ["--model-dir", str(exported.model_dir), *map(str, images)])
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert fake_triton.requests[0][0] == 4 and [r[0] for r in fake_triton.requests] == [4, 2]
    want = Predictor.from_path(exported.model_path).predict(images)
    assert [r["source"] for r in rows] == [p.source for p in want]
    for row, p in zip(rows, want, strict=True):
        assert row["label"] == p.label and row["notice"] == NOTICE
        np.testing.assert_allclose(
            list(row["probabilities"].values()), list(p.probabilities.values()), atol=1e-6
        )
        if p.member_probabilities is not None:
            assert row["member_probabilities"].keys() == p.member_probabilities.keys()


def test_main_reports_a_model_the_server_lacks(
    client_mod: Any, exported: TritonExportResult, fake_triton: FakeTriton, images: list[Path]
) -> None:
    (exported.model_path).rename(exported.model_path.with_suffix(".gone"))
    rc, _, err = run_main(client_mod, ["--model-dir", str(exported.model_dir), str(images[0])])
    assert rc == 1 and "no ready model" in err


def test_main_reports_an_unreachable_server(
    client_mod: Any, exported: TritonExportResult, fake_triton: FakeTriton, images: list[Path]
) -> None:
    rc, _, err = run_main(
        client_mod, ["--url", "down:1", "--model-dir", str(exported.model_dir), str(images[0])]
    )
    assert rc == 1 and "cannot reach Triton at down:1" in err


def test_main_without_tritonclient_says_how_to_install(
    client_mod: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient", None)
    monkeypatch.setitem(sys.modules, "tritonclient.http", None)
    rc, _, err = run_main(client_mod, ["--model-dir", str(tmp_path), "x.png"])
    assert rc == 2 and "pip install 'tritonclient[http]'" in err
