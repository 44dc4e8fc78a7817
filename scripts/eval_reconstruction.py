"""How much of a sentence the latent code carries: greedy reconstruction of the first N test sentences.

    python scripts/eval_reconstruction.py RUN_DIR [--lm-run LM_RUN_DIR] [-n 200] [--split test] [--json]

A thin wrapper of `textvae evaluate RUN_DIR --reconstruction` (textvae/quality.py), which does this on the
whole split or `--max-examples` spread over it. It adds one thing: with --lm-run, the same figures for a
language model's unconditional samples against the same inputs, a floor that no information about the
input can reach.
"""

from __future__ import annotations

import argparse
import json

import textvae
from textvae.data.batching import TextSplit
from textvae.data.corpus import load_corpus
from textvae.generate import Decoding
from textvae.quality import reconstruct_split, reconstruction_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--lm-run", help="a language-model run whose samples give the floor")
    parser.add_argument("-n", type=int, default=200, help="the first N sentences of the split")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model = textvae.load(args.run_dir)
    corpus = load_corpus(model.run.config.data.corpus, model.run.config.data.holdout)
    tokenizer = model.tokenizer
    max_length = model.run.config.data.max_length
    inputs = TextSplit(corpus.splits[args.split][: args.n], tokenizer, max_length)
    # references as the model sees them (its vocabulary's <unk>s, truncation)
    references, outputs = reconstruct_split(model.model, tokenizer, inputs, Decoding(max_length=max_length + 1),
                                            model.device)  # fmt: skip
    result = {"sentences": len(inputs), "split": args.split, "decoding": "greedy from the posterior mean"}
    result["vae"] = reconstruction_scores(references, outputs)
    if args.lm_run:
        samples = textvae.load(args.lm_run).sample(len(inputs), seed=args.seed, strategy="sample")
        result["lm_samples_floor"] = reconstruction_scores(references, samples)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['sentences']} {args.split} sentences, {result['decoding']}")
    for name in ("vae", "lm_samples_floor"):
        if name in result:
            print(f"{name:>18}: BLEU {result[name]['bleu']:6.2f}  token accuracy {result[name]['token_accuracy']:.4f}")


if __name__ == "__main__":
    main()
