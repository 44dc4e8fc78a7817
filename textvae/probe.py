"""Linear probe of the latent code (Zhu et al. 2020, Table 3): logistic regression on the posterior means of N
labeled training sentences, accuracy on a labeled test split, over seeded draws of the N sentences.

    textvae probe RUN_DIR [--labels 100,500,1000,2000,10000] [--seeds 5] [--split test] [--json]
"""

from __future__ import annotations

import logging
import random
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textvae.data.batching import TextSplit
from textvae.data.corpus import load_corpus
from textvae.errors import UserError
from textvae.models import build_text_model
from textvae.pipeline import load_run
from textvae.quality import posterior_means

log = logging.getLogger(__name__)
DESCRIPTION = "logistic regression (scikit-learn, L2, C = 1) on standardized posterior means"


def draw_rows(count: int, size: int, seed: int) -> list[int]:
    """`size` distinct rows of range(count) drawn with `seed`; its first n rows are the draw of size n, so the
    draws of one seed are nested (100 labels are the first 100 of the 10,000)."""
    return random.Random(seed).sample(range(count), size)


def _logistic_regression():
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise UserError("the probe needs scikit-learn, a dependency of textvae: pip install -e . "
                        "(or pip install 'scikit-learn>=1.3')") from None  # fmt: skip
    # standardized, so that C means the same for every model's scale of the code (BN-VAE's gamma, ...)
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Test accuracy of a logistic regression fitted on (train_x [N, D], train_y [N]); test_x [M, D], test_y [M]."""
    classes = np.unique(train_y)
    if len(classes) == 1:  # a draw with one class: the only classifier it allows says that class
        return float(np.mean(test_y == classes[0]))
    classifier = _logistic_regression().fit(train_x, train_y)
    return float(np.mean(classifier.predict(test_x) == test_y))


def probe_curve(train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray, test_labels: np.ndarray,
                sizes: list[int], draws: list[list[int]]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """For each size n, the probe's test accuracy per draw (the first n rows of each draw of `train_codes`),
    and their median, min and max. codes: [N, D] / [M, D]; labels [N] / [M]. -> {str(n): {...}}."""
    curve = {}
    for size in sizes:
        accuracies = [
            probe_accuracy(train_codes[rows[:size]], train_labels[rows[:size]], test_codes, test_labels)
            for rows in draws
        ]
        curve[str(size)] = {
            "median": round(statistics.median(accuracies), 4),
            "min": round(min(accuracies), 4),
            "max": round(max(accuracies), 4),
            "per_seed": [round(a, 4) for a in accuracies],
        }
    return curve


def chance(labels: np.ndarray) -> float:
    """Accuracy of always saying the most frequent label: the floor a code without information reaches."""
    return float(np.max(np.unique(labels, return_counts=True)[1]) / max(1, len(labels)))


def _labeled(corpus, split: str) -> tuple[list[str], np.ndarray]:
    labels = corpus.labels.get(split)
    if labels is None:
        raise UserError(f"corpus {corpus.name!r} has no labels for its {split} split: the probe needs a "
                        f"line-aligned {split}.labels beside {split}.txt (one integer per sentence)")  # fmt: skip
    return corpus.splits[split], np.asarray(labels)


def probe_run(run_dir: Path, sizes: list[int], seeds: int = 5, split: str = "test", random_encoder: bool = False
              ) -> dict[str, Any]:  # fmt: skip
    """Probe a trained run's code on its corpus's labels: `seeds` draws of max(sizes) labeled training
    sentences, each size n probing with the draw's first n. `random_encoder` probes the run's model as
    initialized (train.seed), the floor that the architecture alone reaches."""
    run = load_run(run_dir)
    if not run.model.latent_dim:
        raise UserError("this run is a language model: it has no latent code to probe")
    if random_encoder:
        torch.manual_seed(run.config.train.seed)
        model = build_text_model(run.config.model, run.tokenizer, run.config.objective.bow_weight > 0)
        run.model = model.to(run.device).eval()
    corpus = load_corpus(run.config.data.corpus, run.config.data.holdout)
    train_sentences, train_labels = _labeled(corpus, "train")
    test_sentences, test_labels = _labeled(corpus, split)
    if max(sizes) > len(train_sentences):
        raise UserError(f"--labels {max(sizes)} is more than the {len(train_sentences)} labeled training sentences")
    draws = [draw_rows(len(train_sentences), max(sizes), seed) for seed in range(seeds)]
    used = sorted({row for rows in draws for row in rows})  # encode each drawn sentence once
    position = {row: i for i, row in enumerate(used)}
    max_length = run.config.data.max_length
    log.info("encoding %d drawn training and %d %s sentences", len(used), len(test_sentences), split)
    train_codes = posterior_means(run.model, TextSplit([train_sentences[i] for i in used], run.tokenizer, max_length),
                                  run.device).double().numpy()  # fmt: skip
    test_codes = posterior_means(run.model, TextSplit(test_sentences, run.tokenizer, max_length), run.device)
    curve = probe_curve(train_codes, train_labels[used], test_codes.double().numpy(), test_labels, sizes,
                        [[position[row] for row in rows] for rows in draws])  # fmt: skip
    return {
        "accuracy": curve,
        "chance": round(chance(test_labels), 4),
        "split": split,
        "test_sentences": len(test_sentences),
        "train_labeled": len(train_sentences),
        "seeds": seeds,
        "encoder": "random (as initialized)" if random_encoder else f"trained (step {run.step})",
        "probe": DESCRIPTION,
    }
