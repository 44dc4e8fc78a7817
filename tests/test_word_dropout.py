import torch

from textvae.core.word_dropout import WordDropout

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def _tokens():
    torch.manual_seed(0)
    body = torch.randint(4, 50, (64, 30))
    return torch.cat([torch.full((64, 1), BOS), body, torch.full((64, 1), EOS), torch.full((64, 5), PAD)], 1)


def test_word_dropout_never_replaces_specials():
    tokens = _tokens()
    module = WordDropout(0.99, UNK, [PAD, UNK, BOS, EOS]).train()
    out = module(tokens)
    special = (tokens == PAD) | (tokens == BOS) | (tokens == EOS)
    assert torch.equal(out[special], tokens[special])
    body = ~special
    assert (out[body] == UNK).float().mean() > 0.95


def test_word_dropout_rate_and_eval_mode():
    tokens = _tokens()
    module = WordDropout(0.3, UNK, [PAD, UNK, BOS, EOS])
    dropped = (module.train()(tokens)[:, 1:31] == UNK).float().mean()
    assert abs(float(dropped) - 0.3) < 0.03
    assert torch.equal(module.eval()(tokens), tokens)


def test_zero_rate_is_identity_in_training():
    tokens = _tokens()
    assert torch.equal(WordDropout(0.0, UNK, [PAD, UNK, BOS, EOS]).train()(tokens), tokens)
