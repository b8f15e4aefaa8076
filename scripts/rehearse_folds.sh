#!/usr/bin/env bash
# The rehearsal cross-validated (`make rehearse-folds`): the paper path on each of K=5 folds of the real sample,
# then every fold's test split pooled, so all 451 images are test images once (`cxr evaluate-folds`).
# Fold 4 is exactly `make rehearse`'s split (same seed, 70/10/20). Per fold: split, train (configs/rehearse.yaml),
# stack, linear probe, evaluate; export, fusion, INT8 and the scans are left out (`make rehearse` checks those;
# evaluation already runs the converted meta-learner on FP32 member predictions). ~15 min per fold on 2 cores.
# FOLDS="0 1" runs some folds only; extra arguments go to `cxr train base`. Writes runs/rehearse-folds/.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
SHARED=${SHARED:-../shared}
ROOT=${ROOT:-runs/rehearse-folds}
K=5
FOLDS=${FOLDS:-0 1 2 3 4}
DATA=$SHARED/data/radiography-dev
WEIGHTS=$SHARED/weights/legacy_xception-imagenet-keras.safetensors
for need in "$DATA" "$WEIGHTS"; do
  if [ ! -e "$need" ]; then
    echo "rehearse-folds: $need is missing: the rehearsal runs on the real sample in ../shared (see its README)" >&2
    exit 2
  fi
done
mkdir -p "$ROOT"
LOG=$ROOT/folds.log
start=$(date +%s)
stage() {  # stage NAME COMMAND...: run, echo and time one stage
  local name=$1 t0
  shift
  echo "== $name: $*" | tee -a "$LOG"
  t0=$(date +%s)
  "$@" 2>&1 | tee -a "$LOG"
  echo "== $name took $(($(date +%s) - t0)) s" | tee -a "$LOG"
}
echo "host: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)" | tee -a "$LOG"
for i in $FOLDS; do
  RUN=$ROOT/fold$i
  mkdir -p "$RUN"
  stage "fold $i split" "$BIN/cxr" data split "$DATA" --output "$RUN/manifest.csv" --val 0.1 --folds $K --fold "$i"
  stage "fold $i train" "$BIN/cxr" train base --config configs/rehearse.yaml --all --set "run_dir=$RUN" \
    --set "data.manifest=$RUN/manifest.csv" --set "models.xception.pretrained=$WEIGHTS" "$@"
  stage "fold $i stack" "$BIN/cxr" stack "$RUN"
  stage "fold $i probe" "$BIN/cxr" train probe "$RUN" --pretrained "$WEIGHTS" --input-size 224
  stage "fold $i evaluate" "$BIN/cxr" evaluate "$RUN" --no-plots
done
stage pool "$BIN/cxr" evaluate-folds "$ROOT"/fold[0-9]*/ --output "$ROOT/pooled"
echo "== folds done in $(($(date +%s) - start)) s; report: $ROOT/pooled/report.md" | tee -a "$LOG"
