"""The training step's fast paths compute what the plain PyTorch ones do: the fused output layer +
cross-entropy (`LinearNLL`), the unpacked LSTM encoder, the bf16 LSTM's padded batch and hidden units, and the
16-bit dropout mask.

Exactness is checked in fp64 (fp32 inside the log-softmax: 1e-6 relative); under bf16 autocast the fused path is
compared with PyTorch's own autocast path at bf16's resolution (values 1e-2 nats, gradients 2% of their scale).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from textvae.config import DataConfig, ModelConfig
from textvae.core.dropout import dropout, keep_mask
from textvae.data.batching import TextSplit
from textvae.data.tokenizer import WordTokenizer
from textvae.models import build_text_model, lstm_lm
from textvae.models.lstm_lm import _gradients_agree, onednn_bf16_lstm, padded_lstm, run_recurrent
from textvae.models.sequence import linear_nll, target_nll

from conftest import make_sentences


def _grads(output, hidden):
    return [hidden.grad.clone(), output.weight.grad.clone(), output.bias.grad.clone()]


@pytest.mark.parametrize("rows", [1, 7, 40, 4096])
def test_fused_output_layer_has_cross_entropys_value_and_gradients(rows):
    torch.manual_seed(0)
    output = nn.Linear(12, 60).double()
    hidden = torch.randn(40, 12, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 60, (40,))
    weights = torch.randn(40, dtype=torch.float64)  # a non-uniform incoming gradient (IW bounds give one)
    got = linear_nll(hidden, targets, output, rows=rows)
    (got.double() * weights).sum().backward()
    fused = _grads(output, hidden)
    hidden.grad = None
    output.zero_grad()
    expected = F.cross_entropy(output(hidden), targets, reduction="none")
    (expected * weights).sum().backward()
    # fp64 inputs keep fp64 throughout (a reference to check the bf16 and fp32 paths against): fp64 agreement
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected.detach(), rtol=1e-12, atol=1e-12)
    for name, a, b in zip(("hidden", "weight", "bias"), fused, _grads(output, hidden), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    with torch.no_grad():  # evaluation's forward-only path likewise
        torch.testing.assert_close(target_nll(hidden, targets, output, rows=rows), expected, rtol=1e-12, atol=1e-12)


def test_fused_output_layer_under_bf16_matches_the_autocast_path():
    torch.manual_seed(1)
    output = nn.Linear(64, 500)
    hidden = torch.randn(300, 64, requires_grad=True)
    targets = torch.randint(0, 500, (300,))
    runs = []
    for fused in (False, True):
        hidden.grad = None
        output.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                nll = linear_nll(hidden, targets, output, rows=64)
            else:
                nll = F.cross_entropy(output(hidden).float(), targets, reduction="none")
        nll.sum().backward()
        assert nll.dtype == torch.float32
        runs.append([nll.detach(), *_grads(output, hidden)])
    (plain_nll, *plain), (fused_nll, *fused) = runs
    torch.testing.assert_close(fused_nll, plain_nll, rtol=0, atol=1e-2)
    for a, b in zip(fused, plain, strict=True):
        assert a.dtype == b.dtype == torch.float32
        assert (a - b).abs().max() <= 0.02 * b.abs().max()


def test_fused_output_layer_gives_a_gradient_to_a_tied_weight_once_per_use():
    torch.manual_seed(2)
    embedding = nn.Embedding(30, 8).double()
    output = nn.Linear(8, 30, bias=False).double()
    output.weight = embedding.weight  # tied, as the Transformer decoder may do
    tokens = torch.randint(0, 30, (20,))
    hidden = embedding(tokens)
    linear_nll(hidden, tokens.roll(1), output).sum().backward()
    fused = embedding.weight.grad.clone()
    embedding.weight.grad = None
    F.cross_entropy(output(embedding(tokens)), tokens.roll(1), reduction="sum").backward()
    torch.testing.assert_close(fused, embedding.weight.grad, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def split():
    sentences = make_sentences(30)
    return TextSplit(sentences, WordTokenizer.build(sentences, DataConfig()), 30)


@pytest.mark.parametrize("layers", [1, 2])
def test_unpacked_encoder_reads_each_sentence_to_its_own_end(split, layers):
    torch.manual_seed(3)
    model = build_text_model(ModelConfig(embedding_dim=8, hidden_size=12, latent_dim=3, num_layers=layers),
                             split.tokenizer).double().eval()  # fmt: skip
    batch = split.collate(list(range(12)))
    assert len(set(batch.lengths.tolist())) > 3  # sentences of several lengths, padded
    mu, logvar = model.encode(batch)
    words = batch.tokens[:, 1:]
    packed = nn.utils.rnn.pack_padded_sequence(model.embedding(words), batch.lengths - 1, batch_first=True,
                                               enforce_sorted=False)  # fmt: skip
    _, (h_n, _) = model.encoder(packed)
    expected_mu, expected_logvar = model.to_posterior(h_n[-1])
    torch.testing.assert_close(mu, expected_mu, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(logvar, expected_logvar, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(
    not onednn_bf16_lstm(),
    reason="oneDNN has no bf16 LSTM on this CPU (it needs AVX512); "
    "run_recurrent runs fp32 there, tested by test_without_a_bf16_lstm_the_recurrence_runs_in_fp32",
)
def test_a_bf16_lstm_runs_a_padded_batch_and_returns_the_plain_calls_result():
    torch.manual_seed(5)
    lstm = nn.LSTM(6, 10, num_layers=2, batch_first=True)
    seen = []
    lstm.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    inputs = torch.randn(37, 4, 6)
    state = (torch.randn(2, 37, 10), torch.randn(2, 37, 10))
    results = []
    for call in (run_recurrent, lambda rnn, x, s: rnn(x, s)):
        x, s = inputs.clone().requires_grad_(), tuple(part.clone().requires_grad_() for part in state)
        lstm.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs, (h, c) = call(lstm, x, s)
        (outputs.float().square().sum() + h.float().sum() + 2 * c.float().sum()).backward()
        results.append([outputs.float(), h.float(), c.float(), x.grad, s[0].grad, s[1].grad, lstm.weight_hh_l1.grad])
    assert seen == [48, 37]  # padded up to a multiple of 16, then the plain call
    for padded, plain in zip(*results):
        assert padded.shape == plain.shape
        torch.testing.assert_close(padded, plain, rtol=2e-2, atol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # too small a batch to pad; fp32 never is
        run_recurrent(lstm, inputs[:20])
    run_recurrent(lstm, inputs)
    assert seen[2:] == [20, 37]


def test_an_lstm_with_zero_extra_units_is_the_lstm():
    torch.manual_seed(6)
    lstm = nn.LSTM(6, 10, num_layers=2, batch_first=True).double()
    inputs = torch.randn(5, 4, 6, dtype=torch.float64)
    state = (torch.randn(2, 5, 10, dtype=torch.float64), torch.randn(2, 5, 10, dtype=torch.float64))
    results = []
    for call in (lambda x, s: padded_lstm(lstm, x, s, 16), lambda x, s: lstm(x, s)):
        x, s = inputs.clone().requires_grad_(), tuple(part.clone().requires_grad_() for part in state)
        lstm.zero_grad()
        outputs, (h, c) = call(x, s)
        (outputs.square().sum() + h.sum() + 2 * c.sum()).backward()
        results.append([outputs, h, c, x.grad, s[0].grad, s[1].grad, *(p.grad.clone() for p in lstm.parameters())])
    for padded, plain in zip(*results, strict=True):
        assert padded.shape == plain.shape
        torch.testing.assert_close(padded, plain, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(
    not onednn_bf16_lstm(),
    reason="oneDNN has no bf16 LSTM on this CPU (it needs AVX512); "
    "run_recurrent runs fp32 there, tested by test_without_a_bf16_lstm_the_recurrence_runs_in_fp32",
)
def test_the_bf16_lstm_check_leaves_the_random_stream_alone():
    # it runs at a run's first training step, also after a resume: it must not move the restored stream
    torch.manual_seed(8)
    expected = torch.rand(4)
    torch.manual_seed(8)
    _gradients_agree(24, 40, 1, 16)
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)


def test_bf16_lstm_gradients_at_the_paper_size_agree_with_fp64():
    # oneDNN's bf16 LSTM at 1024 units returns input gradients at cosine 0.03 to these on AMX CPUs (torch 2.13)
    torch.manual_seed(7)
    lstm = nn.LSTM(32, 1024, batch_first=True)
    inputs, cell = torch.randn(37, 5, 32), torch.randn(1, 37, 1024)
    grads = []
    for bf16 in (False, True):
        model = lstm.float() if bf16 else lstm.double()
        x = inputs.clone().to(torch.float32 if bf16 else torch.float64).requires_grad_()
        c0 = cell.clone().to(x.dtype).requires_grad_()
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs, (h, c) = run_recurrent(model, x, (torch.tanh(c0), c0))
        (outputs.double().sum() + c.double().sum()).backward()
        grads.append([x.grad, c0.grad, model.weight_hh_l0.grad.clone(), model.weight_ih_l0.grad.clone()])
    for name, exact, bf16 in zip(("inputs", "initial cell", "weight_hh", "weight_ih"), *grads, strict=True):
        assert F.cosine_similarity(exact.flatten(), bf16.double().flatten(), dim=0) > 0.999, name


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_mask_keeps_the_expected_share_and_preserves_the_mean(rate):
    torch.manual_seed(4)
    count = 1_000_000
    keep, scale = keep_mask(torch.Size([count]), rate, torch.device("cpu"))
    kept = keep.double().mean().item()
    sigma = (rate * (1 - rate) / count) ** 0.5
    assert abs(kept - (1 - rate)) < 5 * sigma + 1 / 65536
    assert abs(scale * kept - 1) < 5 * sigma / (1 - rate) + 2 / 65536
    x = torch.full((count,), 2.0)
    out = dropout(x, rate, training=True)
    values = out.unique()  # each element dropped or scaled, nothing else
    assert len(values) == 2 and values[0] == 0.0 and abs(values[1].item() - 2.0 * scale) < 1e-5


def test_dropout_mask_bits_are_independent_across_the_draws():
    torch.manual_seed(5)
    keep, _ = keep_mask(torch.Size([400_000]), 0.5, torch.device("cpu"))
    pairs = keep.view(-1, 4).double()  # the four masks cut from one 64-bit draw
    correlation = torch.corrcoef(pairs.t())
    off_diagonal = correlation[~torch.eye(4, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.01


def test_dropout_is_the_identity_in_eval_mode_and_repeatable_by_seed():
    x = torch.randn(3, 5, 7)
    assert dropout(x, 0.5, training=False) is x
    torch.manual_seed(6)
    first = dropout(x, 0.3, training=True)
    torch.manual_seed(6)
    torch.testing.assert_close(dropout(x, 0.3, training=True), first, rtol=0, atol=0)
    assert not torch.equal(dropout(x, 0.3, training=True), first)


def test_without_a_bf16_lstm_the_recurrence_runs_in_fp32(monkeypatch):
    # on a CPU where oneDNN builds no bf16 LSTM (AVX2 only) a bf16 step must not fail: the LSTM runs in fp32
    monkeypatch.setattr(lstm_lm, "onednn_bf16_lstm", lambda: False)
    torch.manual_seed(3)
    lstm = nn.LSTM(6, 10, batch_first=True)
    inputs, state = torch.randn(40, 4, 6), (torch.randn(1, 40, 10), torch.randn(1, 40, 10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs, (h, c) = run_recurrent(lstm, inputs.bfloat16(), tuple(part.bfloat16() for part in state))
    expected, (h_fp32, c_fp32) = lstm(inputs.bfloat16().float(), tuple(part.bfloat16().float() for part in state))
    assert outputs.dtype == torch.float32
    for ours, theirs in ((outputs, expected), (h, h_fp32), (c, c_fp32)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
