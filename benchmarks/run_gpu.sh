#!/usr/bin/env bash
# GPU numbers for benchmarks/README.md, on a machine with an NVIDIA GPU (e.g. through the `device` tool).
#
# Takes: a Python with cxr's dependencies and onnxruntime-gpu (CUDAExecutionProvider), torch and timm to
# build the members (they are built on the GPU machine: ~1 GB of ONNX is too big to copy there).
# Makes: runs/paper-gpu/ (models) and runs/paper-gpu/bench/ (cxr-bench JSON/Markdown/PNG + summary.md).
#
# Usage: bash benchmarks/run_gpu.sh [PROVIDERS]      PROVIDERS defaults to cuda,cpu (add tensorrt if wanted:
#        TensorRT builds an engine per model and batch size on first use, which takes minutes)
# Env:   PYTHON (default .venv/bin/python, else python3), OUT (default runs/paper-gpu), SIZE (default 224),
#        ITERATIONS (default 20), BATCH_SIZES (default 1,8,32)
set -euo pipefail
cd "$(dirname "$0")/.."
PROVIDERS="${1:-cuda,cpu}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT="${OUT:-runs/paper-gpu}"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PYTHON" - <<'PY'
import sys
import onnxruntime as ort
providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, providers)
if "CUDAExecutionProvider" not in providers:
    sys.exit("onnxruntime has no CUDAExecutionProvider here: install onnxruntime-gpu (pip uninstall onnxruntime; "
             "pip install 'cxr-toolkit[gpu]') with a CUDA/cuDNN that matches it")
PY
"$PYTHON" -c "import torch, timm" 2>/dev/null || { echo "torch and timm are needed to build the members here"; exit 2; }

"$PYTHON" benchmarks/paper_members.py --out "$OUT" --size "${SIZE:-224}" --providers "$PROVIDERS" \
  --threads default --batch-sizes "${BATCH_SIZES:-1,8,32}" --warmup 5 --iterations "${ITERATIONS:-20}"
"$PYTHON" - "$OUT/bench" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from run_cpu import summary_markdown
bench = Path(sys.argv[1])
(bench / "summary.md").write_text(summary_markdown(bench))
print((bench / "summary.md").read_text())
PY
