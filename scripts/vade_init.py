"""How well a pretrained VaDE autoencoder's code clusters, before the VaDE phase: Gaussian mixtures of
several kinds fitted (scikit-learn) on the training posterior means, scored by Hungarian accuracy and NMI.

    textvae train configs/image/vade_mnist.yaml --run-dir runs/vade --set train.max_steps=12000  # pretraining only
    python scripts/vade_init.py runs/vade

Rows: the diagonal mixture the paper's VaDE initializes its prior with; the same on the code rotated to its principal
axes (a rotation the encoder's last layer could absorb); a full-covariance mixture; k-means. Every fit is
the best of --n-init by its own criterion (likelihood; inertia for k-means): no labels are used to choose.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from image_baselines.data import load_mnist  # noqa: E402
from image_baselines.metrics import cluster_accuracy, nmi  # noqa: E402
from image_baselines.run import load_image_run, posterior_means  # noqa: E402
from textvae import config as config_lib  # noqa: E402
from textvae.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a VaDE run (its last.pt; best.pt with --checkpoint best)")
    parser.add_argument("--checkpoint", default="last", choices=("last", "best"))
    parser.add_argument("--n-init", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
