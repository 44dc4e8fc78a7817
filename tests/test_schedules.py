import pytest

from textvae.config import ObjectiveConfig
from textvae.core import schedules
from textvae.core.schedules import kl_weight


@pytest.mark.parametrize("step,expected", [(0, 0.0), (250, 0.25), (500, 0.5), (1000, 1.0), (5000, 1.0)])
def test_linear(step, expected):
    config = ObjectiveConfig(kl_schedule="linear", kl_start=0.0, kl_weight=1.0, warmup_steps=1000)
    assert kl_weight(config, step, 10000) == pytest.approx(expected)


def test_logistic_matches_bowman_formula():
    config = ObjectiveConfig(kl_schedule="logistic", kl_weight=1.0, logistic_k=0.0025, warmup_steps=5000)
    assert kl_weight(config, 2500, 0) == pytest.approx(0.5)  # the midpoint
    assert kl_weight(config, 0, 0) == pytest.approx(1 / (1 + 2.718281828**6.25), rel=1e-6)
    assert kl_weight(config, 100000, 0) == pytest.approx(1.0)
    assert schedules.logistic(-(10**6), 1.0, 1.0, 0) == 0.0  # no overflow far to the left


def test_cyclical_follows_fu_et_al():
    # M = 4 cycles over 1000 steps, R = 0.5: each 250-step cycle rises for 125 steps, then holds.
    config = ObjectiveConfig(kl_schedule="cyclical", kl_start=0.0, kl_weight=1.0, cycles=4, cycle_ratio=0.5)
    values = {step: kl_weight(config, step, 1000) for step in (0, 50, 125, 200, 250, 300, 999, 1000, 2000)}
    assert values == pytest.approx({0: 0.0, 50: 0.4, 125: 1.0, 200: 1.0, 250: 0.0, 300: 0.4, 999: 1.0, 1000: 1.0,
                                    2000: 1.0})  # fmt: skip


def test_cyclical_total_can_be_set_apart_from_max_steps():
    config = ObjectiveConfig(kl_schedule="cyclical", cycles=2, cycle_ratio=1.0, cycle_total_steps=100)
    assert kl_weight(config, 25, 10**6) == pytest.approx(0.5)
    assert kl_weight(config, 75, 10**6) == pytest.approx(0.5)


def test_constant_beta():
    assert kl_weight(ObjectiveConfig(kl_schedule="constant", kl_weight=0.4), 123, 1000) == 0.4


def test_annealing_can_start_later():
    config = ObjectiveConfig(kl_schedule="linear", kl_start=0.1, kl_weight=1.0, anneal_start=100, warmup_steps=200)
    assert [kl_weight(config, s, 1000) for s in (0, 100, 150, 200, 300)] == pytest.approx([0.1, 0.1, 0.55, 1.0, 1.0])
    logistic_config = ObjectiveConfig(kl_schedule="logistic", anneal_start=1000, warmup_steps=3000)
    assert kl_weight(logistic_config, 2000, 0) == pytest.approx(0.5)
    cyclic = ObjectiveConfig(kl_schedule="cyclical", kl_start=0.0, anneal_start=100, cycles=2, cycle_ratio=0.5)
    assert [kl_weight(cyclic, s, 500) for s in (50, 100, 150, 200, 300, 350)] == pytest.approx(
        [0.0, 0.0, 0.5, 1.0, 0.0, 0.5]
    )
