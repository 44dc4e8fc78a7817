"""Evaluation throughput of a config: importance-weighted NLL, real tokens x samples per second, and the share
of this machine's matmul rate it reaches.

    python scripts/bench_eval.py configs/text/ptb_lstm_vae.yaml [--run RUN_DIR] [--iw-samples 500]
        [--sentences 200] [--token-budget 32768] [--precision fp32|bf16] [--set key=value ...] [--json]

The model is the run's trained one with --run, else freshly initialized (throughput does not depend on the
weights). Sentences are the first --sentences of the test split in evaluation order. Achieved GFLOP/s
counts the matmul FLOPs of the forward passes (the encoder once per sentence, the decoder and output
projection once per sample); the matmul rate (2048², the best of three rounds of
repeats before and three after the evaluation) is measured in the same run, precision and thread count.
`peak_mem_mb` is the growth of the process's peak resident memory during the evaluation (CPU) or the
peak allocated memory (CUDA): with the sample chunk bounded by --token-budget it must not grow with K.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_train import MatmulProbe, cpu_name  # noqa: E402

from textvae import config as config_lib  # noqa: E402
from textvae import registry  # noqa: E402
from textvae.config import Config  # noqa: E402
from textvae.core.device import resolve_device  # noqa: E402
from textvae.data.batching import TextSplit  # noqa: E402
from textvae.data.corpus import load_corpus  # noqa: E402
from textvae.data.tokenizer import WordTokenizer  # noqa: E402
from textvae.models import build_text_model  # noqa: E402
from textvae.pipeline import load_run  # noqa: E402
from textvae.text_metrics import evaluate_text  # noqa: E402


def eval_flops(config: Config, vocab: int, tokens: int, sentences: int, samples: int) -> float:
    """Forward matmul FLOPs of an IW evaluation (2 per multiply-add), as the model counts them."""
    return registry.spec(config.model.name).load().flops(config.model, vocab, tokens, sentences, samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--run", type=Path, help="a trained run of this config (default: fresh weights)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--iw-samples", type=int, default=500)
    parser.add_argument("--sentences", type=int, default=200, help="test sentences evaluated (0: all)")
    parser.add_argument("--token-budget", type=int, default=32768, help="decoder tokens per sample chunk")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    config = config_lib.load(args.config, args.overrides)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    corpus = load_corpus(config.data.corpus, config.data.holdout)
    if args.run:
        run = load_run(args.run)
        model, tokenizer, device = run.model, run.tokenizer, run.device
        # the run's own model and data settings (the FLOPs and lengths), this command's train.* (threads, batches)
        config = config_lib.replace(run.config, train=dataclasses.asdict(config.train))
    else:
        if config.data.tokenizer != "word":
            print("error: fresh weights need a word tokenizer; pass --run RUN_DIR for this config", file=sys.stderr)
            return 2
        tokenizer = WordTokenizer.build(corpus.splits["train"], config.data)
        device = resolve_device(config.train.device)
        torch.manual_seed(config.train.seed)
        model = build_text_model(config.model, tokenizer).to(device)
    sentences = corpus.splits["test"][: args.sentences or None]
    data = TextSplit(sentences, tokenizer, config.data.max_length)
    batches = [data.collate(b) for b in data.ordered(config.train.eval_batch_size)]
    probe = MatmulProbe(args.precision, device, [])  # the best of repeats before and after (the rate drifts)
    probe.measure()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize()
    start = time.perf_counter()
    metrics = evaluate_text(model, batches, args.iw_samples, device, args.precision, token_budget=args.token_budget)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    elapsed = time.perf_counter() - start
    samples = args.iw_samples if model.latent_dim else 1
    flops = eval_flops(config, len(tokenizer), metrics["tokens"], metrics["sentences"], samples)
    achieved = flops / elapsed / 1e9
    probe.measure()
    rate = probe.square
    result = {
        "config": args.config,
        "cpu": cpu_name(),
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "sentences": metrics["sentences"],
        "iw_samples": samples,
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(metrics["tokens"] * samples / elapsed, 1),  # real tokens x samples
        "sentences_per_s": round(metrics["sentences"] / elapsed, 2),
        "achieved_gflops": round(achieved, 2),
        "matmul_gflops": round(rate, 2),
        "ratio": round(achieved / rate, 4),
        "peak_mem_mb": round(peak_mb, 1),
        "nll": round(metrics["nll"], 4),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
