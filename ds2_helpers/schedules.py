"""Learning-rate schedules: the rate of every training step, in plain Python (no MindSpore), so a notebook can
plot a schedule before training with it and a test can check it against its formula.

- "anneal": the model zoo's per-epoch decay, `lr / anneal^epoch` (the default, what training did before these
  schedules existed);
- "constant": `lr` at every step;
- "cosine": linear warm-up from `lr / W` to `lr` over the first W steps, then half a cosine down to 0 at the
  last step of the schedule (Loshchilov & Hutter's SGDR without restarts, with Goyal et al.'s warm-up);
- "onecycle": Smith's one-cycle policy, with PyTorch's OneCycleLR defaults: half a cosine up from `lr / 25` to
  `lr` over the first W steps, half a cosine down to `lr / 25 / 1e4` at the last step. The momentum cycle of
  the original is left out: only the rate changes.

"cosine" and "onecycle" are step-based: they need the schedule's length in steps (`TrainConfig.schedule_steps`,
or epochs x batches per epoch as `Trainer` computes it). A run longer than its schedule keeps the final rate.
"""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("anneal", "constant", "cosine", "onecycle")
STEP_BASED = ("cosine", "onecycle")
"""Schedules whose rate changes every step (the others change at most once per epoch)."""
DEFAULT_WARMUP_FRACTION = {"cosine": 0.05, "onecycle": 0.3}
"""Share of the schedule spent warming up when neither `warmup_steps` nor `warmup_fraction` is given: a short
warm-up for cosine (Goyal et al. use ~5 of 90 epochs), PyTorch OneCycleLR's `pct_start` = 0.3 for one-cycle."""
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4
"""One-cycle starts at lr / 25 and ends at lr / 25 / 1e4 (PyTorch's `div_factor` and `final_div_factor`)."""


def is_step_based(schedule: str) -> bool:
    """True for schedules that set the rate every step and so need the schedule's length."""
    return schedule in STEP_BASED


def warmup_steps(cfg, steps_total: int) -> int:
    """Warm-up steps W of a step-based schedule: `cfg.warmup_steps`, else the warm-up fraction of `steps_total`."""
    if cfg.warmup_steps is not None:
        return int(cfg.warmup_steps)
    fraction = cfg.warmup_fraction if cfg.warmup_fraction is not None else DEFAULT_WARMUP_FRACTION[cfg.schedule]
    return int(round(fraction * steps_total))


def _half_cosine(start: float, end: float, progress: float) -> float:
    """From `start` (progress 0) to `end` (progress 1) along half a cosine; progress is clipped to [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def annealed_lr(cfg, epoch: int) -> float:
    """The model zoo's schedule, actually applied: lr / anneal^epoch."""
    return cfg.learning_rate / (cfg.learning_anneal ** epoch)


def lr_at(cfg, step: int, epoch: int, steps_total: int | None = None) -> float:
    """The learning rate of global step `step` (0 = the first step) in epoch `epoch` under `cfg.schedule`.

    `cfg`: a TrainConfig (learning_rate, learning_anneal, schedule, warmup_steps, warmup_fraction);
    `steps_total`: the schedule's length in steps, needed by "cosine" and "onecycle" only."""
    lr, schedule = cfg.learning_rate, cfg.schedule
    if schedule == "anneal":
        return annealed_lr(cfg, epoch)  # the expression training always used: same float, same run
    if schedule == "constant":
        return lr
    if schedule not in STEP_BASED:
        from ds2_helpers.config import ParameterError

        raise ParameterError(f"schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    if not steps_total or steps_total < 1:
        from ds2_helpers.config import ParameterError

        raise ParameterError(f"schedule {schedule!r} sets the rate every step and needs its length: give "
                             "schedule_steps (a time race estimates it from the budget)")
    warm = min(warmup_steps(cfg, steps_total), steps_total)
    if schedule == "cosine":
        if step < warm:
            return lr * (step + 1) / warm  # linear: lr / W at the first step, lr at step W - 1
        return _half_cosine(lr, 0.0, (step - warm) / max(steps_total - warm, 1))
    start = lr / ONECYCLE_DIV
    if step < warm:
        return _half_cosine(start, lr, step / warm)
    return _half_cosine(lr, start / ONECYCLE_FINAL_DIV, (step - warm) / max(steps_total - warm, 1))


def lr_curve(cfg, steps: int, steps_per_epoch: int | None = None, steps_total: int | None = None) -> np.ndarray:
    """The rate of each of the first `steps` steps [shape=(steps,)], e.g. to plot a schedule before using it.

    `steps_per_epoch` places the epochs for "anneal" (default: all steps in epoch 0); `steps_total` is the
    step-based schedules' length (default: `cfg.schedule_steps`, else `steps`)."""
    total = steps_total or cfg.schedule_steps or steps
    per_epoch = steps_per_epoch or max(steps, 1)
    return np.array([lr_at(cfg, s, s // per_epoch, total) for s in range(steps)], dtype=np.float64)
