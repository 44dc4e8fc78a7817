"""model.rnn gru: the GRU cell in the LSTM models (encoder and decoder), no cell state (h0 = tanh(W z))."""

import json

import pytest
import torch
from torch import nn

from textvae.cli import main
from textvae.config import DataConfig, ModelConfig
from textvae.core.objective import elbo
from textvae.data.batching import TextSplit
from textvae.data.tokenizer import WordTokenizer
from textvae.generate import Decoding, decode
from textvae.models import build_text_model

from conftest import make_sentences


@pytest.fixture(scope="module")
def split():
    sentences = make_sentences(40)
    return TextSplit(sentences, WordTokenizer.build(sentences, DataConfig()), 30)


def _model(split, **kwargs):
    torch.manual_seed(0)
    return build_text_model(ModelConfig(rnn="gru", embedding_dim=8, hidden_size=12, latent_dim=3, **kwargs),
                            split.tokenizer)  # fmt: skip


# shapes and gradients (batch size 1, several layers, bidirectional): tests/test_models.py, parametrized by model.rnn


def test_gru_initial_state_is_tanh_of_a_projection_of_z(split):
    model = _model(split, num_layers=2)
    assert isinstance(model.encoder, nn.GRU) and isinstance(model.decoder.gru, nn.GRU)
    decoder = model.decoder
    z = torch.randn(4, 3)
    h0 = decoder.initial_state(z, 4, z.device)
    assert h0.shape == (2, 4, 12)
    assert torch.allclose(h0, torch.tanh(decoder.latent_to_state(z).view(4, 2, 12).transpose(0, 1)))


def test_gru_lm_and_decoding_keep_a_single_state(split):
    torch.manual_seed(0)
    lm = build_text_model(ModelConfig(name="lstm_lm", rnn="gru", embedding_dim=8, hidden_size=12, num_layers=2),
                          split.tokenizer).eval()  # fmt: skip
    terms = elbo(lm, split.collate([3]))
    assert terms.rec.shape == (1,) and float(terms.kl) == 0.0
    vae, tok = _model(split).eval(), split.tokenizer
    z = torch.randn(2, 3)
    greedy = decode(vae.decoder, z, tok.bos_id, tok.eos_id, Decoding(max_length=12))
    beam = decode(vae.decoder, z, tok.bos_id, tok.eos_id, Decoding(strategy="beam", beam_size=3, max_length=12))
    assert len(greedy) == len(beam) == 2
    assert len(decode(lm.decoder, None, tok.bos_id, tok.eos_id, Decoding(strategy="beam", max_length=8), num=2)) == 2


def test_gru_flops_count_three_gates_where_an_lstm_has_four(split):
    cls, sizes = type(_model(split)), dict(embedding_dim=8, hidden_size=12, latent_dim=3, num_layers=2)
    lstm, gru = ModelConfig(**sizes), ModelConfig(rnn="gru", **sizes)
    decoder_free = cls.flops(gru, 50, 100, 10) - 2 * 12 * 50 * 100  # the output layer is the same
    assert decoder_free == pytest.approx(0.75 * (cls.flops(lstm, 50, 100, 10) - 2 * 12 * 50 * 100), rel=0.05)


def test_gru_vae_trains_and_evaluates_from_the_tiny_config(tiny_config_path, corpus_dir, tmp_path, capsys):
    run = tmp_path / "gru"
    argv = ["train", str(tiny_config_path), "--run-dir", str(run), "--set", f"data.corpus={corpus_dir}",
            "--set", "model.rnn=gru", "--set", "train.max_steps=10", "--set", "train.eval_every=5"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iw-samples", "3", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["nll"] > 0 and metrics["iw_samples"] == 3 and metrics["kl"] >= 0
    assert "decoder.gru.weight_hh_l0" in torch.load(run / "checkpoints/last.pt", weights_only=True)["model"]
