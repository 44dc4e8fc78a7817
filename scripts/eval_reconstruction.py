"""How much of a sentence the latent code carries: greedy reconstruction of N test sentences.

    python scripts/eval_reconstruction.py RUN_DIR [--lm-run LM_RUN_DIR] [-n 200] [--split test] [--json]

Reports corpus BLEU (sacrebleu, on the tokenized text) and token accuracy (share of input positions
whose token the reconstruction reproduces at the same position, <eos> included) of the VAE's
reconstructions; with --lm-run, the same figures for the language model's unconditional samples
against the same inputs, a floor that no information about the input can reach.
"""

from __future__ import annotations

import argparse
import json

import sacrebleu

import textvae
from textvae.data.corpus import load_corpus


def token_accuracy(references: list[str], outputs: list[str]) -> float:
    """Share of reference positions (words and the end) reproduced at the same position."""
    hits = total = 0
    for reference, output in zip(references, outputs):
        ref, out = reference.split() + ["</s>"], output.split() + ["</s>"]
        hits += sum(r == o for r, o in zip(ref, out))
        total += len(ref)
    return hits / max(1, total)


def scores(references: list[str], outputs: list[str]) -> dict[str, float]:
    bleu = sacrebleu.corpus_bleu(outputs, [references], tokenize="none").score
    return {"bleu": round(bleu, 2), "token_accuracy": round(token_accuracy(references, outputs), 4)}


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
    # references as the model sees them (its vocabulary's <unk>s, truncation), detokenized the same way
    inputs = corpus.splits[args.split][: args.n]
    references = [tokenizer.decode(tokenizer.encode(s)) for s in inputs]
    result = {"sentences": len(inputs), "split": args.split, "decoding": "greedy from the posterior mean"}
    result["vae"] = scores(references, model.reconstruct(inputs, seed=args.seed))
    if args.lm_run:
        samples = textvae.load(args.lm_run).sample(len(inputs), seed=args.seed, strategy="sample")
        result["lm_samples_floor"] = scores(references, samples)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['sentences']} {args.split} sentences, {result['decoding']}")
    for name in ("vae", "lm_samples_floor"):
        if name in result:
            print(f"{name:>18}: BLEU {result[name]['bleu']:6.2f}  token accuracy {result[name]['token_accuracy']:.4f}")


if __name__ == "__main__":
    main()
