#!/usr/bin/env bash
# One short, prepared GPU check for a lent device window (15 minutes in all, one call of at most 10): the CUDA
# tests, the paper-scale training step at large token budgets (bf16 and TF32), the IW-500 evaluation over the
# whole PTB test split, and the large VAE trained for a few minutes, then evaluated with IW-500 on the test split.
#
# It runs on the device image's own python3 and PyTorch (a CUDA build of torch is gigabytes: it cannot travel in
# the 64 MiB a call carries), with this checkout on PYTHONPATH; textvae's other needs (numpy, pyyaml,
# sentencepiece, tensorboard, tqdm, sacrebleu, scikit-learn, pytest) are in that image; `datasets` is not (corpus
# files are then split into lines as its loader splits them). Only the data travels. Measured 2026-12-04 on an
# H200: docs/performance.md. Device time: ~4.5 minutes for this script, plus the machine's start.
# Here, once:
#   echo /.data/ >> .git/info/exclude; mkdir -p .data/bench && cp -r ../shared/data/ptb .data/
#   cp ../shared/bench/textbook_lstm_vae.py .data/bench/
# Then through the device tool: run(command="bash scripts/device_check.sh", carry=[".data"], timeout_s=570)
# Everything it measures lands in $OUT: bench.jsonl (one JSON line a benchmark), device_check.log, the training's
# log and metrics. Where the machine's CPU has AMX, the CPU bench last. A rehearsal on a CPU, small sizes:
#   DEVICE=cpu PRECISION=fp32 STEPS=3 MINUTES=0.3 IW=2 EXTRA='--set model.hidden_size=32 --set model.embedding_dim=16' \
#   PY=python bash scripts/device_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/device_out}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-30}
MINUTES=${MINUTES:-3}
IW=${IW:-500}
PRECISION=${PRECISION:-bf16}  # of the bf16 rows (a rehearsal on a CPU without bf16 units: fp32)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} TEXTVAE_DATA_DIR=${TEXTVAE_DATA_DIR:-$PWD/.data}
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
PY=${PY:-python3}
LOG=$OUT/device_check.log
log() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
large=configs/text/ptb_lstm_vae_large.yaml
on=(--set "train.device=$DEVICE")
read -ra extra <<< "${EXTRA:-}"  # more --set pairs, given last (a rehearsal's small sizes)

log "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  $PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"; } | tee -a "$LOG"

if [ "$DEVICE" = cuda ] && [ -z "${SKIP_TRAIN:-}" ]; then
  log "CUDA tests"
  timeout 90 $PY -m pytest -q -p no:cacheprovider tests/test_train_cli.py -k cuda 2>&1 | tail -n 3 | tee -a "$LOG"
fi

bench() {  # a label, then bench_train.py's arguments
  local label=$1; shift
  log "bench $label"
  timeout 100 $PY scripts/bench_train.py "$@" "${extra[@]}" --steps "$STEPS" --json 2>>"$LOG" | tee -a "$OUT/bench.jsonl"
}
bench "large VAE, $PRECISION, 32k-token batches" $large "${on[@]}" --set train.precision=$PRECISION \
  --set train.max_tokens=32768 --set train.batch_size=8192
bench "large VAE, $PRECISION, 128k-token batches" $large "${on[@]}" --set train.precision=$PRECISION \
  --set train.max_tokens=131072 --set train.batch_size=16384
bench "large VAE, fp32 (TF32 on CUDA), 32k-token batches" $large "${on[@]}" --set train.precision=fp32 \
  --set train.max_tokens=32768 --set train.batch_size=8192
bench "large LM, $PRECISION, 32k-token batches" configs/text/ptb_lstm_lm_large.yaml "${on[@]}" \
  --set train.precision=$PRECISION --set train.max_tokens=32768 --set train.batch_size=8192

log "IW-500 evaluation, large VAE (fresh weights), $PRECISION, the whole test split"
timeout 120 $PY scripts/bench_eval.py $large --iw-samples "$IW" --sentences 0 --precision "$PRECISION" --json \
  "${on[@]}" "${extra[@]}" 2>>"$LOG" | tee -a "$OUT/bench.jsonl"

[ -n "${SKIP_TRAIN:-}" ] && { log "done (SKIP_TRAIN)"; exit 0; }
log "train the large VAE for $MINUTES minutes (32k-token batches, $PRECISION) and time it to validation NLL 100"
timeout 300 $PY scripts/bench_train.py $large --to-quality 100 --json "${on[@]}" --set train.precision=$PRECISION \
  --set train.max_tokens=32768 --set train.batch_size=8192 --set train.eval_every=50 --set train.eval_batch_size=512 \
  --set train.max_minutes="$MINUTES" --set train.early_stopping=0 "${extra[@]}" 2>>"$LOG" | tee -a "$OUT/bench.jsonl" > "$OUT/quality.json"
run=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['run_dir'])" "$OUT/quality.json" 2>/dev/null)
if [ -n "$run" ] && [ -d "$run" ]; then
  cp "$run/metrics.jsonl" "$OUT/train_metrics.jsonl"; cp "$run/../train.log" "$OUT/train.log"
  log "IW-500 over the test split, the trained large VAE (best.pt), $PRECISION"
  SECONDS=0
  timeout 120 $PY -m textvae evaluate "$run" --iw-samples "$IW" --precision "$PRECISION" --json 2>>"$LOG" | tee "$OUT/test_eval.json"
  log "evaluate took $SECONDS s"
fi
if grep -q amx_bf16 /proc/cpuinfo && [ "$DEVICE" = cuda ]; then  # the device machine's CPU has AMX: bench it too
  log "bench the large VAE on this machine's AMX CPU, 2 threads, bf16, beside the textbook fp32 step"
  timeout 200 $PY scripts/bench_train.py $large --set train.device=cpu --set train.precision=bf16 \
    --set train.num_threads=2 --steps 12 --reference --reference-script .data/bench/textbook_lstm_vae.py --json \
    2>>"$LOG" | tee -a "$OUT/bench.jsonl"
fi
log "done"
