#!/usr/bin/env bash
# Install cxr's runtime and HTTP API (core + cpu|gpu + serve extras, never torch) into a fresh virtual environment.
# The Dockerfile's build stages run this; scripts/container_smoke.sh runs it in CI, so the image's recipe
# is exercised on every CI run even where no Docker engine exists.
#
# usage: docker/install.sh VENV_DIR [cpu|gpu] [SOURCE_DIR]
#   cpu: onnxruntime and OpenVINO (default)   gpu: onnxruntime-gpu instead (CUDA 12 / cuDNN 9 base image)
#   SOURCE_DIR: a folder with pyproject.toml, README.md and cxr/ (default: this checkout)
#   PYTHON: the interpreter that creates the venv (default: python3)
set -euo pipefail

venv=${1:?usage: docker/install.sh VENV_DIR [cpu|gpu] [SOURCE_DIR]}
flavor=${2:-cpu}
src=${3:-$(cd "$(dirname "$0")/.." && pwd)}
python=${PYTHON:-python3}  # python3 is in both the official image (/usr/local/bin) and Debian's (/usr/bin)
# The Dockerfile declares these as build arguments with empty defaults: empty means pip's own default.
for var in PIP_INDEX_URL PIP_CERT; do
  if [ -z "${!var:-}" ]; then unset "$var"; fi
done

case "$flavor" in
  cpu|gpu) ;;
  *) echo "error: flavor must be cpu or gpu, got '$flavor'" >&2; exit 2 ;;
esac
if [ ! -f "$src/pyproject.toml" ]; then
  echo "error: $src has no pyproject.toml (pass the cxr source folder as the third argument)" >&2
  exit 2
fi

"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# exactly one onnxruntime build per image: the cpu or the gpu extra (they share one module)
if [ "$flavor" = cpu ]; then
  "${pip[@]}" install --quiet "$src[cpu,serve,openvino,dicom]"  # --provider openvino: the fastest CPU backend measured
else
  "${pip[@]}" install --quiet "$src[gpu,serve,dicom]"
fi

# The wall: the image runs without torch and the training stack, and the API imports.
"$venv/bin/python" - "$flavor" <<'PY'
import importlib.util
import sys

flavor = sys.argv[1]
banned = [m for m in ("torch", "torchvision", "timm", "sklearn", "onnx", "skl2onnx") if importlib.util.find_spec(m)]
if banned:
    sys.exit(f"error: the serve install pulled in training packages: {', '.join(banned)}")
import fastapi  # noqa: F401,E402
import onnxruntime as ort  # noqa: E402
import uvicorn  # noqa: F401,E402

import cxr.serve.app  # noqa: F401,E402

providers = ort.get_available_providers()
if flavor == "gpu" and "CUDAExecutionProvider" not in providers:
    sys.exit(f"error: onnxruntime-gpu offers no CUDA provider here: {providers}")
extra = ""
if flavor == "cpu":
    import openvino  # noqa: E402

    extra = f", openvino {openvino.__version__}"
print(f"cxr serve installed: onnxruntime {ort.__version__} ({', '.join(providers)}){extra}")
PY
"$venv/bin/cxr" serve --help >/dev/null
