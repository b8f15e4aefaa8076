"""`cxr listen` end to end: dcmtk's storescu/echoscu as the modality, Orthanc as the PACS, all on loopback.

Each fault counts what was lost (a chest instance without its SR or SC in the PACS) and what was duplicated
(more results in a study than instances sent): both must be 0. The real files of ../shared/data/dicom are
used where present (``CXR_SHARED_DATA`` overrides the location); tiny constructed DX files always run.
Skips only when Orthanc or dcmtk is not installed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import SHARED_DATA
from tests.dicom_harness import (
    PLUGINS,
    ListenProcess,
    Orthanc,
    chest_dx,
    echoscu,
    free_port,
    missing_tools,
    spool_counts,
    storescu,
    wait_for,
)

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")
pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"not installed: {', '.join(missing_tools())}")

DICOM_DIR = Path(os.environ.get("CXR_SHARED_DATA") or SHARED_DATA) / "dicom"
DENTAL = "fodicom_CR-ModalitySequenceLUT_dental.dcm"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def real_files() -> list[Path]:
    """The real files, one per SOP Instance UID: txv_Fake_MONOCHROME1_header_edit.dcm is a header edit of
    the siim file that kept its UID, so to DICOM (and to the node: a resend) it is the same instance."""
    by_uid: dict[str, Path] = {}
    for path in sorted(DICOM_DIR.glob("*.dcm")) if DICOM_DIR.is_dir() else []:
        by_uid.setdefault(sop_uid(path)[0], path)
    return sorted(by_uid.values())


def sop_uid(path: Path) -> tuple[str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)


def tally(orthanc: Orthanc, sources: list[Path], spool: Path) -> dict[str, Any]:
    """lost: sources without their SR and SC (the UIDs in the spool's record) in their study;
    duplicated: results in the PACS beyond one SR and one SC per source."""
    found = orthanc.instances()
    by_uid = {i["SOPInstanceUID"]: i for i in found}
    wanted = dict(sop_uid(p) for p in sources)
    lost, pairs = [], {}
    for uid, study in wanted.items():
        rec_path = spool / "sent" / uid / "record.json"
        rec = json.loads(rec_path.read_text()) if rec_path.exists() else {}
        sr, sc = (
            by_uid.get(rec.get("sr_sop_instance_uid", "?")),
            by_uid.get(rec.get("sc_sop_instance_uid", "?")),
        )
        if sr is None or sc is None or sr["StudyInstanceUID"] != study or sc["StudyInstanceUID"] != study:
            lost.append(uid)
        else:
            pairs[uid] = (sr, sc, rec)
    results = [i for i in found if i["SOPInstanceUID"] not in wanted]
    per_study = Counter(i["StudyInstanceUID"] for i in results)
    expected = Counter(study for study in wanted.values())
    duplicated = sum(max(0, n - 2 * expected[s]) for s, n in per_study.items())
    return {"lost": lost, "duplicated": duplicated, "pairs": pairs, "results": len(results)}


def sr_content(data: bytes) -> Any:
    """What the SR that reached the PACS says (``cxr.dicom.read_sr``)."""
    import pydicom

    from cxr.dicom import read_sr

    return read_sr(pydicom.dcmread(io.BytesIO(data)))


@pytest.fixture()
def dx_files(tmp_path: Path) -> list[Path]:
    return [chest_dx(tmp_path / "dx" / f"dx{i}.dcm", seed=i) for i in range(2)]


@pytest.fixture()
def pacs(tmp_path: Path) -> Any:
    node_port = free_port()
    server = Orthanc(tmp_path / "orthanc", node_port).start()
    yield server, node_port
    server.stop()


def in_process_node(model: Path, spool: Path, forward: Any, **kw: Any) -> Any:
    from cxr.dicom.forward import Backoff
    from cxr.dicom.node import DicomNode, NodeConfig
    from cxr.runtime import Predictor, PredictorConfig

    cfg = NodeConfig(model=model, forward=forward, spool=spool, port=0, backoff=Backoff(0.2, 1.0, 30.0), **kw)
    return DicomNode(cfg, predictor=Predictor.from_path(model, PredictorConfig(batch_size=1))).start()


# ---------------------------------------------------------------------------------------- the full path
@pytest.mark.slow
def test_each_chest_image_gets_one_sr_and_one_sc_in_its_study(
    pacs: Any, fused_model: Path, dx_files: list[Path], tmp_path: Path
) -> None:
    import pydicom

    from cxr.runtime import Predictor
    from cxr.session import file_sha256

    orthanc, node_port = pacs
    files = [*real_files(), *dx_files]
    node = ListenProcess(fused_model, tmp_path / "spool", orthanc.destination, port=node_port).start()
    try:
        assert echoscu(node.port).returncode == 0
        storescu(orthanc.dicom_port, files, called=orthanc.aet)  # the modality also files the images
        runs = storescu(node.port, files)
        assert all(r.returncode == 0 for r in runs), [r.stdout + r.stderr for r in runs]
        wait_for(lambda: spool_counts(tmp_path / "spool")["sent"] == len(files), 90, "every result sent")
    finally:
        code = node.stop()
    assert code == 0
    got = tally(orthanc, files, tmp_path / "spool")
    assert got["lost"] == [] and got["duplicated"] == 0, got
    assert spool_counts(tmp_path / "spool") == {
        "received": 0,
        "predicted": 0,
        "sent": len(files),
        "failed": 0,
    }
    predictor = Predictor.from_path(fused_model)
    sha = file_sha256(fused_model)
    for path, pred in zip(files, predictor.predict(files), strict=True):
        sr, sc, rec = got["pairs"][sop_uid(path)[0]]
        assert rec["prediction"]["probabilities"] == pytest.approx(pred.probabilities, abs=1e-6)
        assert rec["prediction"]["assessable"] == pred.assessable
        said = sr_content(orthanc.file(sr["_id"]))  # the SR in the PACS says what cxr-predict says
        assert (said.label, said.assessable, said.model_sha256) == (pred.label, pred.assessable, sha), (
            path.name
        )
        assert [r.code for r in said.reasons] == [r.code for r in pred.reasons], path.name
        assert said.probabilities == pytest.approx(pred.probabilities, abs=1e-6), path.name
        study = orthanc.get(f"/studies/{sr['_study']}")
        assert len(study["Series"]) >= 3, path.name  # the image's series, the SR's, the SC's
        tags = orthanc.get(f"/instances/{sc['_id']}/tags?simplify")
        assert tags["SOPClassUID"] == SC_CLASS and tags["SamplesPerPixel"] == "3"
        if path.name == DENTAL:  # decoded (JPEG Lossless, gdcm), then refused by the gate: not a chest
            assert rec["result"].startswith("not_assessable:") and "dicom_description" in rec["result"]
        else:
            assert "dicom_" not in rec["result"], path.name  # the header gate passes a chest radiograph
    log = node.log.read_text()
    audit = [ln for ln in log.splitlines() if "cxr.audit" in ln and "event=sent" in ln]
    assert len(audit) == len(files) and all(f"model_sha256={sha}" in ln for ln in audit)
    for path in files:  # the node's whole log never names the patient
        name = str(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("PatientName", ""))
        assert len(name) < 3 or name not in log, path.name


# ---------------------------------------------------------------------------------------- faults
@pytest.mark.slow
def test_pacs_down_while_images_arrive_then_back(pacs: Any, fused_model: Path, tmp_path: Path) -> None:
    orthanc, node_port = pacs
    spool = tmp_path / "spool"
    files = [chest_dx(tmp_path / "dx" / f"d{i}.dcm", seed=100 + i) for i in range(8)]
    before, during = files[:3], files[3:]
    node = ListenProcess(fused_model, spool, orthanc.destination, port=node_port).start()
    try:
        assert all(r.returncode == 0 for r in storescu(node.port, before))
        wait_for(lambda: spool_counts(spool)["sent"] == len(before), 60, "the first images' results sent")
        orthanc.stop()  # the PACS goes down; the modality goes on sending
        assert all(r.returncode == 0 for r in storescu(node.port, during))
        wait_for(lambda: spool_counts(spool)["predicted"] == len(during), 60, "the rest predicted")
        time.sleep(1.5)  # a few failed tries against the stopped PACS
        assert spool_counts(spool)["sent"] == len(before)
        orthanc.start()
        wait_for(lambda: spool_counts(spool)["sent"] == len(files), 60, "all sent after the PACS is back")
    finally:
        node.stop()
    got = tally(orthanc, files, spool)
    assert (len(got["lost"]), got["duplicated"]) == (0, 0), got
    assert "retry" in node.log.read_text() and spool_counts(spool)["failed"] == 0
    print(f"PACS down for {len(during)} of {len(files)} instances: lost 0, duplicated 0")


@pytest.mark.slow
def test_node_killed_mid_stream_and_restarted_loses_and_duplicates_nothing(
    pacs: Any, fused_model: Path, tmp_path: Path
) -> None:
    orthanc, node_port = pacs
    spool = tmp_path / "spool"
    files = [chest_dx(tmp_path / "dx" / f"k{i}.dcm", seed=200 + i, size=512) for i in range(16)]
    node = ListenProcess(fused_model, spool, orthanc.destination, port=node_port).start()
    sender = storescu(node.port, files, background=True)
    wait_for(lambda: spool_counts(spool)["sent"] >= 2, 60, "the first results sent")
    node.kill()  # SIGKILL: no cleanup at all
    sender.wait(60)
    at_kill = spool_counts(spool)
    assert at_kill["sent"] < len(files), at_kill  # it really was mid-stream
    node = ListenProcess(fused_model, spool, orthanc.destination, port=node_port).start()
    try:
        assert all(r.returncode == 0 for r in storescu(node.port, files))  # the modality sends them all again
        wait_for(lambda: spool_counts(spool)["sent"] == len(files), 90, "every result sent after restart")
    finally:
        node.stop()
    got = tally(orthanc, files, spool)
    assert (len(got["lost"]), got["duplicated"]) == (0, 0), (got, at_kill)
    assert spool_counts(spool)["failed"] == 0
    if at_kill["received"] + at_kill["predicted"]:  # what the killed node held was replayed on start
        assert "spool replay" in node.log.read_text()
    print(f"at SIGKILL: {at_kill}; lost 0, duplicated 0 of {len(files)}")


def test_calling_ae_outside_the_allow_list_is_rejected(
    fused_model: Path, dx_files: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cxr.dicom.forward import parse_destination

    caplog.set_level(logging.INFO, logger="cxr.audit")
    dest = parse_destination(f"PACS@127.0.0.1:{free_port()}")
    node = in_process_node(fused_model, tmp_path / "spool", dest, allow_ae=("MOD",))
    try:
        assert echoscu(node.port, calling="INTRUDER").returncode != 0
        runs = storescu(node.port, dx_files, calling="INTRUDER")
        assert all(r.returncode != 0 or "Rejected" in r.stdout + r.stderr for r in runs)
        assert echoscu(node.port, calling="MOD").returncode == 0  # the allowed one still gets in
    finally:
        node.stop()
    assert spool_counts(tmp_path / "spool") == {"received": 0, "predicted": 0, "sent": 0, "failed": 0}
    audit = [r.getMessage() for r in caplog.records if r.name == "cxr.audit"]
    assert any("event=rejected" in a and "calling_ae=INTRUDER" in a for a in audit), audit


def _send_raw(port: int, path: Path, sop_class: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """C-STORE a file's bytes as they are (pynetdicom's chunked sending does not decode the dataset)."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE, _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)

    ae = AE(ae_title="MOD")
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def _with_body(path: Path, src: Path, body: bytes) -> Path:
    """``src``'s preamble and file meta followed by ``body`` as the dataset."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = pydicom.dcmread(src, stop_before_pixels=True).file_meta
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + buf.getvalue() + body)
    return path


def test_truncated_and_garbage_instances_get_failure_statuses_and_the_node_lives(
    fused_model: Path, dx_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pydicom

    from cxr.dicom.forward import parse_destination

    good = dx_files[0]
    ds = pydicom.dcmread(good)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # the header still says 64 x 64
    truncated = tmp_path / "truncated.dcm"
    ds.save_as(truncated, enforce_file_format=True)
    garbage = _with_body(tmp_path / "garbage.dcm", good, os.urandom(4096))
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # the file itself cut short
    dest = parse_destination(f"PACS@127.0.0.1:{free_port()}")  # nobody there: results stay in predicted/
    big = chest_dx(tmp_path / "big.dcm", seed=9, size=256)  # 64 KiB of pixels, over the limit below
    node = in_process_node(fused_model, tmp_path / "spool", dest, max_instance_bytes=32_768)
    try:
        dx = "1.2.840.10008.5.1.4.1.1.1.1"
        assert _send_raw(node.port, big, dx, monkeypatch) == 0xA700
        assert _send_raw(node.port, truncated, dx, monkeypatch) == 0xA900
        assert _send_raw(node.port, garbage, dx, monkeypatch) == 0xC000
        assert _send_raw(node.port, cut, dx, monkeypatch) == 0xA900  # its pixel data ends early
        assert echoscu(node.port).returncode == 0  # alive
        assert all(r.returncode == 0 for r in storescu(node.port, dx_files))  # and still working
        wait_for(lambda: spool_counts(tmp_path / "spool")["predicted"] == len(dx_files), 30, "predicted")
        own_sc = next((tmp_path / "spool" / "predicted").glob("*/sc.dcm"))  # our SC sent back: a routing loop
        assert all(r.returncode == 0 for r in storescu(node.port, [own_sc]))  # acknowledged, not predicted
    finally:
        node.stop()
    counts = spool_counts(tmp_path / "spool")
    assert counts == {"received": 0, "predicted": len(dx_files), "sent": 0, "failed": 0}


@pytest.mark.skipif(not (PLUGINS / "libOrthancDicomWeb.so").exists(), reason="orthanc-dicomweb not installed")
def test_stow_rs_forwarding(pacs: Any, fused_model: Path, dx_files: list[Path], tmp_path: Path) -> None:
    from cxr.dicom.forward import Destination

    orthanc, _ = pacs
    node = in_process_node(fused_model, tmp_path / "spool", Destination.stow(orthanc.dicomweb))
    try:
        assert all(r.returncode == 0 for r in storescu(node.port, dx_files))
        wait_for(lambda: spool_counts(tmp_path / "spool")["sent"] == len(dx_files), 30, "sent by STOW-RS")
    finally:
        node.stop()
    got = tally(orthanc, dx_files, tmp_path / "spool")
    assert (len(got["lost"]), got["duplicated"], got["results"]) == (0, 0, 2 * len(dx_files))


# ---------------------------------------------------------------------------------------- the parts
@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("ORTHANC@127.0.0.1:4242", ("ORTHANC", "127.0.0.1", 4242)),
        ("PACS@pacs.example.org:104", ("PACS", "pacs.example.org", 104)),
        ("P@[::1]:11112", ("P", "::1", 11112)),
        ("127.0.0.1:4242", None),
        ("PACS@host", None),
        ("PACS@host:0", None),
        ("PACS@host:70000", None),
        ("WAY_TOO_LONG_AE_TITLE@h:1", None),
    ],
)
def test_parse_destination(text: str, ok: tuple[str, str, int] | None) -> None:
    from cxr.dicom.forward import parse_destination
    from cxr.errors import ConfigError

    if ok is None:
        with pytest.raises(ConfigError, match="AET@HOST:PORT"):
            parse_destination(text)
    else:
        d = parse_destination(text)
        assert (d.ae_title, d.host, d.port) == ok


def test_backoff_doubles_up_to_its_cap() -> None:
    from cxr.dicom.forward import Backoff

    gen = Backoff(0.5, 3.0).delays()
    assert [next(gen) for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_spool_steps_are_idempotent_and_replayable(tmp_path: Path) -> None:
    from cxr.dicom.spool import Spool
    from cxr.errors import ConfigError

    spool = Spool(tmp_path / "s").open()
    with pytest.raises(ConfigError, match="in use"):
        Spool(tmp_path / "s").open()  # one node per spool
    assert spool.receive("1.2.3", b"first", {"calling_ae": "MOD"}) is None
    assert spool.receive("1.2.3", b"again", {"calling_ae": "MOD"}) == "received"  # resend: same file
    assert spool.source("1.2.3").read_bytes() == b"again"
    assert spool.receive("1.2.4", b"x", {}) is None
    with pytest.raises(ValueError, match="not a UID"):
        spool.receive("../../etc/passwd", b"x", {})
    spool.mark_predicted("1.2.3", {"sr.dcm": b"sr", "sc.dcm": b"sc"}, {"result": "Normal"})
    assert spool.receive("1.2.3", b"third", {}) == "predicted"  # done already: not stored again
    spool.close()
    (tmp_path / "s" / "tmp" / "junk").write_bytes(b"half")  # what a crash leaves
    reopened = Spool(tmp_path / "s").open()
    assert reopened.pending() == (["1.2.4"], ["1.2.3"])
    assert not (tmp_path / "s" / "tmp" / "junk").exists()
    reopened.move("1.2.3", "sent", {"sent_to": "P@h:1"})
    assert reopened.record("sent", "1.2.3") == {"result": "Normal", "sent_to": "P@h:1"}
    assert reopened.pending() == (["1.2.4"], [])
    reopened.mark_failed_received("1.2.4", {"reason": "cannot decode"})
    assert (tmp_path / "s" / "failed" / "1.2.4" / "source.dcm").read_bytes() == b"x"
    assert reopened.pending() == ([], [])
    reopened.close()
    shutil.rmtree(tmp_path / "s")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CXR_ROLE": "listen"}, "listen port=11112 spool=/spool"),
        (
            {"CXR_ROLE": "listen", "CXR_DICOM_PORT": "104", "CXR_SPOOL": "/data/s"},
            "listen port=104 spool=/data/s",
        ),
        ({}, "serve port=8000 spool="),
    ],
)
def test_container_entrypoint_runs_the_node_with_cxr_role_listen(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    """docker/entrypoint.sh with a stand-in `cxr` that prints what it was started as."""
    import subprocess

    cxr = tmp_path / "venv" / "bin" / "cxr"
    cxr.parent.mkdir(parents=True)
    cxr.write_text('#!/bin/sh\necho "$1 port=$CXR_PORT spool=${CXR_SPOOL:-}"\n')
    cxr.chmod(0o755)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    base = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    run_env = {**base, "CXR_VENV": str(tmp_path / "venv"), "CXR_MODEL": str(model), **env}
    entry = Path(__file__).resolve().parents[1] / "docker" / "entrypoint.sh"
    proc = subprocess.run(["sh", str(entry)], env=run_env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "exactly one destination"),
        (["--forward", "P@h:1", "--forward-url", "http://x"], {}, "exactly one destination"),
        ([], {"CXR_FORWARD": "no-at-sign:4242"}, "is not AET@HOST:PORT"),  # read from the environment
        (["--forward-url", "ftp://pacs"], {}, "not an http(s) URL"),
        (["--forward", "P@h:1", "--ae-title", "A_TITLE_FAR_TOO_LONG"], {}, "1-16 characters"),
    ],
)
def test_listen_refuses_bad_configuration_with_a_message(
    fused_model: Path, tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    from typer.testing import CliRunner

    from cxr.cli.main import app

    argv = ["listen", "--model", str(fused_model), "--spool", str(tmp_path / "spool"), *args]
    result = CliRunner().invoke(app, argv, env=env)
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.slow
def test_a_heatmap_model_puts_its_map_into_the_secondary_capture(
    tmp_path: Path, dx_files: list[Path]
) -> None:
    """Given the plain model, the node runs the heatmap twin beside it and the SC shows the map in colour."""
    pytest.importorskip("torch")
    pytest.importorskip("skl2onnx")
    import pydicom

    from cxr.dicom.forward import parse_destination
    from cxr.dicom.node import DicomNode, NodeConfig
    from cxr.fuse import FuseConfig, fuse, run_members
    from tests.test_fuse import build_tiny_run

    run = build_tiny_run(tmp_path / "run", {"alpha": 32, "beta": 32})
    members, meta = run_members(run)
    fuse(members, meta, FuseConfig(run / "ensemble.onnx", heatmaps=True, bf16_check=False, report=False))
    dest = parse_destination(f"PACS@127.0.0.1:{free_port()}")  # nobody there: results stay in predicted/
    cfg = NodeConfig(model=run / "ensemble.onnx", forward=dest, spool=tmp_path / "spool", port=0)
    node = DicomNode(cfg).start()
    try:
        assert all(r.returncode == 0 for r in storescu(node.port, dx_files[:1]))
        wait_for(lambda: spool_counts(tmp_path / "spool")["predicted"] == 1, 60, "predicted")
    finally:
        node.stop()
    sc = pydicom.dcmread(next((tmp_path / "spool" / "predicted").glob("*/sc.dcm"))).pixel_array.astype(int)
    h, w = sc.shape[:2]
    middle = sc[h // 3 : 2 * h // 3, : int(w * 0.6)]  # inside the radiograph: no text, no colour bar
    coloured = (np.abs(middle[..., 0] - middle[..., 1]) + np.abs(middle[..., 1] - middle[..., 2])) > 30
    assert coloured.mean() > 0.05, coloured.mean()  # gray there without a map


@pytest.mark.parametrize(
    ("transient", "tries_at_least", "reason"),
    [(False, 1, "status 0xA900"), (True, 2, "gave up after")],
)
def test_results_the_pacs_keeps_refusing_end_in_failed_with_the_reason(
    fused_model: Path,
    dx_files: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    transient: bool,
    tries_at_least: int,
    reason: str,
) -> None:
    """A refusal a retry cannot cure goes to failed/ at once; a transient one when the budget is spent."""
    import cxr.dicom.worker as worker
    from cxr.dicom.forward import Backoff, ForwardError, parse_destination
    from cxr.dicom.node import DicomNode, NodeConfig
    from cxr.runtime import Predictor, PredictorConfig

    calls: list[int] = []

    def refuse(datasets: Any, dest: Any, **kw: Any) -> None:
        calls.append(len(datasets))
        raise ForwardError(f"{dest}: C-STORE of x failed with status 0xA900", transient=transient)

    monkeypatch.setattr(worker, "send", refuse)
    cfg = NodeConfig(
        model=fused_model,
        forward=parse_destination("PACS@127.0.0.1:9"),
        spool=tmp_path / "spool",
        port=0,
        backoff=Backoff(0.1, 0.2, 0.5),
    )
    node = DicomNode(cfg, predictor=Predictor.from_path(fused_model, PredictorConfig(batch_size=1))).start()
    try:
        assert all(r.returncode == 0 for r in storescu(node.port, dx_files[:1]))
        wait_for(lambda: spool_counts(tmp_path / "spool")["failed"] == 1, 30, "failed/")
    finally:
        node.stop()
    folder = next((tmp_path / "spool" / "failed").iterdir())
    record = json.loads((folder / "record.json").read_text())
    assert record["stage"] == "send" and reason in record["reason"] and record["tries"] >= tries_at_least
    assert (folder / "sr.dcm").exists() and (folder / "sc.dcm").exists()  # kept: nothing is lost
    assert len(calls) == record["tries"] and calls[0] == 2  # the SR and the SC together


class _SlowPredictor:
    """A stand-in model: a few milliseconds per instance, refusing the instances named in ``fail``."""

    def __init__(self, fail: set[str]) -> None:
        self.fail = fail

    def explain(self, data: bytes, name: str) -> Any:
        from dataclasses import replace

        from cxr.runtime.predictor import Explained
        from tests.dicom_factory import ASSESSABLE

        time.sleep(0.005)
        if any(uid in name for uid in self.fail):
            raise RuntimeError("the model crashed on this one")
        pred = replace(ASSESSABLE, source=name)
        return Explained(pred, np.full((32, 24), 90, dtype=np.uint8), np.ones((8, 8), dtype=np.float32))


@pytest.mark.parametrize("n", [1, 7])
def test_worker_commits_results_in_arrival_order_and_failures_to_failed(tmp_path: Path, n: int) -> None:
    """The model, results and send threads: each instance ends in predicted/ (the destination is down, so
    nothing is sent) or, when the model fails on it, in failed/ with the reason; none is lost or doubled."""
    from cxr.dicom.forward import Backoff, Destination
    from cxr.dicom.node import CxrResponder
    from cxr.dicom.spool import Spool
    from cxr.dicom.worker import Worker
    from tests.dicom_factory import MODEL, make_source

    uids = [f"1.2.826.0.1.3680043.8.498.{100 + i}" for i in range(n)]
    bad = {uids[-1]} if n > 1 else set()
    spool = Spool(tmp_path / "spool").open()
    respond = CxrResponder(MODEL)
    down = Destination("PACS", "127.0.0.1", free_port())  # nothing listens: sends are retried meanwhile
    worker = Worker(
        spool, _SlowPredictor(bad), respond, down, calling_ae="CXR", backoff=Backoff(5.0, 5.0, 600.0),
        model_sha256=MODEL.sha256,
    )  # fmt: skip
    worker.start()
    try:
        for uid in uids:
            spool.receive(uid, make_source(SOPInstanceUID=uid), {"calling_ae": "MOD"})
            worker.submit(uid)
        wait_for(lambda: len(spool.pending()[0]) == 0, 60, "every instance out of received/")
    finally:
        worker.stop(10.0)
        spool.close()
    done = {u: spool.state(u) for u in uids}
    assert done == {u: "failed" if u in bad else "predicted" for u in uids}
    records = [spool.record("predicted", u) for u in uids if u not in bad]
    assert [r["predicted_at"] for r in records] == sorted(r["predicted_at"] for r in records)
    assert all(r["inferred_at"] <= r["predicted_at"] for r in records)
    for u in bad:
        assert "the model crashed" in spool.record("failed", u)["reason"]


@pytest.mark.parametrize("broken", ["documents", "with_picture"])
def test_a_results_builder_failure_sends_the_instance_to_failed_and_leaves_no_staging(
    tmp_path: Path, broken: str
) -> None:
    """The SR side (this thread) or the SC side (the draw thread) raising: the instance ends in failed/ with the
    reason and its source, the staging folder is gone, and neither thread waits for the other forever."""
    from cxr.dicom.forward import Backoff, Destination
    from cxr.dicom.node import CxrResponder
    from cxr.dicom.spool import Spool
    from cxr.dicom.worker import Worker
    from tests.dicom_factory import MODEL, make_source

    class Broken:
        def __init__(self) -> None:
            self.inner = CxrResponder(MODEL)

        def documents(self, source: bytes, pred: Any) -> tuple[Any, Any]:
            if broken == "documents":
                raise ValueError("the SR builder broke")
            return self.inner.documents(source, pred)

        def with_picture(self, sc: Any, rgb: np.ndarray, name: str) -> Any:
            if broken == "with_picture":
                raise ValueError("the SC builder broke")
            return self.inner.with_picture(sc, rgb, name)

    uid = "1.2.826.0.1.3680043.8.498.777"
    spool = Spool(tmp_path / "spool").open()
    down = Destination("PACS", "127.0.0.1", free_port())
    worker = Worker(
        spool, _SlowPredictor(set()), Broken(), down, calling_ae="CXR", backoff=Backoff(5.0, 5.0, 600.0),
        model_sha256=MODEL.sha256,
    )  # fmt: skip
    worker.start()
    try:
        spool.receive(uid, make_source(SOPInstanceUID=uid), {"calling_ae": "MOD"})
        worker.submit(uid)
        wait_for(lambda: spool.state(uid) == "failed", 30, "the instance in failed/")
    finally:
        worker.stop(10.0)
        spool.close()
    record = spool.record("failed", uid)
    assert "builder broke" in record["reason"] and record["stage"] == "predict"
    assert (spool.folder("failed", uid) / "source.dcm").is_file()
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []
