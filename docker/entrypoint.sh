#!/bin/sh
# The image's entry point: find the model, then exec `cxr serve` (all options come from CXR_* variables,
# see `cxr serve --help`; arguments given to `docker run IMAGE ...` are passed on to `cxr serve`).
# Model: $CXR_MODEL, else the only *.onnx in /models (a mounted volume), else the only *.onnx in
# /opt/cxr/models (copied in at build time with --build-arg MODEL=...); the variants the runtime finds
# beside a model (<stem>.int8.onnx, <stem>.heatmaps.onnx, <stem>.fp16.onnx) are not counted.
# CXR_PRECISION (default auto: the fastest precision verified for this CPU, int8 > bf16 > fp32) and
# CXR_PROVIDER choose how it runs; the API's /v1/model and /readyz say which precision was chosen and why.
# scripts/container_smoke.sh runs this same file outside Docker (CXR_VENV points at its venv).
# CXR_ROLE=listen runs the DICOM node instead (`cxr listen`, docs/dicom-node.md): its DICOM port is
# $CXR_DICOM_PORT (default 11112, EXPOSEd), because the image's CXR_PORT is the HTTP API's; set CXR_FORWARD
# (or CXR_FORWARD_URL) and CXR_SPOOL (default /spool: mount a volume there so the spool survives the container).
set -eu

venv=${CXR_VENV:-/opt/venv}
export CXR_HOST="${CXR_HOST:-0.0.0.0}"
role=serve
if [ "${CXR_ROLE:-serve}" = listen ]; then
  role=listen
  export CXR_PORT="${CXR_DICOM_PORT:-11112}"
  export CXR_SPOOL="${CXR_SPOOL:-/spool}"
fi
export CXR_PORT="${CXR_PORT:-8000}"

if [ -z "${CXR_MODEL:-}" ]; then
  for dir in /models /opt/cxr/models; do
    [ -d "$dir" ] || continue
    found=$(find "$dir" -maxdepth 2 -name '*.onnx' ! -name '*.int8.onnx' ! -name '*.heatmaps.onnx' \
      ! -name '*.fp16.onnx' -type f | sort)
    count=$(printf '%s' "$found" | grep -c . || true)
    if [ "$count" -eq 1 ]; then
      CXR_MODEL=$found
      break
    elif [ "$count" -gt 1 ]; then
      echo "error: $dir holds $count .onnx files; choose one with -e CXR_MODEL=$dir/NAME.onnx" >&2
      exit 2
    fi
  done
fi
if [ -z "${CXR_MODEL:-}" ]; then
  echo "error: no model: mount one (-v \$PWD/runs/demo:/models:ro) or set CXR_MODEL=/models/NAME.onnx" >&2
  exit 2
fi
export CXR_MODEL
exec "$venv/bin/cxr" "$role" "$@"
