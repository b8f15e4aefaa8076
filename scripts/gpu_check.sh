#!/usr/bin/env bash
# Check cxr's CUDA and TensorRT paths on a GPU machine: providers really used, parity with the CPU result,
# latency, TensorRT engine cache. Writes $OUT/gpu_check.json (+ .log, nvidia-smi.txt); exit 0 = passed.
#
# Self-contained: runs from the repository root with the python it finds; installs nothing from the network.
#   WHEELS=DIR   install every wheel in DIR first (onnxruntime-gpu, tensorrt*, nvidia-*, ...) into a private
#                folder that shadows the system packages (pip --no-index --no-deps --target).
#   OUT=DIR      where the report goes (default ./gpu_check_out).
#   PYTHON=...   interpreter (default python3). Needs numpy, Pillow, typer and onnxruntime-gpu; torch + timm
#                + onnx only to export a real network (--timm NAME), else the tiny test model needs onnx.
# Arguments go to scripts/gpu_check.py, e.g.:
#   scripts/gpu_check.sh --timm resnet50 --size 224       # a real CNN, random weights
#   scripts/gpu_check.sh --model runs/demo/ensemble.onnx  # the fused ensemble
#   scripts/gpu_check.sh --allow-cpu                      # dry run on a machine without GPU
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
OUT=${OUT:-$REPO/gpu_check_out}
mkdir -p "$OUT"

if [[ -n "${WHEELS:-}" ]]; then
  SITE=${CXR_GPU_SITE:-/tmp/cxr-gpu-site}
  echo "installing wheels from $WHEELS into $SITE" >&2
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# CUDA, cuDNN and TensorRT libraries shipped as pip packages (nvidia-*, tensorrt_libs) must be findable.
LIBS=$("$PY" - <<'EOF'
import glob, os, site, sys
roots = [p for p in sys.path if p and os.path.isdir(p)] + site.getsitepackages()
dirs = []
for r in roots:
    for pat in ("nvidia/*/lib", "nvidia/*/lib64", "tensorrt_libs", "tensorrt", "onnxruntime/capi"):
        dirs += [d for d in glob.glob(os.path.join(r, pat)) if os.path.isdir(d)]
print(":".join(dict.fromkeys(dirs)))
EOF
)
if [[ -n "$LIBS" ]]; then export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi

{ nvidia-smi || echo "nvidia-smi not available"; } >"$OUT/nvidia-smi.txt" 2>&1
"$PY" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())' \
  2>&1 | tee "$OUT/onnxruntime.txt" >&2

set +e
"$PY" scripts/gpu_check.py --out "$OUT/gpu_check.json" "$@" 2>&1 | tee "$OUT/gpu_check.log" >&2
rc=${PIPESTATUS[0]}
set -e
echo "report: $OUT/gpu_check.json (exit $rc)" >&2
exit "$rc"
