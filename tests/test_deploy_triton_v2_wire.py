"""The client example with the REAL ``tritonclient.http`` against a minimal KServe-v2 HTTP endpoint.

tritonclient is optional (not a cxr dependency): this module is skipped without it. Where it is
installed, a small in-process server speaks the v2 protocol (binary tensor extension in requests, JSON
outputs), checks every request against the generated config.pbtxt like Triton does, and runs the model
from the repository's version folder with onnxruntime; the example's answers must equal cxr's Predictor.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator
from contextlib import redirect_stdout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from cxr.deploy.triton import TritonConfig, write_triton_repository
from cxr.runtime.predictor import Predictor
from tests.onnx_factory import write_gray_pngs
from tests.test_deploy_triton_client import client_mod  # noqa: F401  (fixture)
from tests.test_deploy_triton_pbtxt import one, parse_pbtxt

pytest.importorskip("tritonclient.http", reason="tritonclient is optional; pip install 'tritonclient[http]'")

WIRE = {"UINT8": np.uint8, "FP32": np.float32, "INT64": np.int64}


def make_handler(repo: Path, seen: list[tuple[str, list[int]]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes = b"") -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            m = re.fullmatch(r"/v2/models/([^/]+)(?:/versions/(\d+))?/ready", self.path)
            ready = m is not None and (repo / m[1] / (m[2] or "1") / "model.onnx").is_file()
            self._send(200 if ready else 400)

        def do_POST(self) -> None:  # noqa: N802
            m = re.fullmatch(r"/v2/models/([^/]+)(?:/versions/(\d+))?/infer", self.path)
            if m is None:
                return self._send(404)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            split = int(self.headers.get("Inference-Header-Content-Length", len(body)))
            req, blob = json.loads(body[:split]), body[split:]
            cfg = parse_pbtxt((repo / m[1] / "config.pbtxt").read_text())
            feeds, offset = {}, 0
            for inp in req["inputs"]:
                (spec,) = [c for c in cfg["input"] if one(c, "name") == inp["name"]]
                ok = "TYPE_" + inp["datatype"] == one(spec, "data_type") and inp["shape"][1:] == spec["dims"]
                if not ok or not 1 <= inp["shape"][0] <= one(cfg, "max_batch_size"):
                    return self._send(400, json.dumps({"error": f"{inp} does not fit {spec}"}).encode())
                n = inp["parameters"]["binary_data_size"]
                arr = np.frombuffer(blob[offset : offset + n], WIRE[inp["datatype"]]).reshape(inp["shape"])
                feeds[inp["name"]], offset = arr, offset + n
                seen.append((inp["datatype"], inp["shape"]))
            sess = ort.InferenceSession(
                str(repo / m[1] / (m[2] or "1") / "model.onnx"), providers=["CPUExecutionProvider"]
            )
            names = [o["name"] for o in req["outputs"]]
            outputs = []
            for name, arr in zip(names, sess.run(names, feeds), strict=True):
                (spec,) = [c for c in cfg["output"] if one(c, "name") == name]
                arr = arr.reshape(arr.shape[0], *spec["dims"])  # Triton reports the configured dims
                dtype = {"float32": "FP32", "int64": "INT64"}[str(arr.dtype)]
                outputs.append(
                    {"name": name, "datatype": dtype, "shape": list(arr.shape), "data": arr.ravel().tolist()}
                )
            self._send(200, json.dumps({"model_name": m[1], "outputs": outputs}).encode())

    return Handler


@pytest.fixture()
def v2_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[tuple[str, list[int]]]]]:
    repo, seen = tmp_path / "repo", []
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(repo, seen))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", repo, seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("variant", "wire"), [("fused", "UINT8"), ("member", "FP32")])
def test_real_tritonclient_round_trip(
    request: pytest.FixtureRequest,
    client_mod: Any,  # noqa: F811
    v2_server: tuple[str, Path, list[tuple[str, list[int]]]],
    tmp_path: Path,
    variant: str,
    wire: str,
) -> None:
    url, repo, seen = v2_server
    res = write_triton_repository(
        request.getfixturevalue(f"{variant}_model"), repo, TritonConfig(max_batch_size=4)
    )
    images = write_gray_pngs(tmp_path / "imgs", 6, size=70, seed=2)
    out = io.StringIO()
    with redirect_stdout(out):
        rc = client_mod.main(["--url", url, "--model-dir", str(res.model_dir), *map(str, images)])
    assert rc == 0
    assert [s[0] for s in seen] == [wire, wire] and [s[1][0] for s in seen] == [4, 2]
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    want = Predictor.from_path(res.model_path).predict(images)
    for row, p in zip(rows, want, strict=True):
        assert row["label"] == p.label
        np.testing.assert_allclose(
            list(row["probabilities"].values()), list(p.probabilities.values()), atol=1e-6
        )
