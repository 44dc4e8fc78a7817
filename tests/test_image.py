"""Image baselines: MNIST IDX reading, binarization, quadrant masks, IWAE bound, clustering metrics, and the
train / evaluate commands on a tiny synthetic MNIST (the fixture is in conftest.py; VaDE: test_vade.py)."""

import json
import math

import pytest
import torch

from image_baselines.data import ImageBatch, ImageSplit, load_mnist, quadrant_mask, read_idx
from image_baselines.metrics import cluster_accuracy
from image_baselines.models import build_image_model
from textvae import config as config_lib
from textvae.cli import main
from textvae.core.estimators import iw_log_likelihood, iw_log_weights
from textvae.core.flows import sample_posterior
from textvae.core.gaussian import kl_standard_normal, log_standard_normal
from textvae.core.objective import ElboSettings, elbo
from textvae.dispatch import train
from textvae.errors import UserError

from conftest import IMAGE_CONFIGS, image_config, write_idx


def test_read_idx_round_trips_and_rejects_truncated_files(tmp_path):
    array = torch.arange(2 * 3 * 4).reshape(2, 3, 4).to(torch.uint8)
    write_idx(tmp_path / "a", array)
    write_idx(tmp_path / "b", array, compress=False)
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


# Pyro's MaskImages: 1 shows the bottom-left quadrant, 2 the left half, 3 all but the bottom-right
@pytest.mark.parametrize("given, shown", [(1, [(1, 0)]), (2, [(0, 0), (1, 0)]), (3, [(0, 0), (0, 1), (1, 0)])])
def test_quadrant_masks_cover_exactly_the_given_quadrants(given, shown):
    mask = quadrant_mask(given).reshape(28, 28)
    expected = torch.zeros(28, 28)
    for row, col in shown:  # (0, 0) top-left, (1, 0) bottom-left, ...
        expected[row * 14 : row * 14 + 14, col * 14 : col * 14 + 14] = 1
    assert torch.equal(mask, expected)
    assert int(mask.sum()) == 196 * given


def test_xavier_init_reaches_the_quadrant_cvaes_prior_network():
    model = build_image_model(config_lib.ModelConfig(name="image_cvae", condition="quadrants", quadrants_given=2,
                                                     hidden_sizes="16", latent_dim=3, init="xavier"))  # fmt: skip
    for layer in (model.prior_head, *[m for m in model.prior_body.modules() if isinstance(m, torch.nn.Linear)]):
        assert torch.count_nonzero(layer.bias) == 0  # Glorot's zero biases (torch's default draws them)


def test_quadrant_cvae_likelihood_counts_only_the_missing_pixels():
    model = build_image_model(config_lib.ModelConfig(name="image_cvae", condition="quadrants", quadrants_given=2,
                                                     hidden_sizes="16", latent_dim=3))  # fmt: skip
    batch = ImageBatch(torch.bernoulli(torch.full((4, 784), 0.3)), torch.zeros(4, dtype=torch.long))
    model.decode_logits = lambda z, cond: torch.zeros(z.shape[0], z.shape[1], 784)  # p = 1/2 for every pixel
    ll = model.log_likelihood(batch, torch.randn(4, 2, 3))
    assert torch.allclose(ll, torch.full((4, 2), -(784 - 2 * 196) * math.log(2)))


def test_iwae_bound_with_k_1_is_the_elbo():
    torch.manual_seed(0)
    model = build_image_model(config_lib.ModelConfig(name="image_vae", hidden_sizes="32", latent_dim=4))
    batch = ImageBatch(torch.bernoulli(torch.full((3, 784), 0.2)), torch.zeros(3, dtype=torch.long))
    with torch.no_grad():
        mu, logvar = model.encode(batch)
        log_w, log_px_z, _ = iw_log_weights(model, batch, mu, logvar, 6000, 500)
    # k = 1: E[log w] = E_q[log p(x|z)] - KL, the ELBO
    elbo_value = log_px_z.mean(1) - kl_standard_normal(mu, logvar).sum(-1)
    assert torch.allclose(log_w.mean(1), elbo_value, atol=0.15)


def test_iwae_bound_rises_with_k_to_the_exact_log_likelihood():
    # One latent dimension: log p(x) = log of the integral of p(x|z) N(z; 0, 1) over z, by quadrature on a grid
    # (the same to 1e-4 nats with 2,001 points). The encoder is untrained: q is about N(0.1, 0.8) where the
    # posterior is about N(0.5, 0.1), so the ELBO is 3 nats under log p(x). Each k gets fresh draws (regrouping
    # the same draws into nested groups rises with k for any numbers), and the bound must rise by more than
    # its noise, stay under log p(x) and reach it.
    torch.manual_seed(0)
    model = build_image_model(config_lib.ModelConfig(name="image_vae", hidden_sizes="16", latent_dim=1))
    batch = ImageBatch(torch.bernoulli(torch.full((3, 784), 0.2)), torch.zeros(3, dtype=torch.long))
    with torch.no_grad():
        grid = torch.linspace(-8.0, 8.0, 4001, dtype=torch.float64)
        log_px_z = model.log_likelihood(batch, grid.float().view(1, -1, 1).expand(3, -1, 1)).double()  # [3, G]
        log_joint = log_px_z + log_standard_normal(grid.unsqueeze(-1))
        exact = torch.logsumexp(log_joint, 1) + math.log(float(grid[1] - grid[0]))
        mu, logvar = model.encode(batch)
        gaps, errors = [], []
        for k, repeats in ((1, 400), (3, 400), (1000, 40)):
            log_w = iw_log_weights(model, batch, mu, logvar, repeats * k, 4000)[0].double()
            estimates = iw_log_likelihood(log_w.reshape(3 * repeats, k)).reshape(3, repeats)
            gaps.append(exact - estimates.mean(1))
            errors.append(estimates.std(1) / math.sqrt(repeats))
    assert torch.all(gaps[0] > 2.0)  # the ELBO: 2.6-3.6 nats short; k = 3: about 0.6
    for i in range(2):  # a rise beyond 3 standard errors of the difference
        assert torch.all(gaps[i] - gaps[i + 1] > 3 * (errors[i].pow(2) + errors[i + 1].pow(2)).sqrt()), i
    assert torch.all(gaps[1] > -3 * errors[1])  # a lower bound in expectation (Burda et al. 2015)
    assert torch.all(gaps[2].abs() < 3 * errors[2] + 0.005)  # k = 1,000 reaches log p(x)


def test_image_posterior_is_drawn_in_fp32_under_bf16_autocast():
    # q(z|x) = N(1, 0.01^2) in each of 4 dimensions. In bf16 (a step of 2^-7 near 1) z would take 7-25 values per
    # dimension and log q(z|x) would be off by about 0.23 nats; the text models' encoders return fp32 too.
    model = build_image_model(config_lib.ModelConfig(name="image_vae", hidden_sizes="16", latent_dim=4))
    with torch.no_grad():
        model.posterior.weight.zero_()
        model.posterior.bias.copy_(torch.tensor([1.0] * 4 + [math.log(1e-4)] * 4))
    batch = ImageBatch(torch.bernoulli(torch.full((1000, 784), 0.2)), torch.zeros(1000, dtype=torch.long))
    torch.manual_seed(0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mu, logvar = model.encode(batch)
        z, log_q = sample_posterior(model, mu, logvar)
    assert mu.dtype == logvar.dtype == z.dtype == torch.float32
    assert all(len(z[:, 0, d].unique()) > 900 for d in range(4))
    # E_q[log q(z|x)] = -entropy = -sum_d (log 2 pi + log sigma_d^2 + 1) / 2; the mean of 1,000 draws has sd 0.045
    assert float(log_q.mean()) == pytest.approx(float(-0.5 * (math.log(2 * math.pi) + logvar[0] + 1).sum()), abs=0.15)


def test_iwae_training_loss_is_the_importance_weighted_bound_with_gradients_through_it():
    model = build_image_model(config_lib.ModelConfig(name="image_vae", hidden_sizes="16", latent_dim=3))
    batch = ImageBatch(torch.bernoulli(torch.full((5, 784), 0.2)), torch.zeros(5, dtype=torch.long))
    torch.manual_seed(1)
    terms = elbo(model, batch, ElboSettings(iw_samples=7))
    torch.manual_seed(1)
    mu, logvar = model.encode(batch)
    log_w, _, _ = iw_log_weights(model, batch, mu, logvar, 7, 7)
    assert torch.allclose(terms.loss, -iw_log_likelihood(log_w).mean(), atol=1e-4)
    terms.loss.backward()
    assert model.posterior.weight.grad is not None and model.posterior.weight.grad.abs().sum() > 0
    with pytest.raises(UserError, match="free bits"):
        config_lib.from_dict({"objective": {"iw_samples": 5, "free_bits": 0.5}})


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
    assert part["mi_over"] == "--max-examples part of the split, N = 30"
    assert part["mi_ceiling"] == pytest.approx(math.log(30))


def test_image_vae_refits_its_encoder_after_training(mnist_dir, tmp_path):
    run = tmp_path / "vae"
    args = ["--set", f"data.corpus={mnist_dir}", "--set", "train.max_steps=7", "--set", "train.eval_every=7",
            "--set", "train.batch_size=50", "--set", "model.hidden_sizes=32", "--set", "train.eval_iw_samples=3",
            "--set", "train.eval_batch_size=50", "--set", "train.device=cpu", "--set", "train.refit_encoder_steps=14",
            "--set", "train.refit_encoder_lr=0.003", "--run-dir", str(run)]  # fmt: skip
    assert main(["train", str(IMAGE_CONFIGS / "vae_mnist.yaml"), *args]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(row["step"], row.get("phase")) for row in rows] == [(7, None), (14, "refit"), (21, "refit")]
    trained = torch.load(run / "checkpoints/trained.pt", weights_only=True)["model"]
    best = torch.load(run / "checkpoints/best.pt", weights_only=True)
    assert best["refit"]["trained_step"] == 7  # the refit beat training's validation nelbo on these images
    assert min(row["metrics"]["nelbo"] for row in rows[1:]) < rows[0]["metrics"]["nelbo"]
    decoder = [key for key in trained if key.startswith(("decoder_body.", "output."))]  # decoder_modules()
    assert decoder and all(torch.equal(trained[key], best["model"][key]) for key in decoder)


@pytest.mark.parametrize("config", ["cvae_mnist.yaml", "cvae_quadrants_mnist.yaml"])
def test_cvae_runs_write_their_grids(config, mnist_dir, tmp_path):
    run = tmp_path / "cvae"
    metrics = train(image_config(config, mnist_dir, "train.max_steps=6", "train.eval_every=6", "model.hidden_sizes=32",
                            "model.latent_dim=4"), run)  # fmt: skip
    assert math.isfinite(metrics["nll"]) and math.isfinite(metrics["kl"])
    grid = "samples_by_digit.png" if config == "cvae_mnist.yaml" else "completions.png"
    assert (run / "images" / grid).is_file()
    out = tmp_path / "seven.png"
    code = main(["sample", str(run), "-n", "4", "--label", "7", "--out", str(out)])
    assert (code == 0 and out.is_file()) if config == "cvae_mnist.yaml" else (code == 2 and not out.exists())


def test_image_config_errors_are_one_line(mnist_dir):
    with pytest.raises(UserError, match="quadrants_given"):
        image_config("cvae_quadrants_mnist.yaml", mnist_dir, "model.quadrants_given=4")
    with pytest.raises(UserError, match="hidden_sizes"):
        image_config("vade_mnist.yaml", mnist_dir, "model.hidden_sizes=500,x")
    with pytest.raises(UserError, match="mixture_init"):
        image_config("vae_mnist.yaml", mnist_dir, "model.mixture_init=umap")
    with pytest.raises(UserError, match="mixture_init"):
        image_config("vade_mnist.yaml", mnist_dir, "model.mixture_init=kmeans")


def test_image_split_batches_cover_every_image_once(mnist_dir):
    split: ImageSplit = load_mnist(str(mnist_dir), 0.1)["train"]
    plan = split.plan(0, 64, seed=1)
    assert sorted(i for batch in plan for i in batch) == list(range(len(split)))
    tail = len(split) % 64  # the last batch's images; with more processes than that it joins the batch before
    shared = split.plan(0, 64, seed=1, min_sentences=tail + 1)
    assert len(shared) == len(plan) - 1 and sorted(i for batch in shared for i in batch) == list(range(len(split)))


@pytest.mark.parametrize("name", ["image_vae", "image_cvae"])
def test_conv_variant_encodes_and_decodes_images(name):
    model = build_image_model(config_lib.ModelConfig(name=name, architecture="conv", hidden_sizes="64", latent_dim=5))
    batch = ImageBatch(torch.bernoulli(torch.full((3, 784), 0.3)), torch.tensor([1, 2, 3]))
    mu, logvar = model.encode(batch)
    assert mu.shape == logvar.shape == (3, 5)
    assert model.log_likelihood(batch, torch.randn(3, 4, 5)).shape == (3, 4)
    elbo(model, batch).loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_a_refit_of_a_model_that_learns_its_prior_is_refused_before_training(mnist_dir, tmp_path, capsys):
    run = tmp_path / "vade"
    args = ["--set", f"data.corpus={mnist_dir}", "--set", "train.refit_encoder_steps=10", "--set", "train.device=cpu",
            "--run-dir", str(run)]  # fmt: skip
    assert main(["train", str(IMAGE_CONFIGS / "vade_mnist.yaml"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "VaDE learns its prior p(z)" in err[0]
    assert not (run / "checkpoints").exists()  # refused before a step was trained
