#!/usr/bin/env bash
# Run a repository written by `cxr export-triton` on a REAL Triton server and compare its answers with
# onnxruntime's (cxr's Predictor on the CPU), image by image.
#
# Needs: cxr importable by $PY, `pip install 'tritonclient[http]'`, and either `tritonserver` on PATH or
# Docker with $TRITON_IMAGE already pulled (plus the NVIDIA container runtime for GPU instances).
# Exit: 0 pass, 1 failure or mismatch, 77 skipped (no Triton or no tritonclient here: NOT a pass).
#
#   scripts/gpu_triton_check.sh                                   # a tiny synthetic fused model
#   MODEL=runs/demo/ensemble.onnx TENSORRT=1 TOL=2e-2 scripts/gpu_triton_check.sh
#
# Settings (environment): MODEL, IMAGES (a folder of images; default: synthetic PNGs), TENSORRT=0|1,
# TOL (max |p_triton - p_onnxruntime|, default 1e-4; use ~2e-2 with TensorRT FP16), PORT (default 18000),
# TRITON_IMAGE, READY_TIMEOUT (seconds, default 600: TensorRT builds engines while loading), PY, WORK.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
TRITON_IMAGE=${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.08-py3}
WORK=${WORK:-$(mktemp -d /tmp/cxr-triton-check.XXXXXX)}
MODEL=${MODEL:-}
IMAGES=${IMAGES:-}
TENSORRT=${TENSORRT:-0}
TOL=${TOL:-1e-4}
PORT=${PORT:-18000}
READY_TIMEOUT=${READY_TIMEOUT:-600}
NAME=cxr_check

skip() { echo "SKIPPED: $*" >&2; exit 77; }
fail() { echo "FAILED: $*" >&2; exit 1; }

"$PY" -c "import cxr" 2>/dev/null || fail "$PY cannot import cxr (install it: pip install -e .)"
"$PY" -c "import tritonclient.http" 2>/dev/null || skip "tritonclient is not installed (pip install 'tritonclient[http]')"
if command -v tritonserver >/dev/null 2>&1; then
  RUNNER=local
elif command -v docker >/dev/null 2>&1 && docker image inspect "$TRITON_IMAGE" >/dev/null 2>&1; then
  RUNNER=docker
else
  skip "no tritonserver on PATH and no Docker image $TRITON_IMAGE"
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  INSTANCES=(--gpu-instances 1 --cpu-instances 0)
  GPU_FLAGS=(--gpus all)
  nvidia-smi -L
else
  [[ "$TENSORRT" == 1 ]] && fail "TENSORRT=1 needs a GPU, and nvidia-smi sees none"
  echo "no GPU visible: checking CPU instances only" >&2
  INSTANCES=(--gpu-instances 0 --cpu-instances 1)
  GPU_FLAGS=()
fi
TRT_FLAGS=()
[[ "$TENSORRT" == 1 ]] && TRT_FLAGS=(--tensorrt)

echo "work folder: $WORK"
mkdir -p "$WORK"
if [[ -z "$MODEL" ]]; then
  MODEL="$WORK/tiny_fused.onnx"
  "$PY" -c "from pathlib import Path; from tests.onnx_factory import make_fused_model; make_fused_model(Path('$MODEL'))"
fi
if [[ -z "$IMAGES" ]]; then
  IMAGES="$WORK/images"
  "$PY" -c "from pathlib import Path; from tests.onnx_factory import write_gray_pngs; write_gray_pngs(Path('$IMAGES'), 6, size=300, seed=1)"
fi

# 1. the repository
rm -rf "$WORK/repo"
"$PY" -m cxr.cli.main export-triton --model "$MODEL" --output "$WORK/repo" --name "$NAME" --max-batch-size 4 \
  "${INSTANCES[@]}" "${TRT_FLAGS[@]}"

# 2. a real Triton server on it
LOG="$WORK/triton.log"
if [[ "$RUNNER" == local ]]; then
  tritonserver --model-repository="$WORK/repo" --http-port="$PORT" --grpc-port=$((PORT + 1)) \
    --metrics-port=$((PORT + 2)) >"$LOG" 2>&1 &
  SERVER_PID=$!
  cleanup() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
else
  CONTAINER="cxr-triton-check-$$"
  docker run -d --rm "${GPU_FLAGS[@]}" --name "$CONTAINER" -p "$PORT:8000" \
    -v "$(cd "$WORK/repo" && pwd):/models:ro" "$TRITON_IMAGE" tritonserver --model-repository=/models >/dev/null
  cleanup() { docker logs "$CONTAINER" >"$LOG" 2>&1 || true; docker stop "$CONTAINER" >/dev/null 2>&1 || true; }
fi
trap cleanup EXIT

"$PY" - "$PORT" "$NAME" "$READY_TIMEOUT" <<'EOF' || { cleanup; tail -n 40 "$LOG" >&2; fail "Triton did not make $NAME ready"; }
import sys, time, urllib.request
port, name, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://localhost:{port}/v2/models/{name}/ready", timeout=5) as r:
            if r.status == 200:
                print(f"Triton: model {name} ready")
                sys.exit(0)
    except OSError:
        pass
    time.sleep(2)
sys.exit(1)
EOF

# 3. the loaded config, the client example, and onnxruntime: the same answers
"$PY" - "$PORT" "$WORK/repo/$NAME" "$IMAGES" "$TOL" <<'EOF' || fail "Triton's answers differ from onnxruntime's"
import json, subprocess, sys
from pathlib import Path
import numpy as np
import tritonclient.http as httpclient
from cxr.runtime.predictor import Predictor, PredictorConfig
from cxr.session import SessionConfig

port, model_dir, images, tol = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
info = json.loads((model_dir / "cxr.json").read_text())
client = httpclient.InferenceServerClient(url=f"localhost:{port}")
loaded = client.get_model_config(model_dir.name)
print("Triton loaded config:", json.dumps(loaded)[:400], "...")
assert int(loaded.get("max_batch_size", 0)) == info["max_batch_size"], "max_batch_size differs"
for kind in ("inputs", "outputs"):
    got = [(t["name"], t["data_type"]) for t in loaded["input" if kind == "inputs" else "output"]]
    want = [(t["name"], t["data_type"]) for t in info["signature"][kind]]
    assert got == want, f"{kind}: Triton has {got}, cxr.json says {want}"
files = sorted(p for p in images.iterdir() if p.is_file())
out = subprocess.run(
    [sys.executable, "examples/triton_client.py", "--url", f"localhost:{port}", "--model-dir", str(model_dir),
     *map(str, files)], check=True, capture_output=True, text=True).stdout
rows = [json.loads(line) for line in out.splitlines()]
pred = Predictor.from_path(model_dir / str(info["version"]) / "model.onnx",
                           PredictorConfig(session=SessionConfig(provider="cpu")))
ref = pred.predict(files)
worst = 0.0
for row, p in zip(rows, ref, strict=True):
    diff = np.abs(np.array(list(row["probabilities"].values())) - np.array(list(p.probabilities.values())))
    worst = max(worst, float(diff.max()))
    print(f"{Path(p.source).name}: triton {row['label']} / onnxruntime {p.label}, max |dp| {diff.max():.2e}")
print(f"{len(rows)} images, worst |dp| {worst:.2e} (tolerance {tol:g})")
sys.exit(0 if worst <= tol and len(rows) == len(files) else 1)
EOF
echo "PASS: Triton served $MODEL and matched onnxruntime (log: $LOG)"
