"""Training throughput of a config: real tokens/s and the share of this machine's matmul rate it reaches.

    python scripts/bench_train.py configs/text/ptb_lstm_vae.yaml [--set key=value ...] [--steps N] [--json]

Real tokens are predicted tokens (words + <eos>), padding not counted. Achieved GFLOP/s counts the
model's matmul FLOPs (LSTM gates or attention and MLP blocks, output projection, posterior and latent
projections; backward = 2 x forward); the machine's matmul rate is measured in the same run, precision
and thread count.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from textvae import config as config_lib
from textvae.config import Config
from textvae.core.device import autocast, resolve_device
from textvae.core.objective import elbo
from textvae.core.schedules import kl_weight
from textvae.core.trainer import build_optimizer
from textvae.data.batching import TextSplit
from textvae.data.corpus import load_corpus
from textvae.data.tokenizer import WordTokenizer, build_tokenizer
from textvae.models import build_text_model


def lstm_flops(config: Config, vocab: int, tokens: int, sentences: int) -> float:
    """Forward + backward matmul FLOPs of one LSTM VAE / LM step (2 per multiply-add, backward 2x)."""
    m = config.model
    latent = m.latent_dim if m.name == "lstm_vae" else 0
    hidden, emb, layers = m.hidden_size, m.embedding_dim, m.num_layers

    def lstm(inputs: int) -> float:  # one direction, all layers, per token
        return 2 * 4 * hidden * (inputs + hidden) + (layers - 1) * 2 * 4 * hidden * (2 * hidden)

    per_token = lstm(emb + latent) + 2 * hidden * vocab  # decoder and output projection
    per_sentence = 0
    if latent:
        directions = 2 if m.bidirectional else 1
        per_token += directions * lstm(emb)  # the encoder reads each word and <eos>
        per_sentence = 2 * directions * hidden * 2 * latent + 2 * latent * layers * hidden  # posterior, z -> state
    return 3.0 * (per_token * tokens + per_sentence * sentences)


def transformer_flops(config: Config, vocab: int, tokens: int, sentences: int) -> float:
    """Forward + backward matmul FLOPs of one Transformer VAE / LM step, attention scores included."""
    m = config.model
    width, ff, layers = m.embedding_dim, m.hidden_size, m.num_layers
    length = tokens / max(1, sentences)  # mean attended length

    def block() -> float:  # per token: qkv, output projection, MLP, QK^T and AV
        return 2 * width * 3 * width + 2 * width * width + 2 * 2 * width * ff + 2 * 2 * length * width

    per_token = layers * block() + 2 * width * vocab
    if m.name == "transformer_vae":
        per_token += layers * block()  # the encoder
    return 3.0 * per_token * tokens


def step_flops(config: Config, vocab: int, tokens: int, sentences: int) -> float:
    if config.model.name.startswith("transformer"):
        return transformer_flops(config, vocab, tokens, sentences)
    return lstm_flops(config, vocab, tokens, sentences)


def matmul_gflops(precision: str, device: torch.device | str = "cpu", size: int = 0, repeats: int = 20) -> float:
    """The measured square-matmul rate on `device` in `precision` (fp32 on CUDA runs as TF32, as in training)."""
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 2048)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated (CUDA) or the process's peak resident memory (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=60, help="timed steps (after 10 warm-up steps)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = config_lib.load(args.config, args.overrides)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    torch.manual_seed(config.train.seed)
    corpus = load_corpus(config.data.corpus, config.data.holdout)
    if config.data.tokenizer == "word":
        tokenizer = WordTokenizer.build(corpus.splits["train"], config.data)
    else:
        import tempfile
        from pathlib import Path

        tokenizer = build_tokenizer(config.data, corpus.splits["train"], Path(tempfile.mkdtemp()))
    data = TextSplit(corpus.splits["train"], tokenizer, config.data.max_length)
    device = resolve_device(config.train.device)
    model = build_text_model(config.model, tokenizer).to(device).train()
    optimizer = build_optimizer(model, config)
    plan = data.plan(0, config.train.batch_size, config.train.max_tokens, config.train.seed)
    tokens = sentences = 0
    for i, indices in enumerate(plan[: 10 + args.steps]):
        if i == 10:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, tokens, sentences = time.perf_counter(), 0, 0
        batch = data.collate(indices).to(device)
        with autocast(device, config.train.precision):
            loss = elbo(model, batch, kl_weight(config.objective, i, config.train.max_steps),
                        config.objective.free_bits, config.objective.free_bits_mode).loss  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip or float("inf"))
        optimizer.step()
        tokens += batch.num_tokens
        sentences += batch.size
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    achieved = step_flops(config, len(tokenizer), tokens, sentences) / elapsed / 1e9
    memory = peak_memory_mb(device)
    peak = matmul_gflops(config.train.precision, device)
    result = {
        "config": args.config,
        "precision": config.train.precision,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "steps": args.steps,
        "tokens_per_s": round(tokens / elapsed, 1),
        "achieved_gflops": round(achieved, 2),
        "matmul_gflops": round(peak, 2),
        "ratio": round(achieved / peak, 4),
        "peak_mem_mb": round(memory, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}  {value}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
