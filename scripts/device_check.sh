#!/usr/bin/env bash
# One short, prepared GPU check for a lent device window (15 minutes in all): install from carried wheels,
# benchmark the paper-scale step and the IW-500 evaluation, and train the large VAE for a few minutes.
#
# Here, once (the device machine reaches no package registry, so wheels and data travel with the tree):
#   echo /.whl/ >> .git/info/exclude; echo /.data/ >> .git/info/exclude
#   pip download -d .whl torch==2.13.0 --index-url <a CUDA wheel index>    # the CUDA build
#   pip download -d .whl -e '.[dev]'; mkdir -p .data && cp -r ../shared/data/ptb .data/
# Then through the device tool: run(command="bash scripts/device_check.sh", carry=[".whl", ".data"], timeout_s=560)
# Everything it measures is written to $OUT (one JSON line a benchmark, the training log).
set -uo pipefail
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TEXTVAE_DATA_DIR=${TEXTVAE_DATA_DIR:-$PWD/.data}
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/device_check.log"; }

log "install"
python -m pip install --quiet --no-index --find-links .whl torch textvae 2>&1 | tail -2
python -m pip install --quiet --no-index --find-links .whl --no-deps -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/device_check.log"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.version.cuda)"

log "CUDA tests"
timeout 120 python -m pytest -q -x tests/test_fast_paths.py tests/test_sequence.py 2>&1 | tail -3 | tee -a "$OUT/device_check.log"

log "training step, large VAE, bf16, batches of 8k / 32k / 64k tokens"
for tokens in 8192 32768 65536; do
  timeout 150 python scripts/bench_train.py configs/text/ptb_lstm_vae_large.yaml --steps 30 --json \
    --set train.device=cuda --set train.max_tokens=$tokens --set train.batch_size=4096 | tee -a "$OUT/bench_train.jsonl"
done

log "the same step compiled (train.compile=reduce-overhead: CUDA graphs), 8k-token batches"
timeout 150 python scripts/bench_train.py configs/text/ptb_lstm_vae_large.yaml --steps 30 --json \
  --set train.device=cuda --set train.max_tokens=8192 --set train.batch_size=4096 \
  --set train.compile=reduce-overhead | tee -a "$OUT/bench_train.jsonl"

log "IW-500 evaluation, large VAE, bf16"
timeout 150 python scripts/bench_eval.py configs/text/ptb_lstm_vae_large.yaml --iw-samples 500 --sentences 500 \
  --precision bf16 --json --set train.device=cuda | tee -a "$OUT/bench_eval.jsonl"

log "train the large VAE for 3 minutes (64k-token batches)"
timeout 180 textvae train configs/text/ptb_lstm_vae_large.yaml --run-dir /tmp/large_vae \
  --set train.device=cuda --set train.max_tokens=65536 --set train.batch_size=4096 --set train.eval_every=40 \
  > "$OUT/train.log" 2>&1
cp /tmp/large_vae/metrics.jsonl "$OUT/" 2>/dev/null
log "done"
