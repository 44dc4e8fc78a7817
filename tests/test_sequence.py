"""The evaluation path of the output layer gives the training path's numbers."""

import torch
import torch.nn.functional as F
from torch import nn

from textvae.models.sequence import sequence_log_prob, target_nll


def test_target_nll_equals_cross_entropy_in_blocks():
    torch.manual_seed(0)
    output = nn.Linear(8, 50)
    hidden, targets = torch.randn(23, 8), torch.randint(0, 50, (23,))
    expected = F.cross_entropy(output(hidden), targets, reduction="none")
    for rows in (1, 5, 23, 100):  # blocks that divide the rows, that do not, and one block for all
        torch.testing.assert_close(target_nll(hidden, targets, output, rows=rows), expected.detach())


def test_target_nll_under_bf16_autocast_matches_the_autocast_cross_entropy():
    torch.manual_seed(1)
    output = nn.Linear(16, 300)
    hidden, targets = torch.randn(40, 16), torch.randint(0, 300, (40,))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.cross_entropy(output(hidden).float(), targets, reduction="none")
        got = target_nll(hidden, targets, output, rows=7)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_sequence_log_prob_is_the_same_with_and_without_gradients():
    torch.manual_seed(2)
    output = nn.Linear(6, 20)
    hidden, targets = torch.randn(4, 9, 6), torch.randint(1, 20, (4, 9))
    targets[1, 5:] = 0  # padding
    targets[3, 2:] = 0
    with_grad = sequence_log_prob(hidden, targets, output, pad_id=0)
    with torch.no_grad():
        without = sequence_log_prob(hidden, targets, output, pad_id=0)
    torch.testing.assert_close(without, with_grad.detach())
    assert with_grad.requires_grad
