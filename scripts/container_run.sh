#!/usr/bin/env bash
# Run the built image (scripts/container_build.sh) and check it from outside: takes the image and a model,
# starts the image's ENTRYPOINT with the model mounted read-only at /models/ensemble.onnx (buildah run,
# chroot isolation: the host's network, so the API listens on a host port), then probes /readyz,
# /v1/model, POST /v1/predict (multipart and raw body, a real radiograph), 413 for an oversized body and
# for too many pixels, the image's HEALTHCHECK command run inside, the non-root user, that torch is absent,
# and the request latency from outside; stops the server with SIGTERM and removes the container.
# Makes: a summary on stdout and, with --json, a JSON file of the checks and figures.
#
# usage: scripts/container_run.sh [--json OUT.json] [--requests N] MODEL.onnx [RADIOGRAPH.png]
#   RADIOGRAPH: default the first PNG under /work/shared/data/radiography-dev/Normal (or $CXR_RADIOGRAPH)
#   CXR_IMAGE: the image (default localhost/cxr-serve:ci); CXR_PORT: host port (default: a free one)
#   needs root and buildah; exits non-zero when a check fails
set -euo pipefail

json_out=""
requests=20
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --json) json_out=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
model=${args[0]:?usage: scripts/container_run.sh [--json OUT.json] [--requests N] MODEL.onnx [RADIOGRAPH.png]}
radiograph=${args[1]:-${CXR_RADIOGRAPH:-}}
if [ -z "$radiograph" ]; then
  radiograph=$(find /work/shared/data/radiography-dev/Normal -name '*.png' -type f 2>/dev/null | sort | head -n 1)
fi
image=${CXR_IMAGE:-localhost/cxr-serve:ci}
[ -f "$model" ] || { echo "error: model $model not found" >&2; exit 2; }
[ -n "$radiograph" ] && [ -f "$radiograph" ] || { echo "error: no radiograph (pass one)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "error: buildah run --isolation chroot needs root" >&2; exit 2; }
command -v buildah >/dev/null || { echo "error: buildah not installed" >&2; exit 2; }
buildah inspect --type image "$image" >/dev/null 2>&1 \
  || { echo "error: no image $image: run scripts/container_build.sh first" >&2; exit 2; }
model=$(cd "$(dirname "$model")" && pwd)/$(basename "$model")

work=$(mktemp -d "${TMPDIR:-/tmp}/cxr-run.XXXXXX")
ctr=""
runner_pid=""
t0=$(date +%s)
step() { echo "[container_run $(( $(date +%s) - t0 ))s] $*"; }

# the server: the descendant of `buildah run` that runs `cxr serve` (chroot isolation shares the host's PIDs)
server_pid() {
  local pids=("$runner_pid") next p
  while [ ${#pids[@]} -gt 0 ]; do
    next=()
    for p in "${pids[@]}"; do
      if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q 'cxr serve'; then echo "$p"; return 0; fi
      while read -r c; do next+=("$c"); done < <(ps -o pid= --ppid "$p" 2>/dev/null | tr -d ' ')
    done
    pids=("${next[@]+"${next[@]}"}")
  done
  return 1
}

stop_server() {
  local spid
  [ -n "$runner_pid" ] || return 0
  if spid=$(server_pid); then
    kill -TERM "$spid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$runner_pid" 2>/dev/null || break; sleep 0.2; done
  fi
  if kill -0 "$runner_pid" 2>/dev/null; then
    kill -TERM "$runner_pid" 2>/dev/null || true
    sleep 1
    kill -KILL "$runner_pid" 2>/dev/null || true
  fi
  wait "$runner_pid" 2>/dev/null || true
  runner_pid=""
}

cleanup() {
  stop_server
  [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

port=${CXR_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

# 1. What the image declares.
fmt() { buildah inspect --type image --format "$1" "$image"; }
user=$(fmt '{{.Docker.Config.User}}')
healthcheck=$(fmt '{{range .Docker.Config.Healthcheck.Test}}{{.}}{{"\n"}}{{end}}')
mapfile -t entrypoint < <(fmt '{{range .Docker.Config.Entrypoint}}{{.}}{{"\n"}}{{end}}')
size=$(buildah images --format '{{.Size}}' "$image" | head -n 1)
mapfile -t hc_cmd < <(printf '%s\n' "$healthcheck" | sed '1{/^CMD$/d}' | grep .)
step "image $image: $size, User=$user, ENTRYPOINT ${entrypoint[*]}, HEALTHCHECK ${hc_cmd[*]}"
[ ${#entrypoint[@]} -gt 0 ] || { echo "error: the image has no ENTRYPOINT" >&2; exit 1; }
[ ${#hc_cmd[@]} -gt 0 ] || { echo "error: the image has no HEALTHCHECK (built without --format docker?)" >&2; exit 1; }

ctr=$(buildah from --pull=never --name "cxr-run-$$" "$image")
inside() { buildah run --isolation chroot -e "CXR_PORT=$port" "$ctr" "$@"; }

# 2. Inside, before the start: the user, no torch, the venv's size.
uid_inside=$(inside id -u)
torch_rc=0
inside /opt/venv/bin/python -c "import torch" >"$work/torch.log" 2>&1 || torch_rc=$?
grep -q "No module named 'torch'" "$work/torch.log" || torch_rc=0
venv_size=$(inside du -sh /opt/venv | cut -f1)
torch_err=$(grep -m 1 -o "ModuleNotFoundError.*" "$work/torch.log" || tail -n 1 "$work/torch.log")
step "inside: uid $uid_inside, import torch exit $torch_rc ($torch_err), /opt/venv $venv_size"

# 3. Start the ENTRYPOINT with the model mounted read-only (the image's CMD/args: none).
step "starting ${entrypoint[*]} on port $port with $model mounted at /models/ensemble.onnx"
t_start=$(python3 -c 'import time; print(time.time())')
buildah run --isolation chroot -v "$model:/models/ensemble.onnx:ro" -e "CXR_PORT=$port" \
  "$ctr" "${entrypoint[@]}" >"$work/server.log" 2>&1 &
runner_pid=$!

# 4. From outside: readiness, predictions, limits, latency (stdlib only: the host needs no packages).
probe_rc=0
python3 - "$work" "$port" "$runner_pid" "$radiograph" "$requests" "$t_start" <<'PY' || probe_rc=$?
import http.client, json, os, statistics, struct, sys, time, urllib.error, urllib.request, uuid, zlib
from pathlib import Path

work, port, pid, radiograph, n, t_start = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
base = f"http://127.0.0.1:{port}"
out = {"port": port, "radiograph": str(radiograph)}
log = lambda: (work / "server.log").read_text(errors="replace")[-3000:]

def fail(msg):
    (work / "probe.json").write_text(json.dumps(out))
    sys.exit(f"error: {msg}\n--- server log ---\n{log()}")

def call(method, path, body=None, headers=None, timeout=30):
    req = urllib.request.Request(base + path, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()

deadline = time.monotonic() + 180
while True:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        fail("the container exited before /readyz answered 200")
    try:
        status, body = call("GET", "/readyz", timeout=2)
        if status == 200:
            break
    except (urllib.error.URLError, OSError):
        pass
    if time.monotonic() > deadline:
        fail("/readyz did not answer 200 within 180 s")
    time.sleep(0.2)
out["ready_s"] = round(time.time() - t_start, 2)
out["readyz"] = json.loads(body)

status, body = call("GET", "/v1/model")
classes = json.loads(body)["classes"] if status == 200 else fail(f"GET /v1/model: {status} {body[:300]!r}")
info = json.loads(body)
max_body = info["serving"]["max_body_bytes"]

image = radiograph.read_bytes()
boundary = uuid.uuid4().hex
multipart = (
    f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{radiograph.name}\"\r\n"
    "Content-Type: image/png\r\n\r\n"
).encode() + image + f"\r\n--{boundary}--\r\n".encode()
status, body = call("POST", "/v1/predict", multipart, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
if status != 200:
    fail(f"multipart POST /v1/predict: {status} {body[:300]!r}")
pred = json.loads(body)
if pred["label"] not in classes or abs(sum(pred["probabilities"].values()) - 1) > 1e-4 or not pred["notice"]:
    fail(f"unexpected prediction: {pred}")
out["prediction"] = {k: pred[k] for k in ("source", "label", "probability", "provider", "notice")}
out["prediction"]["model_id"] = pred["model"]["id"]

status, body = call("POST", "/v1/predict", image, {"Content-Type": "application/octet-stream"})
if status != 200 or json.loads(body)["probabilities"] != pred["probabilities"]:
    fail(f"raw-body POST /v1/predict differs from the multipart one: {status} {body[:300]!r}")

# 413: a body declared above the cap is refused before it is read
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
conn.putrequest("POST", "/v1/predict")
conn.putheader("Content-Type", "application/octet-stream")
conn.putheader("Content-Length", str(max_body + 1))
conn.endheaders()
resp = conn.getresponse()
too_big = {"status": resp.status, "body": json.loads(resp.read())}
conn.close()
# 413: a small PNG whose header declares more pixels than CXR_MAX_PIXELS (8000 x 8000 > 50 M)
def png(w, h):
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    raw = zlib.compress(b"\0" * ((w + 1) * h), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
huge = png(8000, 8000)
status, body = call("POST", "/v1/predict", huge, {"Content-Type": "image/png"})
too_many = {"status": status, "bytes_sent": len(huge), "body": json.loads(body)}
out["oversized_body"], out["oversized_pixels"] = too_big, too_many
if too_big["status"] != 413 or too_many["status"] != 413:
    fail(f"expected 413 twice, got {too_big} and {too_many}")

# latency from outside: n sequential POSTs of the radiograph, a new connection each (as curl would)
for _ in range(3):
    call("POST", "/v1/predict", image, {"Content-Type": "image/png"})
wall, server = [], []
for _ in range(n):
    t = time.perf_counter()
    status, body = call("POST", "/v1/predict", image, {"Content-Type": "image/png"})
    wall.append((time.perf_counter() - t) * 1000)
    if status != 200:
        fail(f"POST /v1/predict during the latency run: {status}")
    server.append(json.loads(body)["timing"]["total_ms"])
q = statistics.quantiles(wall, n=10) if n >= 2 else wall * 9
out["latency_ms"] = {
    "requests": n, "image_bytes": len(image), "p50": round(statistics.median(wall), 2), "p90": round(q[8], 2),
    "min": round(min(wall), 2), "max": round(max(wall), 2), "server_total_p50": round(statistics.median(server), 2),
}
(work / "probe.json").write_text(json.dumps(out))
lat = out["latency_ms"]
print(f"ready after {out['ready_s']} s; predicted {pred['label']} ({pred['probability']:.3f}) on {pred['provider']}; "
      f"413 for {max_body + 1} declared bytes and for {8000 * 8000} pixels; "
      f"latency over {n} POSTs of {radiograph.name} ({len(image)} bytes): p50 {lat['p50']} ms, p90 {lat['p90']} ms "
      f"(server total p50 {lat['server_total_p50']} ms)")
PY

# 5. The HEALTHCHECK command, run inside the running container's image (same network, same port).
hc_rc=0
if [ "$probe_rc" -eq 0 ]; then
  inside "${hc_cmd[@]}" >"$work/hc.log" 2>&1 || hc_rc=$?
  step "HEALTHCHECK (${hc_cmd[*]}) while serving: exit $hc_rc"
fi
# the server process itself, seen from the host: its real uid
server_uid=""
if spid=$(server_pid); then
  server_uid=$(awk '/^Uid:/ {print $2}' "/proc/$spid/status")
fi

# 6. SIGTERM, graceful shutdown, then the HEALTHCHECK must fail.
stop_server
graceful=false
grep -q "Application shutdown complete" "$work/server.log" && graceful=true
hc_down_rc=0
inside "${hc_cmd[@]}" >/dev/null 2>&1 || hc_down_rc=$?
step "SIGTERM: graceful shutdown $graceful; HEALTHCHECK after the stop: exit $hc_down_rc"

rc=0
python3 - "$work" "$json_out" "$image" "$size" "$user" "$uid_inside" "$server_uid" "$torch_rc" "$venv_size" \
  "$hc_rc" "$hc_down_rc" "$graceful" "$probe_rc" <<'PY' || rc=$?
import json, sys
from pathlib import Path

work, json_out, image, size, user, uid, server_uid, torch_rc, venv, hc, hc_down, graceful, probe = sys.argv[1:]
probe_path = Path(work) / "probe.json"
out = json.loads(probe_path.read_text()) if probe_path.is_file() else {}
out.update(
    image=image, image_size=size, config_user=user, uid_inside=int(uid), server_uid=int(server_uid or -1),
    torch_import_exit=int(torch_rc), venv_size=venv, healthcheck_exit=int(hc), healthcheck_after_stop_exit=int(hc_down),
    graceful_shutdown=graceful == "true", probe_exit=int(probe),
)
checks = {
    "probes": out["probe_exit"] == 0,
    "user 10001": out["config_user"] == "10001" and out["uid_inside"] == 10001 and out["server_uid"] == 10001,
    "no torch": out["torch_import_exit"] != 0,
    "healthcheck": out["healthcheck_exit"] == 0 and out["healthcheck_after_stop_exit"] != 0,
    "graceful stop": out["graceful_shutdown"],
}
out["checks"] = checks
if json_out:
    Path(json_out).write_text(json.dumps(out, indent=2))
failed = [k for k, ok in checks.items() if not ok]
print("checks: " + ", ".join(f"{k} {'ok' if ok else 'FAILED'}" for k, ok in checks.items()))
sys.exit(1 if failed else 0)
PY
if [ "$rc" -ne 0 ]; then
  echo "--- server log ---" >&2
  tail -n 40 "$work/server.log" >&2
  exit 1
fi
step "container run passed"
