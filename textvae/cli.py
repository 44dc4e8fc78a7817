"""The `textvae` command: train, evaluate, sample, reconstruct, interpolate, probe.

It prints; a user's mistake is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from textvae.errors import TrainingStopped, UserError


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line, `textvae: error: ...`, exit status 2, as every other."""

    def error(self, message: str):
        self.exit(2, f"textvae: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="textvae", description="Train, evaluate and use sentence VAEs.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a YAML config (resumes RUN_DIR if it has one)")
    train.add_argument("config", help="YAML config file")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set optim.lr=0.0005 (repeatable)")  # fmt: skip
    train.add_argument("--run-dir", help="run directory (default: runs/<config name>)")

    evaluate = commands.add_parser("evaluate", help="evaluate a trained run on a split")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--split", default="test", choices=["train", "valid", "test"])
    evaluate.add_argument("--iw-samples", type=int, default=500, help="importance samples for the NLL (default 500)")
    evaluate.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--max-examples", type=int, default=None, metavar="N",
                          help="evaluate N examples spread evenly over the split (default: all of them)")  # fmt: skip
    evaluate.add_argument(
        "--gaps",
        action="store_true",
        help="also the approximation and amortization gaps (Cremer et al. 2018), by SVI refinement",
    )
    evaluate.add_argument("--svi-steps", type=int, default=300, help="SVI steps per example for --gaps (default 300)")
    evaluate.add_argument("--svi-lr", type=float, default=0.02, help="Adam step size of the SVI refinement")
    evaluate.add_argument("--svi-samples", type=int, default=8, help="draws per SVI step (default 8)")
    evaluate.add_argument("--elbo-samples", type=int, default=20,
                          help="draws per example for the ELBOs of --gaps (default 20)")  # fmt: skip
    evaluate.add_argument("--reconstruction", action="store_true",
                          help="also BLEU, exact match and token accuracy of the sentences decoded from their "
                          "posterior means")  # fmt: skip
    evaluate.add_argument(
        "--interpolation",
        type=int,
        default=0,
        metavar="N",
        help="also N random pairs of the split (seeded), --steps points each: the share of paths with >= K-2 "
        "distinct sentences and of steps that do not move away from the end",
    )
    evaluate.add_argument("--steps", type=int, default=7, help="points per interpolation, both ends (default 7)")
    evaluate.add_argument("--decode", default="greedy", choices=["greedy", "beam"],
                          help="decoding of --reconstruction and --interpolation (default greedy)")  # fmt: skip
    evaluate.add_argument("--beam-size", type=int, default=5)
    evaluate.add_argument("--seed", type=int, default=0, help="draws the --interpolation pairs (default 0)")

    sample = commands.add_parser("sample", help="decode sentences (or images) from the prior")
    sample.add_argument("run_dir")
    sample.add_argument("-n", type=int, default=5, help="number of sentences or images (default 5)")
    sample.add_argument(
        "--label",
        type=int,
        default=None,
        help="image runs: the digit (label CVAE) or mixture component (VaDE) to generate from",
    )
    sample.add_argument("--out", default=None, help="image runs: PNG file (default RUN_DIR/images/sample.png)")
    _decoding_options(sample)

    reconstruct = commands.add_parser("reconstruct", help="encode sentences and decode their posterior means")
    reconstruct.add_argument("run_dir")
    reconstruct.add_argument("sentences", nargs="+", metavar="SENTENCE")
    _decoding_options(reconstruct)

    interpolate = commands.add_parser("interpolate", help="decode points between two sentences' posterior means")
    interpolate.add_argument("run_dir")
    interpolate.add_argument("sentence_a", metavar="SENTENCE_A")
    interpolate.add_argument("sentence_b", metavar="SENTENCE_B")
    interpolate.add_argument("--steps", type=int, default=5, help="points, both ends included (default 5)")
    interpolate.add_argument("--method", default="lerp", choices=["lerp", "slerp"])
    interpolate.add_argument("--dedupe", action="store_true", help="drop a line equal to the one before it")
    _decoding_options(interpolate)

    probe = commands.add_parser("probe", help="linear probe of the latent code on a labeled corpus")
    probe.add_argument("run_dir")
    probe.add_argument("--labels", default="100,500,1000,2000,10000",
                       help="labeled training sentences per probe, comma-separated (default: %(default)s)")  # fmt: skip
    probe.add_argument("--seeds", type=int, default=5, help="draws of the labeled sentences (default 5)")
    probe.add_argument("--split", default="test", choices=["valid", "test"], help="where accuracy is measured")
    probe.add_argument("--random-encoder", action="store_true",
                       help="probe the run's model as initialized instead (a floor)")  # fmt: skip
    probe.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _decoding_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--decode", default="greedy", choices=["greedy", "beam", "sample"])
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--length-penalty", type=float, default=1.0, help="beam: score / length**this")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="sample: keep the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="sample: nucleus mass (1: all)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per sentence (default: the run's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _train(args: argparse.Namespace) -> int:
    from textvae import config as config_lib
    from textvae.dispatch import train

    config = config_lib.load(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 talks
        train(config, run_dir)
        return 0
    print(f"run directory: {run_dir}")
    print(f"watch it with: tensorboard --logdir {run_dir / 'tb'}")
    metrics = train(config, run_dir)
    if metrics:
        from textvae.core.logs import summarize

        print(f"last validation: {summarize(metrics)}")
    print(f"checkpoints: {run_dir / 'checkpoints'}  metrics: {run_dir / 'metrics.jsonl'}")
    print(f"evaluate with: textvae evaluate {run_dir} --iw-samples 500")
    return 0


def _check_checkpoints(run_dir: Path) -> None:
    """Refuse a run with no checkpoint yet; say on stderr when last.pt stands in for a missing best.pt."""
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    checkpoints = run_dir / "checkpoints"
    if not (run_dir / "config.yaml").is_file() or (checkpoints / "best.pt").is_file():
        return  # not a run directory (loading says so) or one with a best checkpoint
    if not (checkpoints / "last.pt").is_file():
        raise UserError(f"{run_dir} has no checkpoint yet (stopped before its first one): "
                        "run the same `textvae train` command to go on")  # fmt: skip
    # best.pt comes with the first validation on the train.eval_every grid (not with the one at max_steps)
    print(f"textvae: note: {run_dir} has no best.pt yet (no validation at train.eval_every so far): "
          "using checkpoints/last.pt", file=sys.stderr)  # fmt: skip


def _evaluate(args: argparse.Namespace) -> int:
    from textvae.dispatch import evaluate_run

    if args.iw_samples < 1:
        raise UserError("--iw-samples must be at least 1")
    if args.max_examples is not None and args.max_examples < 1:
        raise UserError("--max-examples must be at least 1")
    run_dir = Path(args.run_dir)
    _check_checkpoints(run_dir)
    gaps = None
    if args.gaps:
        if args.svi_steps < 0 or args.svi_lr <= 0 or args.elbo_samples < 1 or args.svi_samples < 1:
            raise UserError("--svi-steps must be >= 0, --svi-lr > 0, --svi-samples and --elbo-samples >= 1")
        gaps = {"svi_steps": args.svi_steps, "svi_lr": args.svi_lr, "svi_samples": args.svi_samples,
                "elbo_samples": args.elbo_samples}  # fmt: skip
    quality = None
    if args.reconstruction or args.interpolation:
        if args.interpolation < 0 or args.steps < 2 or args.beam_size < 1:
            raise UserError("--interpolation must be >= 0, --steps >= 2 and --beam-size >= 1")
        quality = {"decode": args.decode, "beam_size": args.beam_size, "reconstruction": args.reconstruction,
                   "interpolations": args.interpolation, "steps": args.steps, "seed": args.seed}  # fmt: skip
    metrics = evaluate_run(run_dir, args.split, args.iw_samples, args.precision, gaps=gaps,
                           max_examples=args.max_examples, quality=quality)  # fmt: skip
    if args.json:
        print(json.dumps(metrics))
    else:
        keys = ("nelbo", "rec", "kl", "nll", "ppl", "mi", "au", "acc", "nmi", "sentences", "images", "tokens")
        for key in (*keys, "iw_samples"):
            if key in metrics:
                value = metrics[key]
                print(f"{key:>10}  {value:.3f}" if isinstance(value, float) else f"{key:>10}  {value}")
        for key, value in metrics.get("gaps", {}).items():
            print(f"{key:>18}  {value:.3f}" if isinstance(value, float) else f"{key:>18}  {value}")
        if "reconstruction" in metrics:
            rec = metrics["reconstruction"]
            print(f"reconstruction ({rec['decode']}, {rec['sentences']} sentences): BLEU {rec['bleu']:.2f}, "
                  f"exact match {rec['exact_match']:.4f}, token accuracy {rec['token_accuracy']:.4f}")  # fmt: skip
        if "interpolation" in metrics:
            path = metrics["interpolation"]
            print(f"interpolation ({path['decode']}, {path['paths']} pairs of {path['steps']} points, seed "
                  f"{path['seed']}): distinct {path['distinct']:.4f}, monotone {path['monotone']:.4f}")  # fmt: skip
        per = f"ppl per {metrics['ppl_per']}, <eos> counted; " if "ppl_per" in metrics else ""
        print(f"(split {args.split}; {per}mi uses the aggregate posterior over the whole split)")
        if "kl_estimate" in metrics:
            print(f"(kl: {metrics['kl_estimate']}; mi of the base Gaussian, before the flow)")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from textvae.api import load
    from textvae.dispatch import sample_images

    run_dir = Path(args.run_dir)
    _check_checkpoints(run_dir)
    if args.command == "sample" and (run_dir / "config.yaml").is_file():
        out = sample_images(run_dir, args.n, args.label, Path(args.out) if args.out else None, args.seed)
        if out is not None:
            print(out)
            return 0
    options = {"strategy": args.decode, "beam_size": args.beam_size, "length_penalty": args.length_penalty,
               "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}  # fmt: skip
    if args.max_length is not None:
        options["max_length"] = args.max_length
    model = load(run_dir)
    try:
        if args.command == "sample":
            if args.n < 1:
                raise UserError("-n must be at least 1")
            lines = model.sample(args.n, seed=args.seed, **options)
        elif args.command == "reconstruct":
            lines = model.reconstruct(args.sentences, seed=args.seed, **options)
        else:
            lines = model.interpolate(args.sentence_a, args.sentence_b, args.steps, args.method, args.dedupe,
                                      seed=args.seed, **options)  # fmt: skip
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.json:
        record = {"command": args.command, "sentences": lines, "decoding": options}
        if args.command == "reconstruct":
            record["inputs"] = args.sentences
        print(json.dumps(record))
    else:
        print("\n".join(lines))
    return 0


def _probe(args: argparse.Namespace) -> int:
    try:
        sizes = [int(part) for part in args.labels.split(",")]
    except ValueError:
        raise UserError(f"--labels takes comma-separated integers, not {args.labels!r}") from None
    if not sizes or min(sizes) < 1 or args.seeds < 1:
        raise UserError("--labels must be positive integers and --seeds at least 1")
    run_dir = Path(args.run_dir)
    _check_checkpoints(run_dir)
    from textvae.probe import probe_run

    result = probe_run(run_dir, sizes, args.seeds, args.split, args.random_encoder)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'labels':>8}  {'median':>7}  {'min':>7}  {'max':>7}   ({args.seeds} draws each)")
    for size, row in result["accuracy"].items():
        print(f"{size:>8}  {row['median']:7.4f}  {row['min']:7.4f}  {row['max']:7.4f}")
    print(f"(accuracy on {result['test_sentences']} {args.split} sentences, chance {result['chance']:.4f}; "
          f"{result['encoder']} encoder; {result['probe']})")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING  # torchrun: rank 0 logs
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "probe":
            return _probe(args)
        return _generate(args)
    except TrainingStopped as error:
        print(f"textvae: {error}", file=sys.stderr)
        return error.exit_code
    except UserError as error:
        print(f"textvae: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an unwritable run directory, a full disk: the last checkpoint stays intact
        print(f"textvae: error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("textvae: interrupted", file=sys.stderr)
        return 130
