"""Wiring for image runs: MNIST + model + the shared trainer from a config, image reports, evaluation.

The same `textvae train` / `evaluate` / `sample` commands reach here (through textvae/dispatch.py) when
model.name is an image model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from image_baselines.data import ImageSplit, load_mnist
from image_baselines.metrics import cluster_accuracy, image_grid, nmi, save_png
from image_baselines.models import NUM_CLASSES, LabelCVAE, QuadrantCVAE, VaDE, build_image_model
from textvae.config import Config
from textvae.core import distributed
from textvae.core.device import resolve_device
from textvae.core.evaluation import evaluate, spread
from textvae.core.gaps import inference_gaps
from textvae.core.hooks import AtEndOfPretraining
from textvae.core.refit import check_refit, refit_encoder
from textvae.core.run import load_trained, open_run, save_config
from textvae.core.trainer import Trainer
from textvae.errors import UserError, require_extra

log = logging.getLogger(__name__)
IMAGE_KEYS = ("nelbo", "rec", "kl", "nll", "mi", "mi_ceiling", "mi_over", "au", "iw_samples", "kl_per_dim")


@torch.no_grad()
def image_metrics(
    model: nn.Module,
    split: ImageSplit,
    batch_size: int,
    iw_samples: int,
    device: torch.device,
    precision: str,
    population: str = "split",
) -> dict[str, Any]:
    """The shared evaluation (nelbo, rec, kl, IW nll, mi, au) over a split; acc and nmi for VaDE."""
    plan = split.ordered(batch_size)[distributed.rank() :: distributed.world_size()]
    batches = [split.collate(indices) for indices in plan]
    metrics = evaluate(model, batches, iw_samples, device, precision, population=population)
    out = {key: metrics[key] for key in IMAGE_KEYS}
    for key in ("kl_estimate", "au_estimate"):  # a flow posterior's Monte-Carlo estimates say so
        if key in metrics:
            out[key] = metrics[key]
    out["images"] = metrics["examples"]
    if isinstance(model, VaDE):
        was_training = model.training
        model.eval()
        clusters = torch.cat([model.cluster(batch.to(device)).cpu() for batch in batches])
        labels = torch.cat([batch.y for batch in batches])
        model.train(was_training)
        if distributed.active():
            clusters = torch.cat(distributed.gather(clusters))
            labels = torch.cat(distributed.gather(labels))
        out["acc"] = cluster_accuracy(labels, clusters)
        out["nmi"] = nmi(labels, clusters)
    return out


def image_report(split: ImageSplit, run_dir: Path, device: torch.device, seed: int = 0):
    """A callback for the trainer: reconstruction and sample grids, logged to TensorBoard and written as PNG
    under RUN_DIR/images/ (overwritten at each evaluation)."""
    fixed = split.collate(list(range(10)))

    def report(model: nn.Module) -> dict[str, torch.Tensor]:
        was_training = model.training
        model.eval()
        grids = {}
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            batch = fixed.to(device)
            if isinstance(model, QuadrantCVAE):
                given = batch.x * model.observed + 0.5 * (1 - model.observed)
                grids["completions"] = image_grid(torch.cat([given, model.complete(batch), batch.x]), rows=3)
            else:
                mu, _ = model.encode(batch)
                recon = torch.sigmoid(model.decode_logits(mu.unsqueeze(1), model.condition(batch)))[:, 0]
                grids["reconstructions"] = image_grid(torch.cat([batch.x, recon]), rows=2)
            if isinstance(model, LabelCVAE):
                labels = torch.arange(NUM_CLASSES, device=device).repeat_interleave(10)
                grids["samples_by_digit"] = image_grid(model.sample(labels), rows=NUM_CLASSES)
            elif isinstance(model, VaDE):
                rows = [model.sample_cluster(c, 10) for c in range(model.mu_c.shape[0])]
                grids["samples_by_cluster"] = image_grid(torch.cat(rows), rows=len(rows))
            elif not isinstance(model, QuadrantCVAE):
                z = torch.randn(64, 1, model.latent_dim, device=device)
                grids["samples"] = image_grid(torch.sigmoid(model.decode_logits(z, None))[:, 0], rows=8)
        model.train(was_training)
        for tag, grid in grids.items():
            save_png(grid, run_dir / "images" / f"{tag}.png")
        return {f"images/{tag}": grid for tag, grid in grids.items()}

    return report


def posterior_means(model: nn.Module, split: ImageSplit, batch_size: int, device: torch.device) -> torch.Tensor:
    """The encoder's mean for every image of a split, in order, on the CPU in fp32. -> [N, D]."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        mus = [model.encode(split.collate(b).to(device))[0].float().cpu() for b in split.ordered(batch_size)]
    model.train(was_training)
    return torch.cat(mus)


def mixture_initializer(split: ImageSplit, batch_size: int, device: torch.device, seed: int):
    """VaDE's end of pretraining: initialize the mixture prior on the training posterior means and copy its
    weights, means and (co)variances (diagonal or full, as the prior) into the model. model.mixture_init gmm (the
    paper's) fits a GMM (scikit-learn) on the means; umap takes the clusters of `manifold_clusters` and the
    Gaussian of each cluster's means. After squared-error pretraining the output layer's grey levels become logits
    first (ImageVAE.output_to_logits); q(z|x) starts narrow, a tenth of the code's spread (narrow_posterior)."""

    def init(model: nn.Module) -> None:
        from sklearn.mixture import GaussianMixture

        if model.pretrain_mse:
            model.output_to_logits()
        features = posterior_means(model, split, batch_size, device).double().numpy()
        kind, k = ("full" if model.full else "diag"), model.mu_c.shape[0]
        if model.mixture_init == "umap":
            weights, means, covariances = mixture_of_clusters(features, manifold_clusters(features, k, seed), k, kind)
        else:
            gmm = GaussianMixture(k, covariance_type=kind, random_state=seed, reg_covar=1e-5, n_init=5)
            gmm.fit(features)  # the best of 5 k-means-initialized fits, by likelihood
            weights, means, covariances = gmm.weights_, gmm.means_, gmm.covariances_
        model.init_mixture(*(torch.as_tensor(v, dtype=torch.float32) for v in (weights, means, covariances)))
        model.narrow_posterior(torch.as_tensor(features.var(0), dtype=torch.float32))
        model.to(device)
        log.info("mixture prior initialized (%s) on %d pretrained posterior means", model.mixture_init, len(features))

    return init


def manifold_clusters(features: np.ndarray, k: int, seed: int, neighbors: int = 20) -> np.ndarray:
    """N2D (McConville et al. 2020): cluster the local manifold of an autoencoder's code. UMAP (umap-learn) embeds
    the codes [N, D] in k dimensions (20 neighbours, min_dist 0: tight clusters), then a full-covariance GMM
    (the best of 5 fits, by likelihood) clusters the embedding. -> [N] labels in [0, k)."""
    from sklearn.mixture import GaussianMixture

    require_extra("image", "model.mixture_init umap (umap-learn) needs", "umap")
    import umap

    neighbors = min(neighbors, len(features) - 1)
    # n_jobs=1: a seed makes UMAP single-threaded anyway (it warns unless told)
    reducer = umap.UMAP(n_components=k, n_neighbors=neighbors, min_dist=0.0, random_state=seed, n_jobs=1)
    embedding = reducer.fit_transform(features)
    gmm = GaussianMixture(k, covariance_type="full", random_state=seed, reg_covar=1e-5, n_init=5)
    return gmm.fit(embedding).predict(embedding)


def mixture_of_clusters(
    features: np.ndarray, labels: np.ndarray, k: int, kind: str, reg: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mixture whose component c is the Gaussian (maximum likelihood, plus `reg` on the diagonal) of the
    features labelled c, weighted by its share: one M step of EM from hard labels. A cluster with fewer than two
    members gets the whole data's Gaussian. -> weights [k], means [k, D], covariances [k, D, D] (full) or [k, D]."""
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    weights = np.maximum(counts, 1.0) / np.maximum(counts, 1.0).sum()
    means, covariances = [], []
    for c in range(k):
        members = features[labels == c] if counts[c] >= 2 else features
        centered = members - members.mean(0)
        covariance = centered.T @ centered / len(members) + reg * np.eye(features.shape[1])
        means.append(members.mean(0))
        covariances.append(covariance if kind == "full" else np.diag(covariance))
    return weights, np.stack(means), np.stack(covariances)


def train_image(config: Config, run_dir: Path, device: torch.device | None) -> dict[str, Any] | None:
    """Train (or resume) an image run with the shared trainer; return the last validation metrics."""
    open_run(config, run_dir)
    splits = load_mnist(config.data.corpus, config.data.holdout, binarize=config.data.binarize == "dynamic")
    save_config(config, run_dir)
    log.info("MNIST: %s", ", ".join(f"{name} {len(split)} images" for name, split in splits.items()))
    torch.manual_seed(config.train.seed)  # the model's initialization depends on the seed alone
    model = build_image_model(config.model)
    device = device or resolve_device(config.train.device)
    train_cfg = config.train

    def evaluate_valid(m: nn.Module) -> dict[str, Any]:
        return image_metrics(m, splits["valid"], train_cfg.eval_batch_size, train_cfg.eval_iw_samples, device,
                             train_cfg.precision)  # fmt: skip

    hooks = []
    if isinstance(model, VaDE) and config.objective.pretrain_steps:
        init = mixture_initializer(splits["train"], train_cfg.eval_batch_size, device, train_cfg.seed)
        hooks.append(AtEndOfPretraining("mixture_init", init))
    check_refit(model, config)
    trainer = Trainer(model, splits["train"], evaluate_valid, config, run_dir, device,
                      report_images=image_report(splits["valid"], run_dir, device), hooks=hooks)  # fmt: skip
    metrics = trainer.fit()
    if train_cfg.refit_encoder_steps:
        metrics = refit_encoder(model, splits["train"], evaluate_valid, config, run_dir, device) or metrics
    return metrics


def load_image_run(run_dir: Path, config: Config, checkpoint: str = "best") -> tuple[nn.Module, torch.device, int]:
    model = build_image_model(config.model)
    step = load_trained(run_dir, config, model, checkpoint)
    device = resolve_device(config.train.device)
    return model.to(device).eval(), device, step


def evaluate_image_run(
    run_dir: Path,
    config: Config,
    split: str,
    iw_samples: int,
    precision: str,
    gaps: dict[str, Any] | None = None,
    max_examples: int | None = None,
) -> dict[str, Any]:
    model, device, step = load_image_run(run_dir, config)
    splits = load_mnist(config.data.corpus, config.data.holdout, binarize=config.data.binarize == "dynamic")
    data = splits[split]
    if max_examples is not None:
        data = data.subset(spread(len(data), max_examples))
    population = "split" if max_examples is None else "--max-examples part of the split"
    metrics = image_metrics(model, data, config.train.eval_batch_size, iw_samples, device, precision, population)
    metrics["split"] = split
    metrics["checkpoint_step"] = step
    if max_examples is not None:
        metrics["max_examples"] = max_examples
    if gaps is not None:
        batches = [data.collate(indices) for indices in data.ordered(config.train.eval_batch_size)]
        metrics["gaps"] = inference_gaps(
            model, batches, device, -metrics["nll"], **gaps, precision=precision, iw_samples=iw_samples
        )
    return metrics


def sample_images(run_dir: Path, config: Config, n: int, label: int | None, out: Path, seed: int = 0) -> None:
    """Generate n images from a trained run and write them as one PNG grid: from the prior, from one digit
    (label CVAE) or from one mixture component (VaDE)."""
    model, device, _ = load_image_run(run_dir, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        if isinstance(model, VaDE):
            components = model.mu_c.shape[0]
            if label is None or not 0 <= label < components:
                raise UserError(f"--label: a VaDE run needs a mixture component in 0..{components - 1}")
            images = model.sample_cluster(label, n)
        elif isinstance(model, LabelCVAE):
            if label is None or not 0 <= label < NUM_CLASSES:
                raise UserError(f"--label: a label CVAE run needs a digit in 0..{NUM_CLASSES - 1}")
            images = model.sample(torch.full((n,), label, dtype=torch.long, device=device))
        elif isinstance(model, QuadrantCVAE):
            raise UserError("a quadrant CVAE completes given quadrants; it has no unconditional samples")
        else:
            if label is not None:
                raise UserError("--label applies to label CVAE and VaDE runs only")
            z = torch.randn(n, 1, model.latent_dim, device=device)
            images = torch.sigmoid(model.decode_logits(z, None))[:, 0]
    save_png(image_grid(images, rows=max(1, round(n**0.5))), out)
