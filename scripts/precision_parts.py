"""Which bf16 part of the large VAE's step changes early learning: the trainer's own step on the same batches.

    python scripts/precision_parts.py VARIANT [--steps 60] [--config CONFIG]

VARIANT: fp32 (everything fp32), bf16 (the config's bf16 step), out32 / dec32 / enc32 (bf16 except the output
layer / the decoder LSTM / the encoder LSTM in fp32). Prints the mean training loss and KL of the last third of
the steps. No run directory, validation or hooks: the same batches in the same order for every variant.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import build  # noqa: E402

from textvae import config as config_lib  # noqa: E402
from textvae.models import lstm_lm, lstm_vae  # noqa: E402
from textvae.models import sequence as seq  # noqa: E402


def _fp32_recurrent(original):
    def run(rnn, inputs, state=None):
        with torch.autocast(inputs.device.type, enabled=False):
            state = None if state is None else tuple(part.float() for part in state)
            return original(rnn, inputs.float(), state)

    return run


def _fp32_output_layer(hidden, targets, output, rows=seq.BLOCK_ROWS):
    with torch.autocast(hidden.device.type, enabled=False):
        return seq.LinearNLL.apply(hidden.float(), output.weight, output.bias, targets, torch.float32, rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant", choices=("fp32", "bf16", "out32", "dec32", "enc32"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--config", default="configs/text/ptb_lstm_vae_large.yaml")
    args = parser.parse_args()
    if args.variant == "out32":
        seq.linear_nll = _fp32_output_layer
    elif args.variant == "dec32":
        lstm_lm.run_recurrent = _fp32_recurrent(lstm_lm.run_recurrent)
    elif args.variant == "enc32":
        lstm_vae.run_recurrent = _fp32_recurrent(lstm_vae.run_recurrent)
    precision = "fp32" if args.variant == "fp32" else "bf16"
    config = config_lib.load(args.config, [f"train.precision={precision}"])
    torch.manual_seed(config.train.seed)
    data, _, _, trainer = build(config)
    plan = list(data.plan(0, config.train.batch_size, config.train.max_tokens, config.train.seed))
    losses, kls, start = [], [], time.perf_counter()
    for step in range(args.steps):
        trainer.position.step = step
        out = trainer.train_step(data.collate(plan[step % len(plan)]))
        if step >= args.steps * 2 // 3 and out:
            losses.append(out["loss"])
            kls.append(out["kl"])
    first = args.steps * 2 // 3
    print(f"{args.variant} steps {first}-{args.steps - 1}: loss {sum(losses) / len(losses):.3f} "
          f"kl {sum(kls) / len(kls):.3f} ({time.perf_counter() - start:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
