"""One result schema on every surface: Python, `cxr-predict image --json`, scan JSONL and CSV, and the API."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from cxr.cli.predict import app
from cxr.runtime.predictor import Predictor
from cxr.spec import RESULT_FIELDS, Prediction, Reason, result_json_schema
from tests.onnx_factory import make_fused_model, write_gray_pngs

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "result.schema.json"
SYNTHETIC = {
    "dataset": {"name": "tiny", "synthetic": True},
    "members": [{"pretrained": {"source": "random"}}],
}
runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fused_model(tmp_path_factory.mktemp("schema") / "m.onnx", card_extra=SYNTHETIC)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("images")
    write_gray_pngs(d, 2)
    (d / "broken.png").write_bytes(b"not a png")
    return d


def _validate(record: dict[str, Any]) -> None:
    jsonschema.validate(record, result_json_schema())
    assert list(record) == list(RESULT_FIELDS)
    assert any("SYNTHETIC" in w for w in record["warnings"])  # the model's warnings travel with each result


def test_published_schema_is_the_one_in_the_code() -> None:
    how = (
        "python -c 'import json, cxr.spec as s; print(json.dumps(s.result_json_schema(), indent=2))' "
        "> docs/result.schema.json"
    )
    assert json.loads(SCHEMA_FILE.read_text()) == result_json_schema(), f"regenerate it: {how}"
    jsonschema.Draft202012Validator.check_schema(result_json_schema())


def test_python_results_follow_the_schema_and_round_trip(model: Path, folder: Path) -> None:
    preds = Predictor.from_path(model).predict(sorted(folder.iterdir()))
    assert [p.ok for p in preds] == [False, True, True]  # broken.png sorts first
    for p in preds:
        _validate(p.to_dict())
        assert Prediction.from_dict(p.to_dict()) == p
    assert preds[1].model_id and preds[1].ood_score is None and preds[0].error


def test_cli_image_json_follows_the_schema(model: Path, folder: Path) -> None:
    res = runner.invoke(app, ["image", *map(str, sorted(folder.iterdir())), "-m", str(model), "--json"])
    assert res.exit_code == 1  # one file could not be read
    for record in json.loads(res.stdout)["predictions"]:
        _validate(record)


def test_scan_jsonl_follows_the_schema_and_csv_flattens_the_same_names(
    model: Path, folder: Path, tmp_path: Path
) -> None:
    for out in (tmp_path / "r.jsonl", tmp_path / "r.csv"):
        res = runner.invoke(app, ["scan", str(folder), "-m", str(model), "-o", str(out), "-q"])
        assert res.exit_code == 1, res.output
    for line in (tmp_path / "r.jsonl").read_text().splitlines():
        _validate(json.loads(line))
    with (tmp_path / "r.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert list(dict.fromkeys(h.split(".")[0] for h in header)) == list(RESULT_FIELDS)
    assert "probabilities.COVID" in header and "member_probabilities.alpha.COVID" in header
    jsonl = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    for row, record in zip(rows, jsonl, strict=True):
        assert row["source"] == record["source"] and row["label"] == (record["label"] or "")
        if record["label"]:
            assert float(row["probability"]) == record["probability"]
            assert (
                float(row["member_probabilities.beta.Normal"])
                == record["member_probabilities"]["beta"]["Normal"]
            )


def test_api_answer_is_the_result_schema_plus_its_own_fields(model: Path) -> None:
    from cxr.serve.schemas import API_ONLY_FIELDS, PredictionOut
    from tests.test_serve_app import app_client
    from tests.test_serve_support import png_bytes

    assert set(PredictionOut.model_fields) - set(API_ONLY_FIELDS) == set(RESULT_FIELDS)
    with app_client(model) as client:
        body = client.post("/v1/predict", content=png_bytes()).json()
    assert set(body) - set(RESULT_FIELDS) <= set(API_ONLY_FIELDS)
    _validate({k: body[k] for k in RESULT_FIELDS})


@pytest.mark.parametrize(
    "record",
    [
        {"source": "a.png", "label": "Normal", "probability": 1.5},
        {**Prediction("a", "COVID", 0.5, {"COVID": 0.5}).to_dict(), "confidence": 0.5},
    ],
    ids=["probability-above-1-and-missing-fields", "old-field-name"],
)
def test_schema_refuses_what_is_not_a_result(record: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(record, result_json_schema())


def test_from_dict_refuses_unknown_fields() -> None:
    from cxr.errors import DataError

    with pytest.raises(DataError, match="confidence"):
        Prediction.from_dict({**Prediction("a", None, None).to_dict(), "confidence": 0.1})
    assert Prediction.from_dict(
        Prediction("a", "COVID", 0.9, reasons=(Reason("x", "y"),), warnings=("w",)).to_dict()
    ).reasons == (Reason("x", "y"),)


def test_warnings_are_logged_when_the_model_opens_and_drawn_on_overlays(
    model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import numpy as np

    from cxr.runtime.overlay import render_overlay

    with caplog.at_level(logging.WARNING, logger="cxr"):
        predictor = Predictor.from_path(model)  # cxr serve and cxr listen open their model this way
    assert any("SYNTHETIC" in r.getMessage() for r in caplog.records)
    result = predictor.predict(np.full((40, 40), 90, dtype=np.uint8))
    plain = render_overlay(np.zeros((40, 40), np.uint8), Prediction("a.png", "COVID", 0.5))
    warned = render_overlay(np.zeros((40, 40), np.uint8), result)
    assert warned.height > plain.height  # the warning lines sit above the notice


def test_cli_says_the_warnings_before_the_first_result(model: Path, folder: Path) -> None:
    png = next(p for p in sorted(folder.iterdir()) if p.name != "broken.png")
    res = runner.invoke(app, ["image", str(png), "-m", str(model)])
    assert res.exit_code == 0
    assert 0 <= res.output.index("SYNTHETIC") < res.output.index(str(png))
