"""evaluate(): its aggregation against hand-computed numbers, MI beside its ceiling log N on a Gaussian channel
whose MI is known in closed form, and active units of the z the decoder reads under a flow."""

import logging
import math

import pytest
import torch

from textvae.core.estimators import AU_SAMPLES, posterior_mean
from textvae.core.evaluation import Journal, evaluate
from textvae.core.flows import attach_flow
from textvae.core.latent import LatentModel
from textvae.core.logs import ProgressLog
from textvae.text_metrics import evaluate_text

CPU = torch.device("cpu")


class _Batch:
    """Examples given by their posterior N(mu, diag exp(logvar)) and their log p(x|z), the same for every z."""

    def __init__(self, mu, logvar, log_px_z=None, num_tokens=0, num_words=0):
        self.mu, self.logvar = torch.as_tensor(mu, dtype=torch.float32), torch.as_tensor(logvar, dtype=torch.float32)
        self.log_px_z = torch.zeros(len(self.mu)) if log_px_z is None else torch.as_tensor(log_px_z)
        self.size, self.footprint = len(self.mu), 1
        self.num_tokens, self.num_words = num_tokens, num_words

    def to(self, device):
        return self


class _GivenPosterior(LatentModel):
    """q(z|x) as the batch gives it, and p(x|z) that does not depend on z: log p(x) = log p(x|z) exactly."""

    def __init__(self, latent_dim):
        super().__init__()
        self.latent_dim = latent_dim

    def encode(self, batch):
        return batch.mu, batch.logvar

    def log_likelihood(self, batch, z):
        return batch.log_px_z.float().unsqueeze(1).expand(-1, z.shape[1])


def test_evaluate_averages_per_example_and_perplexity_is_per_token_or_per_word():
    # q = p(z) = N(0, I): every importance weight is p(x|z), so nll = rec = -log p(x|z) exactly and kl = 0.
    # Batches of 3 and 1 examples: a mean of batch means would give (20 + 5) / 2 = 12.5, not 65 / 4.
    batches = [_Batch(torch.zeros(3, 2), torch.zeros(3, 2), [-10.0, -20.0, -30.0], num_tokens=7, num_words=5),
               _Batch(torch.zeros(1, 2), torch.zeros(1, 2), [-5.0], num_tokens=2, num_words=1)]  # fmt: skip
    model = _GivenPosterior(2)
    metrics = evaluate_text(model, batches, 4, CPU)
    assert metrics["rec"] == pytest.approx(16.25) and metrics["nll"] == pytest.approx(16.25)
    assert metrics["kl"] == 0.0 and metrics["nelbo"] == pytest.approx(16.25)
    assert (metrics["sentences"], metrics["tokens"], metrics["words"]) == (4, 9, 6)
    assert metrics["ppl"] == pytest.approx(math.exp(65 / 9)) and metrics["ppl_per"] == "token"
    assert metrics["mi"] == pytest.approx(0.0, abs=1e-5) and metrics["au"] == 0
    assert metrics["mi_ceiling"] == pytest.approx(math.log(4))
    per_word = evaluate_text(model, batches, 4, CPU, ppl_unit="word")
    assert per_word["ppl"] == pytest.approx(math.exp(65 / 6)) and per_word["ppl_per"] == "word"


def test_the_core_evaluation_is_modality_neutral_and_sums_the_counts_it_is_given():
    # the same batches through the core alone: per-example metrics and the example count, no text quantities;
    # a count function is summed over the batches (3 + 1 examples of 7 and 2 tokens)
    batches = [_Batch(torch.zeros(3, 2), torch.zeros(3, 2), [-10.0, -20.0, -30.0], num_tokens=7, num_words=5),
               _Batch(torch.zeros(1, 2), torch.zeros(1, 2), [-5.0], num_tokens=2, num_words=1)]  # fmt: skip
    metrics = evaluate(_GivenPosterior(2), batches, 4, CPU)
    assert metrics["examples"] == 4 and metrics["nll"] == pytest.approx(16.25)
    assert not {"ppl", "ppl_per", "sentences", "tokens", "words"} & set(metrics)
    counted = evaluate(_GivenPosterior(2), batches, 4, CPU, counts={"squares": lambda b: b.num_tokens**2})
    assert counted["squares"] == 7**2 + 2**2


def test_evaluate_kl_and_nelbo_match_hand_computed_values():
    # KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1 - log s^2) / 2 per dimension, worked out by hand:
    # row 1: 0.5 + (2 - 1 - log 2) / 2 = 0.653426; row 2: 1 / 2 = 0.5; row 3: (0.25 + 1.5 - 1 - log 1.5) / 2 = 0.172267
    mu = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.0]]
    logvar = [[0.0, math.log(2.0)], [0.0, 0.0], [math.log(1.5), 0.0]]
    batches = [_Batch(mu[:2], logvar[:2], [-10.0, -20.0], 5, 5), _Batch(mu[2:], logvar[2:], [-30.0], 5, 5)]
    torch.manual_seed(0)
    metrics = evaluate(_GivenPosterior(2), batches, 5000, CPU)
    kl = (0.653426 + 0.5 + 0.172267) / 3
    assert metrics["kl"] == pytest.approx(kl, abs=1e-5)
    assert metrics["kl_per_dim"] == pytest.approx([(0.5 + 0.172267) / 3, (0.153426 + 0.5) / 3], abs=1e-5)
    assert metrics["rec"] == pytest.approx(20.0) and metrics["nelbo"] == pytest.approx(20.0 + kl, abs=1e-5)
    # log p(x) = log p(x|z) exactly; q is no narrower than p(z), so the weights have a finite variance and
    # 5,000 of them estimate it within a few hundredths
    assert metrics["nll"] == pytest.approx(20.0, abs=0.05) and metrics["nll"] < metrics["nelbo"]
    assert metrics["au"] == 2  # Var_x of the means: 1/6 and 2/9


def test_evaluate_reports_mi_beside_its_ceiling_on_a_gaussian_channel():
    # x ~ N(0, 3 I_2), q(z|x) = N(x, I_2): I(x; z) = 2 * log(1 + 3) / 2 = 1.386 nats, far under log N = 8.0 at
    # N = 3,000, where the estimator is unbiased; its spread over seeds is 0.024 (test_estimators.py)
    torch.manual_seed(0)
    x = torch.randn(3000, 2) * math.sqrt(3.0)
    batches = [_Batch(part, torch.zeros_like(part)) for part in x.split(500)]
    metrics = evaluate(_GivenPosterior(2), batches, 1, CPU)
    assert metrics["mi"] == pytest.approx(math.log(4.0), abs=0.075)
    assert metrics["mi_ceiling"] == pytest.approx(math.log(3000))
    assert metrics["mi_over"] == "split, N = 3000"  # q(z) over all 3,000, not over a batch of 500
    part = evaluate(_GivenPosterior(2), batches[:1], 1, CPU, population="--max-examples part of the split")
    assert part["mi_ceiling"] == pytest.approx(math.log(500)) and part["mi_over"].endswith("N = 500")


def test_mi_cannot_exceed_its_ceiling_when_the_true_mi_does():
    # ratio 10^6: I(x; z) = log(10^6 + 1) = 13.8 nats, but 200 examples can show at most log 200 = 5.3
    torch.manual_seed(0)
    x = torch.randn(200, 2) * 1000.0
    metrics = evaluate(_GivenPosterior(2), [_Batch(x, torch.zeros_like(x))], 1, CPU)
    assert metrics["mi_ceiling"] == pytest.approx(math.log(200))
    assert metrics["mi_ceiling"] - 0.05 < metrics["mi"] <= metrics["mi_ceiling"] + 1e-6


def _iaf_on_one_input_dimension():
    """q(z_0|x) = N((x, 0, 0, 0), 0.01 I) pushed through one IAF layer: only base dimension 0 depends on x, but
    the layer's shift m_i (i > 0) reads z_0[0] (all MADE weights 1), so every dimension of z_L, which the decoder
    reads, varies with x."""
    model = _GivenPosterior(4)
    attach_flow(model, "iaf", 1, 8)
    layer = model.posterior_flow.layers[0]
    with torch.no_grad():
        layer.hidden.weight.fill_(1.0)
        layer.hidden.bias.zero_()
        layer.out.weight[:4].fill_(1.0)  # the shifts m; the scales stay sigmoid(2)
    mu = torch.zeros(64, 4)
    mu[:, 0] = torch.linspace(-2.0, 2.0, 64)
    return model.eval(), mu, torch.full((64, 4), math.log(0.01))


def test_active_units_under_a_flow_count_the_dimensions_of_the_z_the_decoder_reads():
    torch.manual_seed(0)
    model, mu, logvar = _iaf_on_one_input_dimension()
    with torch.no_grad():  # E_q[z_L|x] per example from 20,000 independent draws: the definition, brute force
        z_0 = mu.unsqueeze(1) + 0.1 * torch.randn(64, 20000, 4)
        truth = model.posterior_flow(z_0)[0].mean(1)
        estimate = posterior_mean(model, mu, logvar, torch.randn(AU_SAMPLES, 4))
    assert torch.allclose(estimate, truth, atol=0.02)
    assert (truth.var(0, unbiased=False) > 0.1).all()  # every dimension of z_L varies with x, well over 0.01
    metrics = evaluate(model, [_Batch(mu[:40], logvar[:40]), _Batch(mu[40:], logvar[40:])], 2, CPU)
    assert metrics["au"] == 4  # the base Gaussian's means vary in dimension 0 only: AU 1 before issue 23
    assert metrics["au_estimate"].startswith("E_q[z|x] after the flow")


def test_active_units_under_a_flow_are_zero_when_the_posterior_ignores_x():
    # the same q(z_0|x) = N(0, I) for every x: through the flow too, E_q[z_L|x] is one point. The shared draws
    # give exactly 0 variance across x; independent ones would give Var_q[z_L] / 128 = 0.005-0.010 here, and
    # one of the four dimensions would pass the 0.01 threshold.
    model, _, _ = _iaf_on_one_input_dimension()
    batches = [_Batch(torch.zeros(50, 4), torch.zeros(50, 4)) for _ in range(2)]
    metrics = evaluate(model, batches, 2, CPU)
    assert metrics["au"] == 0 and metrics["mi"] == pytest.approx(0.0, abs=1e-5)


def test_mi_and_active_units_over_a_seeded_sample_of_a_large_split():
    # train.mi_max_examples: MI's cost grows as N^2, so a split larger than the bound gets MI and active units
    # over a seeded sample of that many examples; the other metrics stay over every example
    torch.manual_seed(0)
    x = torch.randn(3000, 2) * math.sqrt(3.0)
    batches = [_Batch(part, torch.zeros_like(part), -part[:, 0]) for part in x.split(100)]
    whole = evaluate(_GivenPosterior(2), batches, 1, CPU)
    assert evaluate(_GivenPosterior(2), batches, 1, CPU, mi_max_examples=3000) == whole
    part = evaluate(_GivenPosterior(2), batches, 1, CPU, mi_max_examples=400)
    assert part == evaluate(_GivenPosterior(2), batches, 1, CPU, mi_max_examples=400)  # the same sample each time
    assert part["mi_over"].startswith("split, N = 400 of 3000 (a seeded sample")
    assert part["mi_ceiling"] == pytest.approx(math.log(400)) and part["au"] == 2
    assert part["mi"] == pytest.approx(math.log(4.0), abs=0.2)  # the same MI, estimated on fewer examples
    kept = ("nll", "rec", "kl", "examples")
    assert [part[key] for key in kept] == [whole[key] for key in kept]


class _DrawDependent(_GivenPosterior):
    """log p(x|z) that depends on the draws of z (so that the figures depend on the seeding); counts encodings."""

    encoded = 0

    def encode(self, batch):
        self.encoded += 1
        return batch.mu, batch.logvar

    def log_likelihood(self, batch, z):
        return batch.log_px_z.float().unsqueeze(1) - 0.5 * ((z - 1.0) ** 2).sum(-1)


def _stopped_after(batches, count):
    """The batches, then a kill (Ctrl-C) before batch `count`."""
    yield from batches[:count]
    raise KeyboardInterrupt


def test_a_stopped_evaluation_resumes_at_the_batch_it_reached_with_the_figures_of_an_unstopped_one(tmp_path):
    torch.manual_seed(0)
    batches = [_Batch(torch.randn(5, 2), torch.randn(5, 2) * 0.3, torch.randn(5), num_tokens=9) for _ in range(6)]
    model = _DrawDependent(2)
    whole = evaluate_text(model, batches, 8, CPU)
    assert whole != evaluate_text(model, batches, 8, CPU, seed=1)  # the figures do depend on the draws
    path, key = tmp_path / "evaluation.partial", {"step": 100, "iw_samples": 8}
    with pytest.raises(KeyboardInterrupt):
        evaluate_text(model, _stopped_after(batches, 4), 8, CPU, journal=Journal(path, key, every=0))
    assert len(torch.load(path, weights_only=True)["records"]) == 4
    model.encoded = 0
    assert evaluate_text(model, batches, 8, CPU, journal=Journal(path, key)) == whole
    assert model.encoded == 2  # only the two batches the stopped run had not reached
    assert not path.exists()  # a complete evaluation leaves no journal behind


def test_an_evaluation_stopped_after_its_last_batch_resumes_to_the_same_mutual_information(tmp_path):
    """A journal holding every batch replays them all without a fresh draw: the MI's own draw must be seeded."""
    torch.manual_seed(0)
    batches = [_Batch(torch.randn(5, 2), torch.randn(5, 2) * 0.3, torch.randn(5)) for _ in range(3)]
    model = _DrawDependent(2)
    whole = evaluate(model, batches, 4, CPU)
    path = tmp_path / "evaluation.partial"
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, _stopped_after(batches, 3), 4, CPU, journal=Journal(path, {"step": 100}, every=0))
    torch.manual_seed(12345)  # whatever the caller's random state
    model.encoded = 0
    assert evaluate(model, batches, 4, CPU, journal=Journal(path, {"step": 100})) == whole
    assert model.encoded == 0


def test_a_journal_of_other_settings_or_a_damaged_one_is_not_used(tmp_path):
    torch.manual_seed(0)
    batches = [_Batch(torch.randn(4, 2), torch.zeros(4, 2), torch.randn(4)) for _ in range(3)]
    model = _DrawDependent(2)
    whole = evaluate(model, batches, 4, CPU)
    path = tmp_path / "evaluation.partial"
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, _stopped_after(batches, 2), 4, CPU, journal=Journal(path, {"step": 100}, every=0))
    model.encoded = 0
    assert evaluate(model, batches, 4, CPU, journal=Journal(path, {"step": 200})) == whole
    assert model.encoded == 3
    path.write_bytes(b"not a journal")
    model.encoded = 0
    assert evaluate(model, batches, 4, CPU, journal=Journal(path, {"step": 200})) == whole
    assert model.encoded == 3


def test_off_a_terminal_a_long_evaluation_logs_its_batches_and_an_eta(caplog, monkeypatch):
    # 2 batches evaluated in this session (10 resumed from a journal) in 100 s: 50 s each, 47 to go
    assert ProgressLog([1] * 59, resumed=10, quiet=False).line(12, 100.0) == "batch 12/59, ETA 39m 10s"
    # weighed by the batches' work: 2 units in 10 s, 6 to go (longer batches at the end of a split)
    assert ProgressLog([1, 1, 2, 4], resumed=0, quiet=False).line(2, 10.0) == "batch 2/4, ETA 30s"
    assert ProgressLog(None, resumed=0, quiet=False).line(3, 9.0) == "batch 3"
    monkeypatch.setattr(ProgressLog, "EVERY", 0.0)  # a line after every batch
    batches = [_Batch(torch.randn(3, 2), torch.zeros(3, 2)) for _ in range(3)]
    with caplog.at_level(logging.INFO, logger="textvae.core.logs"):
        evaluate(_GivenPosterior(2), batches, 4, CPU)  # pytest captures stderr: no terminal, tqdm is silent
    lines = [r.getMessage().split(",")[0] for r in caplog.records if r.getMessage().startswith("evaluate: ")]
    assert lines == ["evaluate: batch 1/3", "evaluate: batch 2/3", "evaluate: batch 3/3"]
    caplog.clear()
    quiet = ProgressLog([1, 1, 1], resumed=0, quiet=True)  # on a terminal the bar says it
    quiet.batch_done(1)
    assert not caplog.records
