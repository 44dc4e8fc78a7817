"""Training throughput of a config: real tokens/s and the share of this machine's matmul rate it reaches.

    python scripts/bench_train.py CONFIG [--set key=value ...] [--steps N] [--reference] [--json]
    python scripts/bench_train.py CONFIG --to-quality NLL [--set ...]     # time to a validation NLL
    python scripts/bench_train.py --to-quality NLL --from-run RUN          # the same, read off a trained run

Real tokens are predicted tokens (words + <eos>), padding not counted. Achieved GFLOP/s counts the
model's matmul FLOPs as its class counts them (`flops`: recurrent gates or attention and MLP blocks, output
projection, posterior and latent projections; backward = 2 x forward). The machine's matmul rate is measured
in the same run, precision and thread count, as the best of several repeats before and after the timed steps:
on a 2048^2 square
(`matmul_gflops`, the denominator of `ratio`) and at the step's own GEMM shapes (`step_shapes_gflops`,
FLOP-weighted, the denominator of `ratio_step_shapes`). `--reference` also runs the textbook fp32 LSTM VAE
step of ../shared/bench/textbook_lstm_vae.py at the same sizes and sentences per batch, in the same run, and
reports `reference_tokens_per_s` and `speedup`.
`--to-quality NLL` trains the config from scratch in a temporary run directory (`textvae train`) and prints the
steps and wall time until the validation NLL (IW-5, nats per sentence) first reaches NLL (`wall_s`: the run's
training clock, evaluations included; `process_s`: from the launch, start-up included), and tokens/s;
`reached: false` where no evaluation got there, with the run's last evaluation and its lowest (`best_nll`).
With `--from-run RUN` it trains nothing and reads the same figures off RUN's metrics.jsonl (the `seconds` of
each evaluation: the run's training clock, summed over resumed sessions), e.g. of a reproduction suite's run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from textvae import config as config_lib
from textvae import registry
from textvae.config import Config
from textvae.core.device import cpu_name, resolve_device, resolve_precision
from textvae.core.trainer import Trainer
from textvae.data.batching import TextSplit
from textvae.data.corpus import data_dir, load_corpus
from textvae.data.tokenizer import WordTokenizer, build_tokenizer
from textvae.models import build_text_model

QUALITY_IW_SAMPLES = 5  # --to-quality's validation NLL: IW-5, as the ptb_paper suite validates


def step_flops(config: Config, vocab: int, tokens: int, sentences: int) -> float:
    """Forward + backward matmul FLOPs of one training step (backward = 2 x forward), as the model counts them: the
    decoder once per importance sample under objective.iw_samples (once at z = mu in AE pretraining)."""
    samples = 1 if config.objective.pretrain_steps else config.objective.iw_samples
    return 3.0 * registry.spec(config.model.name).load().flops(config.model, vocab, tokens, sentences, samples)


def matmul_gflops(precision: str, device: torch.device | str = "cpu", size: int = 0, repeats: int = 20) -> float:
    """The measured square-matmul rate on `device` in `precision` (fp32 on CUDA runs as TF32, as in training)."""
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 2048)
    return gemm_gflops(precision, device, (size, size, size), repeats)


def gemm_gflops(precision: str, device: torch.device, shape: tuple[int, int, int], repeats: int = 10) -> float:
    """GFLOP/s of [m, k] @ [k, n] in `precision` on `device`, timed over `repeats` products after a warm-up."""
    m, k, n = shape
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _synchronize(device)
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


Shape = tuple[int, int, int]  # a GEMM [m, k] @ [k, n]


def step_shapes(config: Config, vocab: int, sentences: float, tokens: float) -> list[tuple[Shape, float]]:
    """The step's main GEMM shapes [m, k, n], each with its forward FLOPs per token (the weight of its rate)."""
    return registry.spec(config.model.name).load().gemm_shapes(config.model, vocab, sentences, tokens)


class MatmulProbe:
    """Best-of-repeats matmul rates, measured before and after the timed steps (the CPU's rate drifts)."""

    def __init__(self, precision: str, device: torch.device, shapes: list[tuple[Shape, float]]):
        self.precision, self.device, self.shapes = precision, device, shapes
        self.square = 0.0
        self.per_shape = [0.0] * len(shapes)

    def measure(self, rounds: int = 3) -> None:
        square = 8192 if self.device.type == "cuda" else 2048
        for _ in range(rounds):
            self.square = max(self.square, gemm_gflops(self.precision, self.device, (square,) * 3, 10))
            for i, (shape, _) in enumerate(self.shapes):
                self.per_shape[i] = max(self.per_shape[i], gemm_gflops(self.precision, self.device, shape, 10))

    def step_rate(self) -> float:
        """The FLOP-weighted (harmonic) mean rate over the step's shapes."""
        weights = [weight for _, weight in self.shapes]
        return sum(weights) / sum(w / rate for w, rate in zip(weights, self.per_shape))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated (CUDA) or the process's peak resident memory (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(config: Config):
    """The training split, the model, and a Trainer around them (its step is the one timed)."""
    corpus = load_corpus(config.data.corpus, config.data.holdout)
    if config.data.tokenizer == "word":
        tokenizer = WordTokenizer.build(corpus.splits["train"], config.data)
    else:
        tokenizer = build_tokenizer(config.data, corpus.splits["train"], Path(tempfile.mkdtemp()))
    data = TextSplit(corpus.splits["train"], tokenizer, config.data.max_length)
    device = resolve_device(config.train.device)
    model = build_text_model(config.model, tokenizer, config.objective.bow_weight > 0).to(device).train()
    trainer = Trainer(model, data, lambda _: {}, config, Path(tempfile.mkdtemp()), device)
    return data, len(tokenizer), device, trainer


def time_steps(config: Config, steps: int, probe_rounds: int = 3) -> dict:
    """Warm up for 10 steps, time `steps` more of the trainer's own step, probe the matmul rate around them."""
    data, vocab, device, trainer = build(config)
    plan = list(data.plan(0, config.train.batch_size, config.train.max_tokens, config.train.seed))
    plan = (plan * (1 + (10 + steps) // max(1, len(plan))))[: 10 + steps]
    mean_sentences = sum(len(p) for p in plan) / len(plan)
    mean_tokens = sum(sum(data.lengths[i] - 1 for i in p) for p in plan) / len(plan)
    precision = resolve_precision(config.train.precision, device)  # the probe measures the rate the step runs at
    probe = MatmulProbe(precision, device, step_shapes(config, vocab, mean_sentences, mean_tokens))
    probe.measure(probe_rounds)
    tokens = sentences = 0
    for i, indices in enumerate(plan):
        if i == 10:
            _synchronize(device)
            start, tokens, sentences = time.perf_counter(), 0, 0
        batch = data.collate(indices).to(device)
        trainer.train_step(batch)
        trainer.position.step += 1
        tokens += batch.num_tokens
        sentences += batch.size
    _synchronize(device)
    elapsed = time.perf_counter() - start
    memory = peak_memory_mb(device)
    probe.measure(probe_rounds)
    achieved = step_flops(config, vocab, tokens, sentences) / elapsed / 1e9
    return {
        "precision": precision,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "steps": steps,
        "sentences_per_batch": round(sentences / steps, 1),
        "tokens_per_s": round(tokens / elapsed, 1),
        "achieved_gflops": float(f"{achieved:.4g}"),  # 4 significant digits: a tiny model is not 0
        "matmul_gflops": float(f"{probe.square:.4g}"),
        "ratio": float(f"{achieved / probe.square:.4g}"),
        "step_shapes_gflops": float(f"{probe.step_rate():.4g}"),  # a tiny model's rate is not 0
        "ratio_step_shapes": float(f"{achieved / probe.step_rate():.4g}"),
        "peak_mem_mb": round(memory, 1),
    }


def reference_tokens_per_s(config: Config, batch: int, script: Path) -> float:
    """Real tokens/s of the textbook fp32 LSTM VAE step at this config's sizes, in a subprocess (2 threads)."""
    m = config.model
    if m.name != "lstm_vae":
        raise SystemExit("bench_train: --reference compares LSTM VAE steps; this config's model is " + m.name)
    train_file = data_dir() / "ptb" / "ptb.train.txt"
    command = [sys.executable, str(script), str(train_file), str(m.embedding_dim), str(m.hidden_size),
               str(m.latent_dim), str(batch), "6", "1"]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["tokens_per_s"])


def to_quality(args, target: float) -> dict:
    """Train from scratch with `textvae train`; stop at the first evaluation whose validation NLL <= target."""
    run_dir = Path(tempfile.mkdtemp(prefix="to_quality_")) / "run"
    sets = [item for override in args.overrides for item in ("--set", override)]
    command = [sys.executable, "-m", "textvae", "train", args.config, "--run-dir", str(run_dir), *sets,
               "--set", f"train.eval_iw_samples={QUALITY_IW_SAMPLES}"]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(run_dir.parent / "train.log", "w"))
    metrics = run_dir / "metrics.jsonl"
    while process.poll() is None and not (metrics.is_file() and first_reaching(metrics, target)["reached"]):
        time.sleep(2)
    process_s = round(time.perf_counter() - start, 1)  # start-up (data, tokenizer) included
    if process.poll() is None:
        process.terminate()  # SIGTERM: the run saves last.pt and stops
        process.wait()
    found = first_reaching(metrics, target) if metrics.is_file() else {"target_nll": target, "reached": False}
    return {"config": args.config, **found, "process_s": process_s,
            "tokens_per_s": _mean_tokens_per_s(run_dir / "tb"), "run_dir": str(run_dir)}  # fmt: skip


def quality_from_run(run_dir: Path, target: float) -> dict:
    """--to-quality off a trained run: its first evaluation at validation NLL <= target, and its tokens/s."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"bench_train: {run_dir} has no metrics.jsonl (not a run directory, or never evaluated)")
    result = {
        "run_dir": str(run_dir),
        **first_reaching(metrics, target),
        "tokens_per_s": _mean_tokens_per_s(run_dir / "tb"),
    }
    if result.get("iw_samples") not in (None, QUALITY_IW_SAMPLES):  # a tighter (or looser) bound than the target's
        print(
            f"bench_train: warning: {run_dir} validates with IW-{result['iw_samples']}, not the IW-"
            f"{QUALITY_IW_SAMPLES} that --to-quality's figures use: its NLL is not comparable",
            file=sys.stderr,
        )
    return result


def first_reaching(metrics: Path, target: float) -> dict:
    """The first evaluation in a run's metrics.jsonl whose validation NLL <= target (else the last one), with
    `wall_s` the run's training clock at that evaluation (None in lines logged before runs recorded it), and the
    lowest validation NLL up to it (`best_nll`, at `best_step`): where a run misses the target, how close it came;
    `phase`: "refit" when the evaluation was one of train.refit_encoder_steps' (core/refit.py), else "train"."""
    result = {"target_nll": target, "reached": False}
    for line in metrics.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        nll = record["metrics"]["nll"]
        result.update(step=record["step"], epoch=record["epoch"], val_nll=nll,
                      iw_samples=record["metrics"].get("iw_samples"), wall_s=record.get("seconds"),
                      phase=record.get("phase", "train"))  # fmt: skip
        if "best_nll" not in result or nll < result["best_nll"]:
            result.update(best_nll=nll, best_step=record["step"])
        if nll <= target:
            result["reached"] = True
            break
    return result


def _mean_tokens_per_s(tb_dir: Path) -> float | None:
    """The mean of the run's train/tokens_per_s scalars (TensorBoard), None before the first log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not tb_dir.is_dir():
        return None
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    if "train/tokens_per_s" not in events.Tags().get("scalars", []):
        return None
    values = [event.value for event in events.Scalars("train/tokens_per_s")]
    return round(sum(values) / len(values), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="the config to bench (not with --from-run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=60, help="timed steps (after 10 warm-up steps)")
    parser.add_argument("--reference", action="store_true", help="also time the textbook fp32 LSTM VAE step")
    textbook = Path(__file__).resolve().parents[2] / "shared" / "bench" / "textbook_lstm_vae.py"
    parser.add_argument("--reference-script", type=Path, default=textbook)
    parser.add_argument("--to-quality", type=float, metavar="NLL", help="time to this validation NLL")
    parser.add_argument("--from-run", type=Path, metavar="RUN", help="with --to-quality: read a trained run's log")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.from_run is not None:
        if args.to_quality is None or args.config is not None:
            parser.error("--from-run RUN goes with --to-quality NLL and no CONFIG")
        _print(quality_from_run(args.from_run, args.to_quality), args.json)
        return
    if args.config is None:
        parser.error("CONFIG is required")
    config = config_lib.load(args.config, args.overrides)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    torch.manual_seed(config.train.seed)
    if args.to_quality is not None:
        result = to_quality(args, args.to_quality)
    else:
        result = {"config": args.config, "cpu": cpu_name(), **time_steps(config, args.steps)}
        if args.reference:
            reference = reference_tokens_per_s(config, round(result["sentences_per_batch"]), args.reference_script)
            result["reference_tokens_per_s"] = round(reference, 1)
            result["speedup"] = round(result["tokens_per_s"] / reference, 2)
    _print(result, args.json)


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}  {value}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
