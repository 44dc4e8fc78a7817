"""How far SVI refinement gets with a given budget: the refined ELBO of a trained run under several
(steps, samples, lr) settings, on the same test examples, against the amortized ELBO.

    python scripts/svi_convergence.py runs/reproduce/ptb_gaps/gaussian --examples 32 \\
        --setting 100,4,0.05 --setting 300,8,0.02 --setting 1000,8,0.01

Each setting is STEPS,SAMPLES,LR of `textvae evaluate --gaps` (--svi-steps, --svi-samples, --svi-lr). The
refined ELBO can only be trusted once a larger budget stops raising it; the approximation gap of the
report is log p(x) minus this ELBO, so an unconverged refinement inflates it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from textvae.core.gaps import inference_gaps  # noqa: E402
from textvae.errors import UserError  # noqa: E402
from textvae.pipeline import load_run, split_batches  # noqa: E402


def setting(text: str) -> tuple[int, int, float]:
    try:
        steps, samples, lr = text.split(",")
        return int(steps), int(samples), float(lr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STEPS,SAMPLES,LR, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a trained text run")
    parser.add_argument("--examples", type=int, default=32, help="test sentences, spread over the split")
    parser.add_argument("--setting", type=setting, action="append", required=True, metavar="STEPS,SAMPLES,LR")
    parser.add_argument("--elbo-samples", type=int, default=20)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        run = load_run(args.run_dir)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    batches = split_batches(run, "test", args.examples)
    sentences = sum(batch.size for batch in batches)
    print(f"{args.run_dir}: {sentences} test sentences, ELBOs by {args.elbo_samples} draws, {args.precision}")
    print(f"{'steps':>6} {'samples':>7} {'lr':>6} {'amortized':>10} {'refined':>10} {'gain':>7} {'seconds':>8}")
    for steps, samples, lr in args.setting:
        start = time.perf_counter()
        report = inference_gaps(run.model, batches, run.device, float("nan"), steps, lr, samples,
                                args.elbo_samples, precision=args.precision)  # fmt: skip
        amortized, refined = report["elbo_amortized"], report["elbo_refined"]
        print(f"{steps:>6} {samples:>7} {lr:>6} {amortized:>10.3f} {refined:>10.3f} {refined - amortized:>7.3f} "
              f"{time.perf_counter() - start:>8.1f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
