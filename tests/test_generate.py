import itertools
import json
import math

import pytest
import torch

import textvae.api
from textvae import config as config_lib
from textvae.api import load
from textvae.cli import main
from textvae.config import ModelConfig
from textvae.dispatch import train
from textvae.generate import Decoding, decode, filter_logits, interpolation_path, slerp
from textvae.models.lstm_lm import LSTMDecoder

from conftest import CONFIGS, make_sentences

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def _toy_decoder(vocab=6, latent=2, seed=0, scale=8.0, eos_bias=0.0):
    torch.manual_seed(seed)
    decoder = LSTMDecoder(vocab, ModelConfig(embedding_dim=4, hidden_size=8), latent, PAD, UNK, [PAD, UNK, BOS, EOS])
    with torch.no_grad():
        decoder.output.weight.mul_(scale)  # peakier distributions, so that search matters
        decoder.output.bias[EOS] += eos_bias
    return decoder.eval()


def _score(decoder, z, sequence, max_length):
    """log p(sequence (+ <eos> if shorter than max_length) | z) with <pad>/<bos> banned, step by step."""
    tokens = list(sequence) + ([EOS] if len(sequence) < max_length else [])
    state, previous, total = None, torch.tensor([BOS]), 0.0
    for token in tokens:
        logits, state = decoder.step(previous, z, state)
        logits[:, [PAD, BOS]] = -math.inf
        total += float(torch.log_softmax(logits, -1)[0, token].detach())
        previous = torch.tensor([token])
    return total


def test_beam_size_one_and_top_k_one_equal_greedy():
    decoder = _toy_decoder(vocab=30)
    z = torch.randn(7, 2)
    greedy = decode(decoder, z, BOS, EOS, Decoding(max_length=12))
    assert decode(decoder, z, BOS, EOS, Decoding(strategy="beam", beam_size=1, max_length=12)) == greedy
    generator = torch.Generator().manual_seed(3)
    sampled = decode(decoder, z, BOS, EOS, Decoding(strategy="sample", top_k=1, max_length=12), generator=generator)
    assert sampled == greedy


def test_beam_search_finds_the_best_sequence_exhaustively():
    decoder, max_length = _toy_decoder(vocab=6, seed=2, scale=4.0, eos_bias=-1.0), 4
    words = [UNK, 4, 5]  # every token a sentence may contain besides <eos>
    candidates = [seq for n in range(max_length + 1) for seq in itertools.product(words, repeat=n)]
    torch.manual_seed(2)
    greedy_missed = 0
    for _ in range(4):
        z = torch.randn(1, 2) * 2
        best = max(candidates, key=lambda seq: _score(decoder, z, seq, max_length))
        options = Decoding(strategy="beam", beam_size=len(candidates), length_penalty=0.0, max_length=max_length)
        assert decode(decoder, z, BOS, EOS, options)[0] == list(best)
        greedy_missed += decode(decoder, z, BOS, EOS, Decoding(max_length=max_length))[0] != list(best)
    assert greedy_missed > 0  # the case is one where search matters


def test_beam_search_is_batched_over_rows():
    decoder = _toy_decoder(vocab=20)
    z = torch.randn(5, 2)
    options = Decoding(strategy="beam", beam_size=4, max_length=8)
    together = decode(decoder, z, BOS, EOS, options)
    apart = [decode(decoder, z[i : i + 1], BOS, EOS, options)[0] for i in range(5)]
    assert together == apart


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))[0].tolist()
    assert kept == [True, True, False, False]
    assert torch.isfinite(filter_logits(logits, top_p=0.1))[0].tolist() == [True, False, False, False]
    assert torch.isfinite(filter_logits(logits, top_k=3))[0].tolist() == [True, True, True, False]


def test_top_k_and_top_p_keep_every_token_tied_at_the_edge():
    def kept(logits, **options):
        return torch.isfinite(filter_logits(logits, **options))[0].tolist()

    # the examples: both tied tokens stay, whichever comes first in the vocabulary
    assert kept(torch.tensor([[1.0, 1.0, 0.0]]), top_k=1) == [True, True, False]
    assert kept(torch.log(torch.tensor([[0.3, 0.3, 0.4]])), top_p=0.5) == [True, True, True]
    assert kept(torch.log(torch.tensor([[0.3, 0.3, 0.4]])), top_p=0.4) == [False, False, True]  # 0.4 reaches it
    # so the kept set never depends on the order of the vocabulary: logits with many ties, shuffled
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 4, (200, 12), generator=generator).float()
    order = torch.randperm(12, generator=generator)
    for top_k, top_p in ((1, 1.0), (3, 1.0), (0, 0.3), (0, 0.9), (4, 0.6)):
        filtered = filter_logits(logits, top_k, top_p)
        assert torch.equal(filter_logits(logits[:, order], top_k, top_p), filtered[:, order]), (top_k, top_p)


def test_a_decoder_with_a_table_of_positions_refuses_a_longer_decoding():
    decoder = _toy_decoder()
    decoder.max_steps = 3  # what a Transformer decoder sets from model.max_positions
    z = torch.randn(2, 2)
    assert len(decode(decoder, z, BOS, EOS, Decoding(max_length=3))) == 2
    with pytest.raises(ValueError, match="model.max_positions"):
        decode(decoder, z, BOS, EOS, Decoding(max_length=4))


def test_slerp_keeps_the_norm_of_nearly_antipodal_ends():
    # ends 0.001 and 0.0001 rad from antipodal. In fp32 the norm sagged midway (2.29 -> 2.10 on the first pair),
    # and at 0.0001 sin(omega) rounded to 0: a fall back to lerp, through the origin
    generator = torch.Generator().manual_seed(0)
    for delta in (1e-3, 1e-4):
        a = torch.randn(32, generator=generator, dtype=torch.float64)
        a = a / a.norm()
        side = torch.randn(32, generator=generator, dtype=torch.float64)
        side = side - (side @ a) * a
        b = -math.cos(delta) * a + math.sin(delta) * side / side.norm()
        path = slerp((2.2913 * a).float(), (2.2913 * b).float(), torch.linspace(0, 1, 11))
        assert path.dtype == torch.float32
        assert torch.allclose(path.norm(dim=1), torch.full((11,), 2.2913), atol=1e-5), delta


def test_slerp_keeps_the_norm_of_equal_norm_ends_and_moves_at_constant_angle():
    a, b = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 3.0])
    path = interpolation_path(a, b, 7, "slerp")
    assert torch.allclose(path.norm(dim=1), torch.full((7,), 3.0), atol=1e-5)
    cosines = torch.nn.functional.cosine_similarity(path[:-1], path[1:])
    assert torch.allclose(cosines, cosines[0].expand_as(cosines), atol=1e-5)
    assert torch.equal(path[0], a) and torch.equal(path[-1], b)
    # unequal norms: the norm moves linearly between them; lerp instead cuts the corner
    c = torch.tensor([0.0, 1.0, 0.0])
    norms = slerp(a, c, torch.linspace(0, 1, 5)).norm(dim=1)
    assert torch.allclose(norms, torch.linspace(3.0, 1.0, 5), atol=1e-5)
    assert interpolation_path(a, b, 3, "lerp")[1].norm() < 3.0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(make_sentences(300)) + "\n", encoding="utf-8")
    config = config_lib.load(CONFIGS / "text" / "tiny.yaml", [f"data.corpus={corpus}", "train.max_steps=30"])
    train(config, root / "run")
    return root / "run"


def test_interpolation_has_k_lines_with_the_decoded_ends(run_dir):
    model = load(run_dir)
    a, b = "cat w1 w2 w3 cat", "sea w7 sea"
    lines = model.interpolate(a, b, steps=6, method="slerp")
    assert len(lines) == 6
    assert [lines[0], lines[-1]] == model.reconstruct([a, b])
    assert len(model.interpolate(a, b, steps=6, dedupe=True)) <= 6


def test_same_seed_same_samples(run_dir):
    model = load(run_dir)
    first = model.sample(6, seed=4, strategy="sample", top_p=0.9)
    assert first == model.sample(6, seed=4, strategy="sample", top_p=0.9)
    assert first != model.sample(6, seed=5, strategy="sample", top_p=0.9)
    assert model.homotopy(4, seed=1) == model.homotopy(4, seed=1)


def test_an_unseeded_call_leaves_the_callers_random_stream_alone(run_dir):
    model = load(run_dir)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    model.sample(2, seed=None)
    model.homotopy(3, seed=None)
    assert torch.equal(torch.rand(3), expected)


def test_the_api_decodes_up_to_data_max_length_words_and_eos(run_dir, monkeypatch):
    model = load(run_dir)
    limits = []
    original = textvae.api.decode
    monkeypatch.setattr(textvae.api, "decode", lambda *args: limits.append(args[4].max_length) or original(*args))
    model.reconstruct(["cat w1 cat"])
    assert limits == [model.run.config.data.max_length + 1]  # as evaluate --reconstruction decodes


def test_awkward_inputs_give_sensible_results(run_dir):
    model = load(run_dir)
    long = " ".join(["cat"] * 500)  # longer than data.max_length: truncated, with a warning
    out = model.reconstruct(["", "zzz qqq xxx", long])
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    mu, logvar = model.encode(["", "zzz qqq xxx"])
    assert torch.isfinite(mu).all() and torch.isfinite(logvar).all()
    assert isinstance(model.analogy("cat w1 cat", "dog w1 dog", "cat w2 cat"), str)


def test_cli_generation_commands(run_dir, capsys):
    assert main(["interpolate", str(run_dir), "cat w1 cat", "sea w2 sea", "--steps", "4"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
    assert main(["sample", str(run_dir), "-n", "3", "--decode", "beam", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["sentences"]) == 3
    assert main(["reconstruct", str(run_dir), "cat w1 cat", "--decode", "sample", "--top-k", "5"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    assert main(["sample", str(run_dir), "--top-p", "1.5"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert main(["interpolate", str(run_dir), "a", "b", "--steps", "1"]) == 2
    assert "at least 2 steps" in capsys.readouterr().err
