"""Bounded load test of `cxr serve` on loopback: throughput and latency with and without dynamic batching,
plus an overload run that must answer 503 + Retry-After and nothing else. Stops by itself.

Takes: a cxr ONNX model (default: a small synthetic CNN with cxr metadata, built here with onnx), a request
count and a number of concurrent clients. Makes: one row per scenario (p50/p90/p99 latency, requests/s,
status counts, failures, mean batch size from /metrics, server RSS before/after, ready afterwards), printed as
a table and written once as JSON with --out.

    .venv/bin/python benchmarks/bench_serve.py --requests 2000 --clients 32 --out runs/bench_serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Scenario:
    name: str
    server_args: tuple[str, ...]
    requests: int
    clients: int
    allowed: frozenset[int] = frozenset({200})
    """Statuses that are not failures (the overload scenario also allows 503)."""


@dataclass
class Row:
    scenario: str
    requests: int
    clients: int
    seconds: float
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    statuses: dict[str, int]
    failures: int
    retry_after_on_503: bool
    mean_batch_size: float
    server_cpu_ms_per_request: float
    """CPU time the server process spent per request: robust to other load on a shared machine."""
    rss_start_mib: float
    rss_end_mib: float
    ready_after: bool
    notes: list[str] = field(default_factory=list)


# ---- the synthetic model ---------------------------------------------------------------------------------


def make_cnn_model(path: Path, size: int = 128, width: int = 32, head: int = 8192, seed: int = 0) -> Path:
    """A small fused-style CNN with a VGG-style wide fully connected head, with cxr metadata.

    uint8 [N,1,S,S] -> 3 stride-2 convs -> 2x2 average pool -> flatten (width*2 * (S/16)^2 features)
    -> FC ``head`` -> ReLU -> FC 4 -> softmax: ``probabilities`` [N,4], ``member_probabilities`` [N,1,4].
    Like VGG19's classifier, the FC weights (128 MiB at the defaults) are streamed from memory once per call,
    so batch-1 inference is memory-bound and a batch of 8 costs little more than a batch of 1.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from cxr.labels import CLASSES
    from cxr.spec import ModelMetadata, PreprocessSpec

    if size % 16:
        raise ValueError(f"size must be a multiple of 16, got {size}")
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    chans = [1, width // 2, width, width * 2]
    feats = chans[-1] * (size // 16) ** 2
    inits = [
        numpy_helper.from_array(np.array(255.0, np.float32), "c255"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(
            (rng.standard_normal((feats, head)) * np.sqrt(2 / feats)).astype(np.float32), "fc1"
        ),
        numpy_helper.from_array(
            (rng.standard_normal((head, k)) * np.sqrt(1 / head)).astype(np.float32), "fc2"
        ),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["x0"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x0", "c255"], ["h0"]),
    ]
    for i in range(3):
        w = (rng.standard_normal((chans[i + 1], chans[i], 3, 3)) * np.sqrt(2 / (9 * chans[i]))).astype(
            np.float32
        )
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("Conv", [f"h{i}", f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[2, 2]),
            helper.make_node("Relu", [f"c{i}"], [f"h{i + 1}"]),
        ]
    nodes += [
        helper.make_node("AveragePool", ["h3"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pooled"], ["feat"]),
        helper.make_node("MatMul", ["feat", "fc1"], ["z1"]),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "fc2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("Unsqueeze", ["probabilities", "axis1"], ["member_probabilities"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bench_cnn",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 1, size, size])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("member_probabilities", TensorProto.FLOAT, ["batch", 1, k]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="cxr-bench")
    model.ir_version = 8
    meta = ModelMetadata(
        classes=CLASSES,
        preprocess=PreprocessSpec.square(size),
        input_format="uint8_gray",
        card={"kind": "ensemble", "member_order": ["cnn"], "version": "bench"},
    )
    for key, value in meta.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# ---- the server ------------------------------------------------------------------------------------------


class Server:
    """`python -m cxr.serve` on 127.0.0.1 with a free port; always stopped by ``close``."""

    def __init__(self, model: Path, args: Sequence[str], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        port_file = workdir / "port"
        port_file.unlink(missing_ok=True)
        self.log_path = workdir / "server.log"
        cmd = [sys.executable, "-m", "cxr.serve", "--model", str(model), "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--port-file", str(port_file), "--no-access-log", *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
        env["PYTHONPATH"] = str(REPO)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        try:
            while not port_file.is_file():
                self._check_alive(deadline)
            self.url = f"http://127.0.0.1:{int(port_file.read_text())}"
            while True:
                self._check_alive(deadline)
                try:
                    if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
        except BaseException:
            self.close()
            raise

    def _check_alive(self, deadline: float) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-2000:]}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready in time:\n{self.log_path.read_text()[-2000:]}")
        time.sleep(0.1)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ---- the load ----------------------------------------------------------------------------------------------


def sample_images(n: int, size: int = 256, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for _ in range(n):
        a, b = rng.uniform(-1, 1, 2)
        img = np.clip(128 + 80 * (a * xx + b * yy) + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


async def _load(
    url: str, images: list[bytes], requests: int, clients: int, deadline_s: float
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    retry_after_ok = True
    next_index = 0
    stop_at = time.monotonic() + deadline_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal next_index, retry_after_ok
            while next_index < requests and time.monotonic() < stop_at:
                i = next_index
                next_index += 1
                t0 = time.perf_counter()
                try:
                    resp = await client.post(
                        "/v1/predict", content=images[i % len(images)], headers={"content-type": "image/png"}
                    )
                    status = str(resp.status_code)
                    if resp.status_code == 503 and not resp.headers.get("retry-after"):
                        retry_after_ok = False
                except httpx.HTTPError as e:
                    status = type(e).__name__
                latencies.append(time.perf_counter() - t0)
                statuses[status] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - t0
    return {
        "latencies": latencies,
        "statuses": dict(statuses),
        "seconds": seconds,
        "retry_after": retry_after_ok,
    }


def _mean_batch(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith(("cxr_batch_size_sum", "cxr_batch_size_count")):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    count = values.get("cxr_batch_size_count", 0.0)
    return values.get("cxr_batch_size_sum", 0.0) / count if count else 0.0


def run_scenario(
    model: Path, scenario: Scenario, workdir: Path, warmup: int = 100, deadline_s: float = 300
) -> Row:
    """Start a server, warm it up, run the load, read /metrics and RSS, stop the server; one row."""
    images = sample_images(32)
    server = Server(model, scenario.server_args, workdir / scenario.name)
    try:
        asyncio.run(_load(server.url, images, warmup, min(scenario.clients, 8), deadline_s))
        rss_start, cpu_start = server.rss_mib(), server.cpu_seconds()
        result = asyncio.run(_load(server.url, images, scenario.requests, scenario.clients, deadline_s))
        rss_end, cpu_end = server.rss_mib(), server.cpu_seconds()
        ready = httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
        mean_batch = _mean_batch(server.url)
    finally:
        server.close()
    lat_ms = np.asarray(result["latencies"]) * 1000
    statuses = result["statuses"]
    failures = sum(n for s, n in statuses.items() if not (s.isdigit() and int(s) in scenario.allowed))
    done = sum(statuses.values())
    return Row(
        scenario=scenario.name,
        requests=done,
        clients=scenario.clients,
        seconds=round(result["seconds"], 3),
        throughput_rps=round(statuses.get("200", 0) / result["seconds"], 1),
        p50_ms=round(float(np.percentile(lat_ms, 50)), 2),
        p90_ms=round(float(np.percentile(lat_ms, 90)), 2),
        p99_ms=round(float(np.percentile(lat_ms, 99)), 2),
        statuses=statuses,
        failures=failures,
        retry_after_on_503=result["retry_after"],
        mean_batch_size=round(mean_batch, 2),
        server_cpu_ms_per_request=round((cpu_end - cpu_start) * 1000 / max(done, 1), 2),
        rss_start_mib=round(rss_start, 1),
        rss_end_mib=round(rss_end, 1),
        ready_after=ready,
        notes=[] if done == scenario.requests else [f"stopped by the deadline after {done} requests"],
    )


def scenarios(requests: int, clients: int, threads: int, max_batch: int, wait_ms: float) -> list[Scenario]:
    common = (f"--threads={threads}", "--max-concurrency=64", "--max-queue=256")
    return [
        Scenario("no_batching", (*common, "--max-batch-size=1"), requests, clients),
        Scenario(
            f"dynamic_batching_b{max_batch}_w{wait_ms:g}ms",
            (*common, f"--max-batch-size={max_batch}", f"--max-wait-ms={wait_ms}"),
            requests,
            clients,
        ),
        Scenario(
            "overload_c4_q4",
            (f"--threads={threads}", "--max-concurrency=4", "--max-queue=4", f"--max-batch-size={max_batch}"),
            max(200, requests // 2),
            max(48, clients),
            allowed=frozenset({200, 503}),
        ),
    ]


def table(rows: Sequence[Row]) -> str:
    head = (
        "| scenario | requests | clients | req/s | p50 ms | p90 ms | p99 ms | mean batch | server CPU ms/req "
        "| statuses | failures | RSS MiB start→end | ready after |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.requests} | {r.clients} | {r.throughput_rps} | {r.p50_ms} | {r.p90_ms} | "
            f"{r.p99_ms} | {r.mean_batch_size} | {r.server_cpu_ms_per_request} | {r.statuses} | {r.failures} | {r.rss_start_mib}→{r.rss_end_mib} | "
            f"{r.ready_after} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="cxr ONNX model (default: a synthetic CNN built here)")
    p.add_argument("--size", type=int, default=128, help="input size of the synthetic CNN")
    p.add_argument("--head", type=int, default=8192, help="width of the synthetic CNN's FC head")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads in the server")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=1, help="run the scenarios this many times, interleaved")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cxr-bench-serve-") as tmp:
        model = args.model or make_cnn_model(Path(tmp) / "bench_cnn.onnx", size=args.size, head=args.head)
        plan = scenarios(args.requests, args.clients, args.threads, args.max_batch_size, args.max_wait_ms)
        rows = [run_scenario(model, s, Path(tmp)) for _ in range(max(1, args.repeat)) for s in plan]
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": str(args.model or f"synthetic CNN {args.size}px"),
            "rows": [asdict(r) for r in rows],
        }
        args.out.write_text(json.dumps(payload, indent=2))
    return 0 if all(r.failures == 0 and r.ready_after for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
