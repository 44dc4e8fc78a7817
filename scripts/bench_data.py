"""Start-up cost of large corpora: tokenize once into the encoded-corpus cache, then memory-map it.

Builds synthetic corpora in a temporary directory (PTB's training sentences repeated to 100k / 1M / 10M
lines; 500 of PTB's valid and test sentences) and, per size, runs in a fresh process each:
  first   a new run: load + count the vocabulary + tokenize + write the cache, until the first batch;
  resume  the same run again (tokenizer in the run directory, cache reused), until the first batch.
It prints the wall time of each (the process's whole life: Python, imports and all), the tokenization rate
(training sentences / seconds of the encoding pass) and the peak RSS: of the process, and of its largest
tokenizing worker (forked; they share the parent's pages, so the two do not add up).

    python scripts/bench_data.py                                  # 100k, 1M, 10M with this checkout
    python scripts/bench_data.py --sizes 1000000 --before /tmp/before   # also an older checkout at 1M
    python scripts/bench_data.py --sizes "" --train 1000000 --before /tmp/before   # `textvae train`, 1 step

`--before DIR` runs the same steps with the textvae of DIR (a checkout without the cache: corpus read into
Python lists, a tensor per sentence), for the figures before issue 22.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ["data.vocab_size=10000", "data.max_length=100"]  # the PTB configs' vocabulary and length, not tiny's
VALID = 500  # sentences of PTB's valid and test files in the corpora's


def make_corpus(directory: Path, size: int, ptb: Path) -> Path:
    """directory/{train,valid,test}.txt: PTB's training lines repeated to `size` lines; PTB's first valid and
    test lines."""
    if (directory / "test.txt").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    lines = (ptb / "ptb.train.txt").read_bytes().splitlines(keepends=True)
    with open(directory / "train.txt", "wb") as handle:
        for start in range(0, size, len(lines)):
            handle.writelines(lines[: min(len(lines), size - start)])
    for split in ("valid", "test"):  # short: `textvae train` evaluates at its last step
        kept = (ptb / f"ptb.{split}.txt").read_bytes().splitlines(keepends=True)[:VALID]
        (directory / f"{split}.txt").write_bytes(b"".join(kept))
    return directory


def child(corpus: Path, run_dir: Path, workers: int) -> dict:
    """One start-up in this process: the data steps of `textvae train` until the first training batch."""
    started = time.perf_counter()
    from textvae import config as config_lib
    from textvae.data.batching import TextSplit

    config = config_lib.load(ROOT / "configs" / "text" / "tiny.yaml", [f"data.corpus={corpus}", *DATA])
    phases = {"import": time.perf_counter() - started}
    try:
        from textvae.data import store
    except ImportError:  # a checkout before the cache: the pipeline of the time
        store = None
    if store is not None:
        from textvae.data import passes

        tokenizer_dir = run_dir / "tokenizer"
        encode_seconds = []
        build = store.build_entry

        def timed_build(*args, **kwargs):
            mark = time.perf_counter()
            build(*args, **kwargs)
            encode_seconds.append(time.perf_counter() - mark)

        store.build_entry = timed_build
        mark = time.perf_counter()
        source = store.resolve_source(config.data.corpus, config.data.holdout)
        phases["checksum"] = time.perf_counter() - mark
        mark = time.perf_counter()
        tokenizer = store.run_tokenizer(config.data, source, tokenizer_dir, workers)
        phases["tokenizer"] = time.perf_counter() - mark
        mark = time.perf_counter()
        splits = store.encoded_splits(config.data, tokenizer, ("train", "valid"), source, workers)
        phases["encode"] = time.perf_counter() - mark
        encoded = encode_seconds[0] if encode_seconds else None
        workers = passes.default_workers() if not workers else workers
    else:
        from textvae.data.corpus import load_corpus
        from textvae.data.tokenizer import build_tokenizer, load_tokenizer

        mark = time.perf_counter()
        corpus_data = load_corpus(config.data.corpus, config.data.holdout)
        phases["read"] = time.perf_counter() - mark
        mark = time.perf_counter()
        tokenizer_dir = run_dir / "tokenizer"
        if (tokenizer_dir / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(tokenizer_dir)
        else:
            tokenizer = build_tokenizer(config.data, corpus_data.splits["train"], tokenizer_dir)
        phases["tokenizer"] = time.perf_counter() - mark
        mark = time.perf_counter()
        splits = {name: TextSplit(corpus_data.splits[name], tokenizer, config.data.max_length)
                  for name in ("train", "valid")}  # fmt: skip
        phases["encode"] = encoded = time.perf_counter() - mark
        workers = 1
    mark = time.perf_counter()
    train = splits["train"]
    plan = train.plan(0, config.train.batch_size, config.train.max_tokens, config.train.seed)
    batch = train.collate(plan[0])
    phases["plan+batch"] = time.perf_counter() - mark
    return {
        "sentences": len(train),
        "first_batch": list(batch.tokens.shape),
        "in_process_s": time.perf_counter() - started,
        "phases": {k: round(v, 2) for k, v in phases.items()},
        "encode_s": encoded,
        "workers": workers,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def measure(corpus: Path, run_dir: Path, cache: Path, checkout: Path, workers: int) -> dict:
    """One start-up in a fresh process; its whole wall time."""
    env = dict(os.environ, TEXTVAE_CACHE_DIR=str(cache), PYTHONPATH=str(checkout))
    command = [sys.executable, __file__, "--child", str(corpus), str(run_dir), "--workers", str(workers)]
    mark = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=checkout)
    wall = time.perf_counter() - mark
    if out.returncode:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def row(label: str, size: int, first: dict, resume: dict) -> str:
    rate = first["sentences"] / first["encode_s"] if first["encode_s"] else float("nan")
    rss = max(first["rss_mb"], resume["rss_mb"]) / 1024
    worker = first["worker_rss_mb"] / 1024
    return (f"| {label} | {size:,} | {first['wall_s']:.1f} | {resume['wall_s']:.1f} | {rate / 1000:,.0f}k "
            f"({first['workers']}) | {rss:.2f} | {worker:.2f} |")  # fmt: skip


# Runs a command and reports its wall time and peak RSS (of the largest process of its tree).
WRAPPER = """import json, resource, subprocess, sys, time
mark = time.perf_counter()
out = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(json.dumps({"rc": out.returncode, "wall_s": time.perf_counter() - mark, "err": out.stderr[-2000:],
                  "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"""


def measure_train(corpus: Path, run_dir: Path, cache: Path, checkout: Path, steps: int) -> dict:
    """`textvae train` of the tiny model on `corpus` to `steps` steps (resuming when run_dir has a checkpoint)."""
    overrides = [f"data.corpus={corpus}", *DATA, f"train.max_steps={steps}", "train.num_threads=1"]
    command = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "textvae", "train",
               str(checkout / "configs" / "text" / "tiny.yaml"), "--run-dir", str(run_dir)]  # fmt: skip
    command += [part for override in overrides for part in ("--set", override)]
    env = dict(os.environ, TEXTVAE_CACHE_DIR=str(cache), PYTHONPATH=str(checkout))
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=checkout)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"]:
        raise SystemExit(f"textvae train failed:\n{result['err']}")
    return result


def fresh(workdir: Path, prefix: str, label: str, size: int, ptb: Path) -> tuple[Path, Path, Path]:
    """The synthetic corpus of `size` sentences, and an emptied cache and run directory for one measurement."""
    corpus = make_corpus(workdir / f"corpus_{size}", size, ptb)
    cache, run_dir = workdir / f"{prefix}cache_{label}_{size}", workdir / f"{prefix}run_{label}_{size}"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    return corpus, cache, run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--before", type=Path, help="an older checkout to measure the same way")
    parser.add_argument("--before-sizes", default="1000000", help="sizes for --before (its memory grows fast)")
    parser.add_argument("--train", default="", help="sizes at which to also time `textvae train` (1 step, then "
                        "resumed for 1 more) of the tiny model, e.g. 1000000")  # fmt: skip
    parser.add_argument("--workers", type=int, default=0, help="tokenizing processes (0: one per CPU)")
    parser.add_argument("--workdir", type=Path, help="where corpora and caches go (default: a temporary dir)")
    parser.add_argument("--ptb", type=Path, default=None, help="directory of ptb.{train,valid,test}.txt")
    parser.add_argument("--child", nargs=2, metavar=("CORPUS", "RUN_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), Path(args.child[1]), args.workers)))
        return
    sys.path.insert(0, str(ROOT))
    from textvae.data.corpus import data_dir

    ptb = args.ptb or data_dir() / "ptb"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_data-"))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    checkouts = [("after", ROOT, sizes)]
    if args.before:
        checkouts.insert(0, ("before", args.before.resolve(), [int(s) for s in args.before_sizes.split(",")]))
    print(f"# {os.cpu_count()} CPUs; corpora and caches in {workdir}")
    print("| code | sentences | first start-up s | resume start-up s | tokenize sent/s (workers) | "
          "peak RSS GB | worker RSS GB |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, checkout, label_sizes in checkouts:
        for size in label_sizes:
            corpus, cache, run_dir = fresh(workdir, "", label, size, ptb)
            first = measure(corpus, run_dir, cache, checkout, args.workers)
            resume = measure(corpus, run_dir, cache, checkout, args.workers)
            print(row(label, size, first, resume), flush=True)
            print(f"<!-- first {json.dumps(first)} -->\n<!-- resume {json.dumps(resume)} -->", flush=True)
    train_sizes = [int(s) for s in args.train.split(",") if s]
    if train_sizes:
        print("\n| code | sentences | `textvae train`, 1 step: s | resumed, 1 more step: s | peak RSS GB |")
        print("|---|---:|---:|---:|---:|")
    for label, checkout, _ in checkouts:
        for size in train_sizes:
            corpus, cache, run_dir = fresh(workdir, "train_", label, size, ptb)
            first = measure_train(corpus, run_dir, cache, checkout, 1)
            resume = measure_train(corpus, run_dir, cache, checkout, 2)
            rss = max(first["rss_mb"], resume["rss_mb"]) / 1024
            print(f"| {label} | {size:,} | {first['wall_s']:.1f} | {resume['wall_s']:.1f} | {rss:.2f} |", flush=True)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
