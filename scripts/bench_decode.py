"""Decoding throughput of a trained run: sentences/s for greedy, beam and top-p sampling, batched.

    python scripts/bench_decode.py RUN_DIR [-n 500] [--batch-size 100] [--beam-size 5] [--top-p 0.9] [--json]

Each strategy decodes the same N prior samples (z ~ N(0, I)) in batches; the LSTM state is carried
between steps, so each token costs one decoder step.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import textvae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model = textvae.load(args.run_dir)
    z = torch.randn(args.n, model.latent_dim, generator=torch.Generator().manual_seed(0))
    strategies = {
        "greedy": {"strategy": "greedy"},
        f"beam{args.beam_size}": {"strategy": "beam", "beam_size": args.beam_size},
        f"top_p{args.top_p}": {"strategy": "sample", "top_p": args.top_p},
    }
    result = {"run": args.run_dir, "sentences": args.n, "batch_size": args.batch_size,
              "threads": torch.get_num_threads(), "device": str(model.device)}  # fmt: skip
    model.decode(z[:8])  # warm-up
    for name, options in strategies.items():
        start, words = time.perf_counter(), 0
        for i in range(0, args.n, args.batch_size):
            words += sum(len(s.split()) + 1 for s in model.decode(z[i : i + args.batch_size], **options))
        elapsed = time.perf_counter() - start
        result[name] = {"sentences_per_s": round(args.n / elapsed, 1), "tokens_per_s": round(words / elapsed, 1)}
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>12}  {value}")


if __name__ == "__main__":
    main()
