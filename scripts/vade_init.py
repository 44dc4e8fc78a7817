"""How well a pretrained VaDE autoencoder's code clusters, before the VaDE phase: Gaussian mixtures of
several kinds fitted (scikit-learn) on the training posterior means, scored by Hungarian accuracy and NMI.

    textvae train configs/image/vade_mnist.yaml --run-dir runs/vade --set train.max_steps=12000  # pretraining only
    python scripts/vade_init.py runs/vade

Rows: the diagonal mixture the paper's VaDE initializes its prior with; the same on the code rotated to its principal
axes (a rotation the encoder's last layer could absorb); a full-covariance mixture; k-means; the clusters that
UMAP + a GMM find on the code's manifold (N2D, image_baselines.run.manifold_clusters) and the full and diagonal
mixtures of those clusters' Gaussians (model.mixture_init umap: what the VaDE phase starts from; test images
are scored by that mixture). Every fit is the best of --n-init by its own criterion (likelihood; inertia for
k-means): no labels are used to choose. --restarts N also fits N single full-covariance GMMs (scikit-learn
seeds 0..N-1) and prints the spread of their accuracy: how much of a GMM initialization is luck.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from image_baselines.data import load_mnist  # noqa: E402
from image_baselines.metrics import cluster_accuracy, nmi  # noqa: E402
from image_baselines.models import VaDE  # noqa: E402
from image_baselines.run import (  # noqa: E402
    load_image_run,
    manifold_clusters,
    mixture_of_clusters,
    posterior_means,
)
from textvae import config as config_lib  # noqa: E402
from textvae.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a VaDE run (its last.pt; best.pt with --checkpoint best)")
    parser.add_argument("--checkpoint", default="last", choices=("last", "best"))
    parser.add_argument("--n-init", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--restarts", type=int, default=0, help="single full-covariance GMM fits to compare")
    args = parser.parse_args(argv)
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    try:
        config = config_lib.load(args.run_dir / "config.yaml")
        model, device, step = load_image_run(args.run_dir, config, args.checkpoint)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    splits = load_mnist(config.data.corpus, config.data.holdout, binarize=config.data.binarize == "dynamic")
    train_x, test_x = (posterior_means(model, splits[name], config.train.eval_batch_size, device).double().numpy()
                       for name in ("train", "test"))  # fmt: skip
    train_y, test_y = splits["train"].labels, splits["test"].labels
    center = train_x.mean(0)
    _, _, axes = np.linalg.svd(train_x - center, full_matrices=False)  # rows: principal directions

    def rotate(x: np.ndarray) -> np.ndarray:
        return (x - center) @ axes.T

    k = config.model.num_clusters
    fits = {
        "diagonal GMM (the paper's init)": (GaussianMixture(k, covariance_type="diag", reg_covar=1e-5,
                                                       n_init=args.n_init, random_state=args.seed), None),
        "diagonal GMM, principal axes": (GaussianMixture(k, covariance_type="diag", reg_covar=1e-5,
                                                         n_init=args.n_init, random_state=args.seed), rotate),
        "full-covariance GMM": (GaussianMixture(k, covariance_type="full", reg_covar=1e-5, n_init=args.n_init,
                                                random_state=args.seed), None),
        "k-means": (KMeans(k, n_init=args.n_init, random_state=args.seed), None),
    }  # fmt: skip
    print(f"{args.run_dir} ({args.checkpoint}.pt, step {step}): {len(train_x)} train / {len(test_x)} test codes")
    print(f"{'mixture':<30} {'train acc':>9} {'train nmi':>9} {'test acc':>9} {'test nmi':>9} {'avg loglik':>10}")
    for name, (estimator, transform) in fits.items():
        fit_x, eval_x = (transform(train_x), transform(test_x)) if transform else (train_x, test_x)
        estimator.fit(fit_x)
        train_c = torch.as_tensor(estimator.predict(fit_x))
        test_c = torch.as_tensor(estimator.predict(eval_x))
        score = f"{estimator.score(fit_x):>10.3f}" if hasattr(estimator, "score_samples") else f"{'':>10}"
        print(f"{name:<30} {cluster_accuracy(train_y, train_c):>9.3f} {nmi(train_y, train_c):>9.3f} "
              f"{cluster_accuracy(test_y, test_c):>9.3f} {nmi(test_y, test_c):>9.3f} {score}")  # fmt: skip
    labels = manifold_clusters(train_x, k, args.seed)
    rows = [("UMAP + GMM clusters (N2D)", labels, None)]
    for kind in ("full", "diag"):
        mixture = mixture_of_clusters(train_x, labels, k, kind)
        prior = VaDE(dataclasses.replace(config.model, mixture_covariance=kind))  # the run's own mixture density
        prior.init_mixture(*(torch.as_tensor(v, dtype=torch.float32) for v in mixture))
        rows.append((f"  their Gaussians, {kind}", *(_assign(prior, x) for x in (train_x, test_x))))
    for name, train_c, test_c in rows:
        train_c = torch.as_tensor(train_c)
        test_part = f"{'':>19}"  # UMAP clusters only the training codes
        if test_c is not None:
            test_c = torch.as_tensor(test_c)
            test_part = f"{cluster_accuracy(test_y, test_c):>9.3f} {nmi(test_y, test_c):>9.3f}"
        print(f"{name:<30} {cluster_accuracy(train_y, train_c):>9.3f} {nmi(train_y, train_c):>9.3f} {test_part}")
    if args.restarts:
        runs = []
        for seed in range(args.restarts):
            fit = GaussianMixture(k, covariance_type="full", reg_covar=1e-5, random_state=seed).fit(train_x)
            runs.append((fit.score(train_x), cluster_accuracy(train_y, torch.as_tensor(fit.predict(train_x)))))
        accuracy = sorted(a for _, a in runs)
        print(
            f"{args.restarts} single full-covariance GMM fits, train accuracy: min {accuracy[0]:.3f}, median "
            f"{accuracy[len(accuracy) // 2]:.3f}, max {accuracy[-1]:.3f}; the most likely fit's: {max(runs)[1]:.3f}"
        )
    return 0


def _assign(prior: VaDE, x: np.ndarray) -> torch.Tensor:
    """Each code's most probable mixture component under the prior, as VaDE's q(c|x) starts. x: [N, D] -> [N]."""
    with torch.no_grad():
        return prior.responsibilities(torch.as_tensor(x, dtype=torch.float32)).argmax(-1)


if __name__ == "__main__":
    sys.exit(main())
