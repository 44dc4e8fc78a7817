"""A supervised reference for `textvae probe`: logistic regression on tf-idf n-grams of the sentences themselves,
fitted on the same seeded draws of N labeled training sentences as the probe, accuracy on the test split.

The probe asks how much of a label a 32-dimensional code holds; this asks what a linear classifier reaches from
the words with the same labels, which puts the probe's accuracies (and a target such as 95% at 10,000 labels)
on the scale of the data. The regularization C is chosen by 5-fold cross-validation on each labeled draw (never
on the test split).

    python scripts/probe_bow_reference.py [--corpus-dir ../shared/data/yelp_sentiment] [--labels 100,1000,10000]
                                          [--seeds 5] [--ngrams 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textvae.probe import chance, draw_rows  # noqa: E402  (the probe's own draws: the same sentences)


def read_split(directory: Path, split: str) -> tuple[list[str], np.ndarray]:
    text, labels = directory / f"{split}.txt", directory / f"{split}.labels"
    if not text.is_file() or not labels.is_file():
        raise SystemExit(f"error: {directory} needs {split}.txt and a line-aligned {split}.labels")
    sentences = text.read_text(encoding="utf-8").splitlines()
    values = np.asarray([int(v) for v in labels.read_text(encoding="utf-8").split()])
    if len(values) != len(sentences):
        raise SystemExit(f"error: {labels} has {len(values)} labels for {len(sentences)} sentences")
    return sentences, values


def accuracy(train: list[str], train_y: np.ndarray, test: list[str], test_y: np.ndarray, ngrams: int) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegressionCV

    vectorizer = TfidfVectorizer(ngram_range=(1, ngrams), token_pattern=r"\S+")
    features = vectorizer.fit_transform(train)
    folds = min(5, int(np.min(np.unique(train_y, return_counts=True)[1])))
    with warnings.catch_warnings():  # scikit-learn's notices of future defaults, one per fit
        warnings.simplefilter("ignore", FutureWarning)
        classifier = LogisticRegressionCV(Cs=[0.1, 1.0, 10.0, 100.0], cv=folds, scoring="accuracy", max_iter=3000)
        classifier.fit(features, train_y)
    return float(np.mean(classifier.predict(vectorizer.transform(test)) == test_y))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus-dir", type=Path, default=ROOT.parent / "shared/data/yelp_sentiment")
    parser.add_argument("--labels", default="100,1000,10000")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ngrams", type=int, default=1, help="the longest n-gram (1: words)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = sorted(int(n) for n in args.labels.split(","))
    train, train_y = read_split(args.corpus_dir, "train")
    test, test_y = read_split(args.corpus_dir, args.split)
    if sizes[-1] > len(train) or sizes[0] < 2 or args.seeds < 1:
        raise SystemExit(f"error: --labels must lie in 2..{len(train)} and --seeds be positive")
    draws = [draw_rows(len(train), sizes[-1], seed) for seed in range(args.seeds)]
    result = {"reference": f"tf-idf 1-{args.ngrams}-grams, logistic regression, C by 5-fold CV on the draw",
              "chance": round(chance(test_y), 4), "split": args.split, "accuracy": {}}  # fmt: skip
    for size in sizes:
        scores = [accuracy([train[i] for i in rows[:size]], train_y[rows[:size]], test, test_y, args.ngrams)
                  for rows in draws]  # fmt: skip
        result["accuracy"][str(size)] = {"median": round(statistics.median(scores), 4),
                                         "min": round(min(scores), 4), "max": round(max(scores), 4)}  # fmt: skip
        if not args.json:
            print(f"{size:>6} labels: median {statistics.median(scores):.4f} (min {min(scores):.4f}, "
                  f"max {max(scores):.4f})", flush=True)  # fmt: skip
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
