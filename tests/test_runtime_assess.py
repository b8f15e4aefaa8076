"""The input gate in results: DICOM header reasons (member disagreement is not one), through the runtime, a scan and
the API."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom")

from cxr.runtime.assess import header_reasons  # noqa: E402
from cxr.runtime.predictor import Predictor  # noqa: E402
from tests.onnx_factory import make_fused_model, write_gray_pngs  # noqa: E402
from tests.test_imaging_dicom import make_dicom  # noqa: E402


def chest(**attrs: str) -> bytes:
    ramp = np.linspace(0, 255, 48 * 48).reshape(48, 48).astype(np.uint8)
    return make_dicom(ramp, **attrs)


@pytest.mark.parametrize(
    ("attrs", "code"),
    [
        ({"ViewPosition": "LL"}, "dicom_view_position"),
        ({"Modality": "CT"}, "dicom_modality"),
        ({"BodyPartExamined": "KNEE"}, "dicom_body_part"),
    ],
)
def test_header_reasons_for_files_and_bytes(tmp_path: Path, attrs: dict[str, str], code: str) -> None:
    data = chest(**attrs)
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    assert [r.code for r in header_reasons(data)] == [code]
    assert [r.code for r in header_reasons(path)] == [code]
    assert header_reasons(chest(ViewPosition="PA", BodyPartExamined="CHEST")) == ()
    assert header_reasons(write_gray_pngs(tmp_path / "png", 1)[0]) == ()
    assert header_reasons(np.zeros((4, 4), np.uint8)) == ()


def test_results_carry_the_gate_and_a_scan_counts_it(tmp_path: Path) -> None:
    from cxr.runtime.scan import ScanConfig, scan_folder

    folder = tmp_path / "in"
    write_gray_pngs(folder, 3)
    (folder / "lateral.dcm").write_bytes(chest(ViewPosition="LL"))
    model = make_fused_model(tmp_path / "m.onnx", members=("a", "b", "c"))
    predictor = Predictor.from_path(model)
    preds = {Path(p.source).name: p for p in predictor.predict(sorted(folder.iterdir()))}
    lateral = preds["lateral.dcm"]
    assert lateral.ok and lateral.probabilities and lateral.assessable is False  # still predicted, marked
    assert "dicom_view_position" in [r.code for r in lateral.reasons]
    split = [p for p in preds.values() if p.member_probabilities and len({max(mp, key=mp.__getitem__) for mp in
             p.member_probabilities.values()}) > 1]  # fmt: skip
    assert all(p.assessable for p in split if p.source.endswith(".png"))  # disagreement alone never refuses
    out = tmp_path / "rows.csv"
    res = scan_folder(predictor, ScanConfig(folder=folder, output=out))
    assert res.exit_code == 0 and res.predicted == 4  # exit codes stay as they are
    rows = {Path(r["source"]).name: r for r in csv.DictReader(out.open())}
    assert (
        rows["lateral.dcm"]["assessable"] == "false"
        and "dicom_view_position" in rows["lateral.dcm"]["reasons"]
    )
    assert res.not_assessable_files == sum(r["assessable"] == "false" for r in rows.values())
    assert res.not_assessable["dicom_view_position"] == 1


def test_api_answer_carries_the_gate(fused_model: Path) -> None:
    from tests.test_serve_app import app_client

    with app_client(fused_model) as client:
        r = client.post("/v1/predict", content=chest(ViewPosition="LATERAL"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["assessable"] is False
        assert "dicom_view_position" in [x["code"] for x in body["reasons"]]
        assert "probabilities" in body and body["notice"]


def test_a_prediction_survives_its_json_round_trip(tmp_path: Path) -> None:
    import json

    from cxr.runtime.ray.pipeline import prediction_from_json

    (tmp_path / "lateral.dcm").write_bytes(chest(ViewPosition="LL"))
    pred = Predictor.from_path(make_fused_model(tmp_path / "m.onnx")).predict([tmp_path / "lateral.dcm"])[0]
    assert pred.reasons  # the Ray path ships predictions as JSON: reasons must come back as Reason objects
    assert prediction_from_json(json.dumps(pred.to_dict())) == pred


def test_ray_rows_count_not_assessable_files_like_a_local_scan() -> None:
    from cxr.runtime.ray.pipeline import OrderedRows
    from cxr.spec import Prediction, Reason

    class Sink:
        def write(self, preds: object) -> None:
            pass

    rows = OrderedRows(Sink())  # type: ignore[arg-type]
    ok = Prediction("a.png", "COVID", 0.9, {"COVID": 0.9}, assessable=True)
    odd = Prediction("b.png", "Normal", 0.8, {"Normal": 0.8}, assessable=False,
                     reasons=(Reason("out_of_distribution", "x"), Reason("narrow_grey_range", "y")))  # fmt: skip
    bad = Prediction("c.png", None, None, error="unreadable")
    for i, p in enumerate((ok, odd, bad)):
        rows.add(i, p)
    rows.flush()
    assert rows.tally.not_assessable_files == 1
    assert dict(rows.tally.not_assessable) == {"out_of_distribution": 1, "narrow_grey_range": 1}
    assert rows.tally.failed == 1 and rows.tally.predicted == 2
