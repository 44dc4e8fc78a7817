"""Image baselines: MNIST IDX reading, binarization, quadrant masks, IWAE bound, VaDE ELBO, clustering metrics,
and the train / evaluate commands on a tiny synthetic MNIST."""

import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from image_baselines.data import ImageBatch, ImageSplit, load_mnist, quadrant_mask, read_idx
from image_baselines.metrics import cluster_accuracy
from image_baselines.models import VaDE, build_image_model
from image_baselines.run import manifold_clusters, mixture_of_clusters, posterior_means
from textvae import config as config_lib
from textvae.cli import main
from textvae.core.estimators import iw_log_likelihood, iw_log_weights
from textvae.core.gaussian import kl_standard_normal, log_normal
from textvae.core.objective import elbo
from textvae.errors import UserError
from textvae.pipeline import train

IMAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "image"


def _write_idx(path: Path, array: torch.Tensor, compress: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    data = header + array.to(torch.uint8).numpy().tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def _digits(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic 'digits': each class lights its own band of rows, plus noise; structure a tiny model can learn."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=g)
    images = (torch.rand(count, 28, 28, generator=g) * 60).round()
    for i, label in enumerate(labels.tolist()):
        images[i, 2 * label + 4 : 2 * label + 7, 4:24] = 255
    return images.to(torch.uint8), labels.to(torch.uint8)


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
    root = tmp_path / "mnist"
    root.mkdir()
    for prefix, count, seed in (("train", 400, 0), ("t10k", 100, 1)):
        images, labels = _digits(count, seed)
        _write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, compress=prefix == "t10k")  # .gz or raw
    return root


def _config(name: str, mnist_dir: Path, *overrides: str) -> config_lib.Config:
    small = ["train.batch_size=50", "train.eval_batch_size=50", "train.eval_iw_samples=4", "train.log_every=5",
             "train.device=cpu", f"data.corpus={mnist_dir}", "data.holdout=0.1"]  # fmt: skip
    return config_lib.load(IMAGE_CONFIGS / name, [*small, *overrides])


def test_read_idx_round_trips_and_rejects_truncated_files(tmp_path):
    array = torch.arange(2 * 3 * 4).reshape(2, 3, 4).to(torch.uint8)
    _write_idx(tmp_path / "a", array)
    _write_idx(tmp_path / "b", array, compress=False)
    assert torch.equal(read_idx(tmp_path / "a.gz"), array)
    assert torch.equal(read_idx(tmp_path / "b"), array)
    (tmp_path / "c").write_bytes((tmp_path / "b").read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "c")
    (tmp_path / "d").write_bytes(b"not an idx file")
    with pytest.raises(UserError, match="not an IDX"):
        read_idx(tmp_path / "d")


def test_missing_mnist_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="MNIST IDX files"):
        load_mnist(str(tmp_path), 0.1)


def test_splits_and_binarization(mnist_dir):
    splits = load_mnist(str(mnist_dir), 0.1)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [360, 40, 100]
    train_split = splits["train"]
    train_split.plan(0, 50, seed=3)
    first = train_split.collate(list(range(360))).x.clone()
    train_split.plan(1, 50, seed=3)
    second = train_split.collate(list(range(360))).x
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first, second)  # a fresh draw each epoch (dynamic binarization)
    train_split.plan(0, 50, seed=3)
    assert torch.equal(first, train_split.collate(list(range(360))).x)  # ... deterministic in (seed, epoch)
    # the mean of the draws is the grey level
    assert abs(float(first.mean()) - float(train_split.grey.mean())) < 0.01
    test_a = splits["test"].collate(list(range(100))).x
    test_b = load_mnist(str(mnist_dir), 0.1)["test"].collate(list(range(100))).x
    assert torch.equal(test_a, test_b)  # one fixed binarized test set
    part = splits["test"].subset([3, 50, 97])  # part of a split keeps its images, labels and binarization
    assert len(part) == 3 and torch.equal(part.labels, splits["test"].labels[[3, 50, 97]])
    assert torch.equal(part.collate([0, 1, 2]).x, test_a[[3, 50, 97]])
    train_part = splits["train"].subset([0, 1])  # a dynamic split: its fixed evaluation draw
    assert torch.equal(train_part.collate([0, 1]).x, train_split.subset([0, 1]).collate([0, 1]).x)


@pytest.mark.parametrize("given, shown", [(1, [(1, 0)]), (2, [(0, 1), (1, 0)]), (3, [(0, 1), (1, 0), (1, 1)])])
def test_quadrant_masks_cover_exactly_the_given_quadrants(given, shown):
    mask = quadrant_mask(given).reshape(28, 28)
    expected = torch.zeros(28, 28)
    for row, col in shown:  # (0, 0) top-left, (1, 0) bottom-left, ...
        expected[row * 14 : row * 14 + 14, col * 14 : col * 14 + 14] = 1
    assert torch.equal(mask, expected)
    assert int(mask.sum()) == 196 * given


def test_quadrant_cvae_likelihood_counts_only_the_missing_pixels():
    model = build_image_model(config_lib.ModelConfig(name="image_cvae", condition="quadrants", quadrants_given=2,
                                                     hidden_sizes="16", latent_dim=3))  # fmt: skip
    batch = ImageBatch(torch.bernoulli(torch.full((4, 784), 0.3)), torch.zeros(4, dtype=torch.long))
    model.decode_logits = lambda z, cond: torch.zeros(z.shape[0], z.shape[1], 784)  # p = 1/2 for every pixel
    ll = model.log_likelihood(batch, torch.randn(4, 2, 3))
    assert torch.allclose(ll, torch.full((4, 2), -(784 - 2 * 196) * math.log(2)))


def test_iwae_bound_with_k_1_is_the_elbo_and_grows_with_k():
    torch.manual_seed(0)
    model = build_image_model(config_lib.ModelConfig(name="image_vae", hidden_sizes="32", latent_dim=4))
    batch = ImageBatch(torch.bernoulli(torch.full((3, 784), 0.2)), torch.zeros(3, dtype=torch.long))
    with torch.no_grad():
        mu, logvar = model.encode(batch)
        log_w, log_px_z, _ = iw_log_weights(model, batch, mu, logvar, 6000, 500)
    # k = 1: E[log w] = E_q[log p(x|z)] - KL, the ELBO
    elbo_value = log_px_z.mean(1) - kl_standard_normal(mu, logvar).sum(-1)
    assert torch.allclose(log_w.mean(1), elbo_value, atol=0.15)
    bounds = [iw_log_likelihood(log_w.reshape(3, -1, k).reshape(-1, k)).reshape(3, -1).mean(1) for k in (1, 10, 100)]
    assert torch.all(bounds[0] <= bounds[1] + 1e-4) and torch.all(bounds[1] <= bounds[2] + 1e-4)
    assert torch.all(bounds[2] - bounds[0] > 0.01)  # a strict gain on a model with a mismatched posterior


def test_iwae_training_loss_is_the_importance_weighted_bound_with_gradients_through_it():
    model = build_image_model(config_lib.ModelConfig(name="image_vae", hidden_sizes="16", latent_dim=3))
    batch = ImageBatch(torch.bernoulli(torch.full((5, 784), 0.2)), torch.zeros(5, dtype=torch.long))
    torch.manual_seed(1)
    terms = elbo(model, batch, iw_samples=7)
    torch.manual_seed(1)
    mu, logvar = model.encode(batch)
    log_w, _, _ = iw_log_weights(model, batch, mu, logvar, 7, 7)
    assert torch.allclose(terms.loss, -iw_log_likelihood(log_w).mean(), atol=1e-4)
    terms.loss.backward()
    assert model.posterior.weight.grad is not None and model.posterior.weight.grad.abs().sum() > 0
    with pytest.raises(UserError, match="free bits"):
        config_lib.from_dict({"objective": {"iw_samples": 5, "free_bits": 0.5}})


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_vade_kl_matches_a_direct_monte_carlo_estimate(covariance):
    torch.manual_seed(0)
    model = VaDE(config_lib.ModelConfig(name="vade", hidden_sizes="16", latent_dim=2, num_clusters=3,
                                        mixture_covariance=covariance))  # fmt: skip
    variances = torch.rand(3, 2) + 0.3
    if covariance == "full":  # correlated components: [[v1, r], [r, v2]] with |r| < sqrt(v1 v2)
        r = 0.6 * (variances[:, 0] * variances[:, 1]).sqrt() * torch.tensor([1.0, -1.0, 0.5])
        variances = torch.stack([torch.stack([variances[:, 0], r], -1), torch.stack([r, variances[:, 1]], -1)], -2)
    with torch.no_grad():
        model.init_mixture(torch.tensor([0.2, 0.3, 0.5]), torch.randn(3, 2), variances)
        batch = ImageBatch(torch.bernoulli(torch.full((4, 784), 0.3)), torch.zeros(4, dtype=torch.long))
        mu, logvar = model.encode(batch)
        z0 = torch.randn(4, 1, 2)  # fixes q(c|x) = p(c|z0)
        kl = model.kl_divergence(batch, mu, logvar, z0).sum(-1)
        gamma = model.responsibilities(z0[:, 0])  # [B, K]
        # direct: E_{z ~ q(z|x)} sum_c gamma_c [log q(z|x) + log gamma_c - log p(c) - log p(z|c)]
        z = mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * torch.randn(4, 200_000, 2)
        log_q = log_normal(z, mu.unsqueeze(1), logvar.unsqueeze(1))  # [B, S]
        covariance_matrices = variances if covariance == "full" else torch.diag_embed(variances)
        log_pz_c = torch.distributions.MultivariateNormal(model.mu_c, covariance_matrices).log_prob(z.unsqueeze(2))
        log_pc = torch.log_softmax(model.pi_logits, 0)
        direct = (gamma.unsqueeze(1) * (log_q.unsqueeze(-1) + gamma.log().unsqueeze(1) - log_pc - log_pz_c)).sum(-1)
        exact_gamma = torch.softmax(log_pc + torch.distributions.MultivariateNormal(
            model.mu_c, covariance_matrices).log_prob(z0[:, 0].unsqueeze(1)), -1)  # fmt: skip
    assert torch.allclose(gamma, exact_gamma, atol=1e-5)
    assert torch.allclose(kl, direct.mean(1), atol=0.03), (kl, direct.mean(1))


def test_vade_prior_is_the_mixture_density():
    model = VaDE(config_lib.ModelConfig(name="vade", hidden_sizes="8", latent_dim=2, num_clusters=2))
    model.init_mixture(torch.tensor([0.25, 0.75]), torch.tensor([[0.0, 0.0], [2.0, -1.0]]), torch.ones(2, 2))
    z = torch.tensor([[[1.0, 1.0]]])
    expected = math.log(0.25 * math.exp(-1.0) / (2 * math.pi) + 0.75 * math.exp(-0.5 * (1 + 4)) / (2 * math.pi))
    assert abs(float(model.log_prior(None, z).detach()) - expected) < 1e-5
    # full covariance: the same mixture with identity matrices, then a sample's spread matches its covariance
    full = VaDE(config_lib.ModelConfig(name="vade", hidden_sizes="8", latent_dim=2, num_clusters=2,
                                       mixture_covariance="full"))  # fmt: skip
    full.init_mixture(torch.tensor([0.25, 0.75]), torch.tensor([[0.0, 0.0], [2.0, -1.0]]), torch.eye(2).expand(2, 2, 2))
    assert abs(float(full.log_prior(None, z).detach()) - expected) < 1e-5
    covariance = torch.tensor([[1.0, 0.8], [0.8, 2.0]])
    full.init_mixture(torch.tensor([0.5, 0.5]), torch.zeros(2, 2), covariance.expand(2, 2, 2))
    assert torch.allclose(
        full._scale_tril() @ full._scale_tril().transpose(-1, -2), covariance.expand(2, 2, 2), atol=1e-5
    )
    with pytest.raises(UserError, match="mixture_covariance"):
        config_lib.load(IMAGE_CONFIGS / "vae_mnist.yaml", ["model.mixture_covariance=full"])


def test_hungarian_accuracy():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    assert cluster_accuracy(labels, torch.tensor([2, 2, 0, 0, 1, 1, 1])) == 1.0  # a relabelling
    assert cluster_accuracy(labels, torch.tensor([1, 1, 1, 1, 0, 0, 0])) == pytest.approx(5 / 7)
    assert cluster_accuracy(labels, torch.zeros(7, dtype=torch.long)) == pytest.approx(3 / 7)


def test_image_vae_trains_and_evaluates_from_the_cli(mnist_dir, tmp_path, capsys):
    run = tmp_path / "vae"
    args = ["--set", f"data.corpus={mnist_dir}", "--set", "train.max_steps=14", "--set", "train.eval_every=7",
            "--set", "train.batch_size=50", "--set", "model.hidden_sizes=32", "--set", "train.eval_iw_samples=3",
            "--set", "train.eval_batch_size=50", "--set", "train.device=cpu", "--run-dir", str(run)]  # fmt: skip
    assert main(["train", str(IMAGE_CONFIGS / "vae_mnist.yaml"), *args]) == 0
    assert "last validation: nelbo" in capsys.readouterr().out
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/best.pt", "images/samples.png",
                 "images/reconstructions.png"):  # fmt: skip
        assert (run / name).is_file(), name
    assert main(["evaluate", str(run), "--iw-samples", "5", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 100 and metrics["iw_samples"] == 5 and metrics["split"] == "test"
    assert metrics["nll"] <= metrics["nelbo"] + 1.0 and len(metrics["kl_per_dim"]) == 50
    assert "ppl" not in metrics
    assert main(["evaluate", str(run), "--iw-samples", "5", "--json", "--max-examples", "30"]) == 0
    part = json.loads(capsys.readouterr().out)
    assert part["images"] == 30 and part["max_examples"] == 30


@pytest.mark.parametrize("config", ["cvae_mnist.yaml", "cvae_quadrants_mnist.yaml"])
def test_cvae_runs_write_their_grids(config, mnist_dir, tmp_path):
    run = tmp_path / "cvae"
    metrics = train(_config(config, mnist_dir, "train.max_steps=6", "train.eval_every=6", "model.hidden_sizes=32",
                            "model.latent_dim=4"), run)  # fmt: skip
    assert math.isfinite(metrics["nll"]) and math.isfinite(metrics["kl"])
    grid = "samples_by_digit.png" if config == "cvae_mnist.yaml" else "completions.png"
    assert (run / "images" / grid).is_file()
    out = tmp_path / "seven.png"
    code = main(["sample", str(run), "-n", "4", "--label", "7", "--out", str(out)])
    assert (code == 0 and out.is_file()) if config == "cvae_mnist.yaml" else (code == 2 and not out.exists())


def test_vade_pretrains_fits_the_mixture_and_resumes_exactly(mnist_dir, tmp_path):
    extra = ("model.hidden_sizes=32,64", "objective.pretrain_steps=8", "train.eval_every=4")
    train(_config("vade_mnist.yaml", mnist_dir, "train.max_steps=14", *extra), tmp_path / "straight")
    train(_config("vade_mnist.yaml", mnist_dir, "train.max_steps=6", *extra), tmp_path / "resumed")  # pretraining
    train(_config("vade_mnist.yaml", mnist_dir, "train.max_steps=14", *extra), tmp_path / "resumed")
    straight = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    records = [json.loads(line) for line in (tmp_path / "straight/metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["metrics"]["acc"] <= 1.0 and "nmi" in r["metrics"] for r in records)
    # the mixture was fitted at the end of pretraining: the means moved off their random initialization
    torch.manual_seed(0)
    fresh = VaDE(_config("vade_mnist.yaml", mnist_dir, *extra).model)
    assert not torch.allclose(fresh.mu_c, straight["model"]["mu_c"])


def test_full_covariance_vade_fits_a_full_mixture_and_trains(mnist_dir, tmp_path):
    extra = ("model.hidden_sizes=32,64", "objective.pretrain_steps=8", "train.eval_every=4",
             "model.mixture_covariance=full", "model.mixture_init=gmm", "train.max_steps=12")  # fmt: skip
    train(_config("vade_mnist.yaml", mnist_dir, *extra), tmp_path / "full")  # the paper's GMM fit on the code
    state = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)["model"]
    assert state["tril_c"].tril(-1).abs().sum() > 0  # off-diagonal terms from the fitted full covariances
    records = [json.loads(line) for line in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["metrics"]["nelbo"]) and 0.0 <= r["metrics"]["acc"] <= 1.0 for r in records)


def test_mixture_of_clusters_is_each_clusters_gaussian():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 3))
    labels = np.repeat([0, 1, 2], [30, 20, 10])
    labels[-1] = 3  # a cluster of one member: it gets the whole data's Gaussian
    weights, means, covariances = mixture_of_clusters(features, labels, 5, "full", reg=0.0)
    assert np.allclose(weights, np.array([30, 20, 9, 1, 1]) / 61)  # an empty cluster counts as one member
    for c, members in enumerate((features[:30], features[30:50], features[50:59], features, features)):
        assert np.allclose(means[c], members.mean(0))
        assert np.allclose(covariances[c], np.cov(members.T, bias=True))
    _, _, variances = mixture_of_clusters(features, labels, 5, "diag", reg=1e-3)
    assert np.allclose(variances[0], features[:30].var(0) + 1e-3)


def test_manifold_clusters_separate_two_moons_that_a_gmm_cannot():
    from sklearn.datasets import make_moons
    from sklearn.mixture import GaussianMixture

    x, y = make_moons(400, noise=0.05, random_state=0)
    y = torch.as_tensor(y)
    gmm = GaussianMixture(2, random_state=0).fit(x)
    assert cluster_accuracy(y, torch.as_tensor(gmm.predict(x))) < 0.9  # two Gaussians cut across the moons
    assert cluster_accuracy(y, torch.as_tensor(manifold_clusters(x, 2, seed=0))) > 0.95


def test_umap_initialized_vade_starts_from_the_clusters_gaussians(mnist_dir, tmp_path, monkeypatch):
    labels = {}

    def fake_clusters(features, k, seed):  # the UMAP step is tested above; here, the wiring around it
        labels["found"] = np.arange(len(features)) % k
        return labels["found"]

    monkeypatch.setattr("image_baselines.run.manifold_clusters", fake_clusters)
    extra = ("model.hidden_sizes=32,64", "objective.pretrain_steps=8", "train.max_steps=8", "model.mixture_init=umap")
    config = _config("vade_mnist.yaml", mnist_dir, *extra)
    train(config, tmp_path / "run")
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["model"]
    model = VaDE(config.model)
    model.load_state_dict(state)
    splits = load_mnist(config.data.corpus, config.data.holdout, binarize=False)
    codes = posterior_means(model, splits["train"], 64, torch.device("cpu")).double()
    for c in range(config.model.num_clusters):
        assert torch.allclose(state["mu_c"][c].double(), codes[labels["found"] == c].mean(0), atol=1e-5)
    share = np.bincount(labels["found"]) / len(codes)
    assert torch.allclose(state["pi_logits"].softmax(0).double(), torch.as_tensor(share), atol=1e-6)


def test_image_config_errors_are_one_line(mnist_dir):
    with pytest.raises(UserError, match="quadrants_given"):
        _config("cvae_quadrants_mnist.yaml", mnist_dir, "model.quadrants_given=4")
    with pytest.raises(UserError, match="hidden_sizes"):
        _config("vade_mnist.yaml", mnist_dir, "model.hidden_sizes=500,x")
    with pytest.raises(UserError, match="mixture_init"):
        _config("vae_mnist.yaml", mnist_dir, "model.mixture_init=umap")
    with pytest.raises(UserError, match="mixture_init"):
        _config("vade_mnist.yaml", mnist_dir, "model.mixture_init=kmeans")


def test_image_split_batches_cover_every_image_once(mnist_dir):
    split: ImageSplit = load_mnist(str(mnist_dir), 0.1)["train"]
    plan = split.plan(0, 64, seed=1)
    assert sorted(i for batch in plan for i in batch) == list(range(len(split)))


@pytest.mark.parametrize("name", ["image_vae", "image_cvae"])
def test_conv_variant_encodes_and_decodes_images(name):
    model = build_image_model(config_lib.ModelConfig(name=name, architecture="conv", hidden_sizes="64", latent_dim=5))
    batch = ImageBatch(torch.bernoulli(torch.full((3, 784), 0.3)), torch.tensor([1, 2, 3]))
    mu, logvar = model.encode(batch)
    assert mu.shape == logvar.shape == (3, 5)
    assert model.log_likelihood(batch, torch.randn(3, 4, 5)).shape == (3, 4)
    elbo(model, batch).loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_xavier_init_and_squared_error_pretraining():
    config = config_lib.ModelConfig(name="vade", hidden_sizes="50,40", activation="relu", latent_dim=3,
                                    init="xavier", pretrain_loss="mse")  # fmt: skip
    torch.manual_seed(0)
    model = build_image_model(config)
    for layer in model.modules():
        if isinstance(layer, torch.nn.Linear):
            fan_out, fan_in = layer.weight.shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform
            assert not layer.bias.any() and layer.weight.abs().max() <= bound
            assert layer.weight.abs().max() > 0.9 * bound
    batch = ImageBatch(torch.rand(5, 784), torch.zeros(5, dtype=torch.long))
    mu, _ = model.encode(batch)
    out = model.decode_logits(mu.unsqueeze(1), None)[:, 0]
    expected = 0.5 * (out - batch.x).pow(2).sum(-1).mean()
    assert torch.allclose(elbo(model, batch, kl_weight=0.0, sample=False).loss, expected)  # the pretraining loss
    with torch.no_grad():
        model.posterior.bias[3:] = -30.0  # q(z|x) a point mass: a sample is mu
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out, batch.x, reduction="none").sum(-1)
    assert torch.allclose(elbo(model, batch, kl_weight=0.0).rec, bce, atol=1e-3)  # VaDE phase: Bernoulli again
    model.output_to_logits()  # grey levels g become logits 10 (g - 1/2)
    assert torch.allclose(model.decode_logits(mu.unsqueeze(1), None)[:, 0], 10 * (out - 0.5), atol=1e-4)
    with pytest.raises(UserError, match="pretrain_loss"):
        config_lib.from_dict({"model": {"name": "lstm_vae", "pretrain_loss": "mse"}})


def test_denoising_pretraining_encodes_a_corrupted_image_and_reconstructs_the_clean_one():
    config = config_lib.ModelConfig(name="vade", hidden_sizes="50,40", activation="relu", latent_dim=3,
                                    init="xavier", pretrain_loss="mse", pretrain_dropout=0.5)  # fmt: skip
    torch.manual_seed(0)
    model = build_image_model(config)
    batch = ImageBatch(torch.rand(8, 784), torch.zeros(8, dtype=torch.long))
    torch.manual_seed(1)
    loss = elbo(model, batch, kl_weight=0.0, sample=False).loss
    torch.manual_seed(1)  # the same pixels dropped, by hand: the encoder sees them, the loss targets the clean x
    corrupted = torch.nn.functional.dropout(batch.x, 0.5)
    mu, _ = model.encode(ImageBatch(corrupted, batch.y))
    expected = 0.5 * (model.decode_logits(mu.unsqueeze(1), None)[:, 0] - batch.x).pow(2).sum(-1).mean()
    assert torch.allclose(loss, expected)
    clean = 0.5 * (model.decode_logits(model.encode(batch)[0].unsqueeze(1), None)[:, 0] - batch.x).pow(2)
    assert not torch.allclose(loss, clean.sum(-1).mean())  # the noise reached the encoder
    model.eval()  # evaluation (and the mixture fit's codes) see the clean image
    assert torch.allclose(elbo(model, batch, kl_weight=0.0, sample=False).loss, clean.sum(-1).mean())
    model.train()
    torch.manual_seed(2)
    a = elbo(model, batch, kl_weight=0.0, sample=True).mu
    assert torch.equal(a, model.encode(batch)[0])  # the VAE phase's encoder is not corrupted
    for bad in ({"name": "vade", "pretrain_dropout": 1.0}, {"name": "lstm_vae", "pretrain_dropout": 0.2}):
        with pytest.raises(UserError, match="pretrain_dropout"):
            config_lib.from_dict({"model": bad})


def test_narrow_posterior_starts_q_at_a_tenth_of_the_codes_spread():
    config = config_lib.ModelConfig(name="vade", hidden_sizes="50,40", activation="relu", latent_dim=3,
                                    init="xavier", pretrain_loss="mse")  # fmt: skip
    torch.manual_seed(0)
    model = build_image_model(config)
    batch = ImageBatch(torch.rand(6, 784), torch.zeros(6, dtype=torch.long))
    mu_before, logvar_before = model.encode(batch)
    assert logvar_before.std() > 0  # as initialized, the log-variance depends on x
    variance = torch.tensor([0.25, 1.0, 4.0])
    model.narrow_posterior(variance)
    mu, logvar = model.encode(batch)
    assert torch.equal(mu, mu_before)  # the code itself is untouched
    assert torch.allclose(logvar, (0.01 * variance).log().expand(6, 3), atol=1e-6)  # for every x


def test_vade_phase_starts_from_the_narrow_posterior(mnist_dir, tmp_path):
    extra = ("model.hidden_sizes=32,64", "objective.pretrain_steps=8", "train.max_steps=8")
    config = _config("vade_mnist.yaml", mnist_dir, *extra)
    train(config, tmp_path / "run")
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["model"]
    d = config.model.latent_dim
    assert not state["posterior.weight"][d:].any()  # the hook ran at the last step: q(z|x) is narrow
    model = VaDE(config.model)
    model.load_state_dict(state)
    splits = load_mnist(config.data.corpus, config.data.holdout, binarize=False)
    means = posterior_means(model, splits["train"], 64, torch.device("cpu"))
    variance = means.double().var(0, correction=0).float()
    assert torch.allclose(state["posterior.bias"][d:].exp(), 0.01 * variance, rtol=1e-3)
