#!/usr/bin/env bash
# The Docker image's recipe without Docker (no engine runs on CI machines): copy the same build context
# the Dockerfile copies, run the same install script into a fresh venv, start the server through the
# image's entry point on loopback, wait for /readyz, predict one image, run the HEALTHCHECK command,
# then stop the server with SIGTERM and check that it exits cleanly. Everything lives in a temp folder.
#
# usage: scripts/container_smoke.sh [MODEL.onnx]
#   MODEL: a cxr ONNX model; without it a tiny test model is built with the dev venv ($DEV_PYTHON,
#   default .venv/bin/python), which needs onnx. PYTHON: the interpreter for the fresh venv (python3).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/cxr-smoke.XXXXXX")
server_pid=""
t_start=$(date +%s)

cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    sleep 1
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

step() { echo "[smoke $(( $(date +%s) - t_start ))s] $*"; }

# 1. The build context, as the Dockerfile's COPY lines take it.
step "copying the build context"
mkdir -p "$work/src"
cp -R "$repo/pyproject.toml" "$repo/README.md" "$repo/cxr" "$repo/docker" "$work/src/"
find "$work/src" -name __pycache__ -type d -prune -exec rm -rf {} +

# 2. The build stage.
step "docker/install.sh into a fresh venv"
bash "$work/src/docker/install.sh" "$work/venv" cpu "$work/src"
py="$work/venv/bin/python"

# 3. A model.
model=${1:-}
if [ -z "$model" ]; then
  step "building a tiny test model"
  model="$work/model/tiny.onnx"
  (cd "$repo" && "${DEV_PYTHON:-$repo/.venv/bin/python}" -c \
    "import sys; from pathlib import Path; from tests.onnx_factory import make_fused_model; make_fused_model(Path(sys.argv[1]))" \
    "$model")
fi
[ -f "$model" ] || { echo "error: model $model not found" >&2; exit 2; }

# 4. Start through the image's entry point (loopback only, any free port).
step "starting the server through docker/entrypoint.sh"
CXR_VENV="$work/venv" CXR_MODEL="$model" CXR_HOST=127.0.0.1 CXR_PORT=0 CXR_THREADS=1 \
  "$work/src/docker/entrypoint.sh" --port-file "$work/port" --no-access-log >"$work/server.log" 2>&1 &
server_pid=$!

# 5-6. Wait for /readyz, predict one image, check the answer.
"$py" - "$work" "$server_pid" <<'PY'
import io, json, os, sys, time, urllib.error, urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

work, pid = Path(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 60
port = None
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("error: the server exited early:\n" + (work / "server.log").read_text()[-3000:])
    port_file = work / "port"
    if port is None and port_file.is_file():
        port = int(port_file.read_text())
    if port is not None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
    time.sleep(0.2)
else:
    sys.exit("error: /readyz did not answer 200 within 60 s:\n" + (work / "server.log").read_text()[-3000:])

yy, xx = np.mgrid[0:64, 0:64]
buf = io.BytesIO()
Image.fromarray(((xx * 3 + yy) % 256).astype(np.uint8), mode="L").save(buf, format="PNG")
req = urllib.request.Request(
    f"http://127.0.0.1:{port}/v1/predict", data=buf.getvalue(), headers={"Content-Type": "image/png"}
)
with urllib.request.urlopen(req, timeout=30) as r:
    body = json.loads(r.read())
with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=5) as r:
    classes = json.loads(r.read())["classes"]
if body["label"] not in classes or abs(sum(body["probabilities"].values()) - 1) > 1e-4 or not body["notice"]:
    sys.exit(f"error: unexpected prediction: {body}")
(work / "port_number").write_text(str(port))
print(f"predicted {body['label']} ({body['probability']:.3f}) with model {body['model']['id']} on {body['provider']}")
PY

# 7. The image's HEALTHCHECK command.
step "HEALTHCHECK"
CXR_PORT=$(cat "$work/port_number") "$py" "$work/src/docker/healthcheck.py"

# 8. Graceful stop.
step "SIGTERM"
kill -TERM "$server_pid"
for _ in $(seq 1 50); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.2
done
if kill -0 "$server_pid" 2>/dev/null; then
  echo "error: the server did not stop within 10 s of SIGTERM" >&2
  exit 1
fi
rc=0
wait "$server_pid" || rc=$?
server_pid=""
# uvicorn re-raises the signal after its graceful shutdown, so 143 (128 + SIGTERM) is a clean exit too.
if { [ "$rc" -ne 0 ] && [ "$rc" -ne 143 ]; } || ! grep -q "Application shutdown complete" "$work/server.log"; then
  echo "error: no graceful shutdown after SIGTERM (exit status $rc):" >&2
  tail -n 40 "$work/server.log" >&2
  exit 1
fi
step "container smoke test passed"
