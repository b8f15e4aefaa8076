#!/usr/bin/env bash
# The paper path, stage by stage as the README prints it, on real chest X-rays on a CPU (`make rehearse`).
# Needs ../shared/data/radiography-dev and ../shared/weights (see their READMEs); writes runs/rehearse/,
# its fused model at runs/rehearse/ensemble.onnx, and runs/rehearse/rehearsal.log with each stage's time.
# Extra arguments go to `cxr train base` (e.g. --set train.epochs=2 for a quick look).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
SHARED=${SHARED:-../shared}
RUN=${RUN:-runs/rehearse}
DATA=$SHARED/data/radiography-dev
WEIGHTS=$SHARED/weights/legacy_xception-imagenet-keras.safetensors
for need in "$DATA" "$WEIGHTS" "$SHARED/data/external-dev"; do
  if [ ! -e "$need" ]; then
    echo "rehearse: $need is missing: the rehearsal runs on the real sample in ../shared (see its README)" >&2
    exit 2
  fi
done
mkdir -p "$RUN"
LOG=$RUN/rehearsal.log
: >"$LOG"
start=$(date +%s)
stage() {  # stage NAME COMMAND...: run, echo and time one stage
  local name=$1 t0 t1
  shift
  echo "== $name: $*" | tee -a "$LOG"
  t0=$(date +%s)
  "$@" 2>&1 | tee -a "$LOG"
  t1=$(date +%s)
  echo "== $name took $((t1 - t0)) s" | tee -a "$LOG"
}
{ echo "host: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"; } | tee -a "$LOG"
# 70/10/20 as fold 4 of 5: the same images as `--test 0.2` (the last fold IS the plain split), and fold 4 of
# `make rehearse-folds`.
stage split "$BIN/cxr" data split "$DATA" --output "$RUN/manifest.csv" --val 0.1 --folds 5 --fold 4
stage train "$BIN/cxr" train base --config configs/rehearse.yaml --all --set "run_dir=$RUN" \
  --set "data.manifest=$RUN/manifest.csv" --set "models.xception.pretrained=$WEIGHTS" "$@"
stage export "$BIN/cxr" export "$RUN" --variants int8
stage stack "$BIN/cxr" stack "$RUN"
stage fuse "$BIN/cxr" fuse "$RUN" --variants int8 --heatmaps
stage probe "$BIN/cxr" train probe "$RUN" --pretrained "$WEIGHTS" --input-size 224
stage evaluate "$BIN/cxr" evaluate "$RUN"
stage score "$BIN/python" scripts/score_split.py "$RUN/ensemble.onnx" "$RUN/manifest.csv" test
stage external "$BIN/cxr-predict" scan "$SHARED/data/external-dev" --model "$RUN/ensemble.onnx" \
  --output "$RUN/external-dev.csv" --overwrite --quiet
echo "== rehearsal done in $(($(date +%s) - start)) s; report: $RUN/eval/report.md" | tee -a "$LOG"
