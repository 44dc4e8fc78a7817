"""KL-weight schedules: pure functions of the global step, so a resumed run matches an uninterrupted one."""

import math

from textvae.config import ObjectiveConfig


def constant(step: int, weight: float) -> float:
    return weight


def linear(step: int, start: float, end: float, warmup_steps: int) -> float:
    """From `start` at step 0 to `end` at `warmup_steps`, then flat (`start` before step 0)."""
    if warmup_steps <= 0:
        return end
    return start + (end - start) * min(1.0, max(0.0, step / warmup_steps))


def logistic(step: int, end: float, k: float, midpoint: float) -> float:
    """end / (1 + exp(-k (step - midpoint))) (Bowman et al. 2016)."""
    x = -k * (step - midpoint)
    return end / (1.0 + math.exp(x)) if x < 700 else 0.0


def cyclical(step: int, start: float, end: float, total_steps: int, cycles: int, ratio: float) -> float:
    """M cycles over `total_steps`; within each, rise linearly for a share R, then hold (Fu et al. 2019).

    After `total_steps` the weight stays at `end`.
    """
    if step >= total_steps:
        return end
    period = total_steps / cycles
    tau = (step % period) / period
    if ratio <= 0:
        return end
    return start + (end - start) * min(1.0, tau / ratio)


def kl_weight(config: ObjectiveConfig, step: int, max_steps: int) -> float:
    """The KL weight the objective uses at `step` (0-based global step)."""
    start = config.anneal_start
    if config.kl_schedule == "constant":
        return constant(step, config.kl_weight)
    if config.kl_schedule == "linear":
        return linear(step - start, config.kl_start, config.kl_weight, config.warmup_steps - start)
    if config.kl_schedule == "logistic":
        return logistic(step, config.kl_weight, config.logistic_k, (start + config.warmup_steps) / 2)
    if step < start:
        return config.kl_start
    total = _span(config, max_steps)
    return cyclical(step - start, config.kl_start, config.kl_weight, total, config.cycles, config.cycle_ratio)


def _span(config: ObjectiveConfig, vae_steps: int) -> int:
    """Steps the cycles span, given the VAE phase's steps: objective.cycle_total_steps, else those after
    anneal_start."""
    return config.cycle_total_steps or max(1, vae_steps - config.anneal_start)


def cycle_span(config: ObjectiveConfig, max_steps: int) -> int:
    """Steps the cyclical schedule's cycles span in a run of train.max_steps (its VAE phase's, `_span`): a resumed
    run with another max_steps would move them when cycle_total_steps is 0 (run.check_resumable)."""
    return _span(config, max_steps - config.pretrain_steps)


class KLSchedule:
    """The KL weight at each global step of a run, autoencoder pretraining included.

    The first objective.pretrain_steps steps train a deterministic autoencoder (z = mu, weight 0); the schedule
    then starts counting from the end of pretraining, so `anneal_start`, `warmup_steps` and the cycles are
    measured in steps of the VAE phase.
    """

    def __init__(self, config: ObjectiveConfig, max_steps: int):
        self.config, self.max_steps = config, max_steps

    def pretraining(self, step: int) -> bool:
        """Whether the 0-based global `step` belongs to the autoencoder phase."""
        return step < self.config.pretrain_steps

    def __call__(self, step: int) -> float:
        """The KL weight of the 0-based global `step`."""
        if self.pretraining(step):
            return 0.0
        start = self.config.pretrain_steps
        return kl_weight(self.config, step - start, self.max_steps - start)
