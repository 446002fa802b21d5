"""Before a 50-hour run: how much audio fits in one batch on this machine, how long the epoch takes, what it needs.

Memory of a training step grows with the padded audio in the batch (utterances x longest frames). `measure`
times a real step of the chosen preset in a fresh process at two batch sizes and fits peak memory as
`base + slope x padded seconds`; `make_plan` turns that, the RAM available and a manifest's durations into a
batch size in seconds, steps and hours per epoch, disk for checkpoints, and the utterances that cannot fit.
`preflight` runs one step of a run's largest batch in a child process before the run starts, so a batch that
does not fit fails in the first minutes with a clear message instead of after 40 hours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ds2_helpers.bench import BenchConfig, run_isolated
from ds2_helpers.dataset import cut_batches, padded_seconds

HEADROOM = 0.15             # share of the available memory left free (page cache, the data, the notebook server)
BYTES_PER_PARAMETER = 12    # a resumable checkpoint: float32 weights + Adam's two moments
FRAME_SECONDS = 0.01


class PreflightError(RuntimeError):
    """The largest batch of a run does not fit in this machine's memory, with the fix."""


def available_memory_gb() -> float:
    """Memory this process may still use: MemAvailable, or less where a cgroup limit says so."""
    info = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    avail = int(info["MemAvailable"].split()[0]) / 2**20
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read())
        if limit != "max":
            avail = min(avail, (int(limit) - used) / 2**30)
    except (OSError, ValueError):
        pass
    return avail


@dataclass
class MemoryFit:
    """Peak training memory as base + slope x padded audio seconds, and step time per padded second."""

    base_gb: float
    gb_per_second: float
    step_seconds_per_second: float
    probes: list[dict] = field(default_factory=list)

    def peak_gb(self, batch_padded_seconds: float) -> float:
        """Projected peak memory of a step over this much padded audio."""
        return self.base_gb + self.gb_per_second * batch_padded_seconds

    def max_batch_seconds(self, budget_gb: float) -> float:
        """The most padded audio seconds one batch may hold within `budget_gb`."""
        return max(0.0, (budget_gb - self.base_gb) / self.gb_per_second)


def probe_config(preset: str, batch: int, seconds: float, conv: str = "native", **options) -> BenchConfig:
    """One training step as `train` runs it (MindSpore Conv2d unless told, Graph mode, dynamic shapes)."""
    return BenchConfig(name=f"{preset} {batch} x {seconds:.1f} s", preset=preset, batch_size=batch,
                       seconds=seconds, conv_impl=conv, **options)


def measure(preset: str = "paper", *, seconds: float = 10.0, batches: tuple[int, int] = (1, 3),
            progress: bool = True, **options) -> MemoryFit:
    """Two real training steps (after a warm-up) at two batch sizes, each in its own process; fit the line."""
    probes = []
    for batch in batches:
        cfg = probe_config(preset, batch, seconds, **options)
        if progress:
            print(f"measuring one training step of {cfg.name} ...", flush=True)
        result = run_isolated(cfg, steps=1, warmup=1)
        if "error" in result:
            raise PreflightError(f"measuring {cfg.name} failed: {result['error']}")
        probes.append({"batch": batch, "seconds": seconds, "padded_seconds": batch * seconds,
                       "peak_gb": result["peak_rss_mb"] / 1024, "step_seconds": result["step_seconds"]})
    (s0, m0), (s1, m1) = [(p["padded_seconds"], p["peak_gb"]) for p in probes]
    slope = max((m1 - m0) / (s1 - s0), 1e-3)
    base = m0 - slope * s0
    rate = probes[-1]["step_seconds"] / probes[-1]["padded_seconds"]
    return MemoryFit(base, slope, rate, probes)


def checkpoint_disk_gb(parameters: int = 86_608_096, keep_last: int = 3) -> float:
    """Disk for a run's checkpoints: `keep_last` resumable ones (weights + Adam moments) and the final weights."""
    return parameters * (BYTES_PER_PARAMETER * keep_last + 4) / 1e9


def feature_cache_gb(audio_hours: float, spect=None) -> float:
    """Disk for `--feature-cache`: one float32 spectrogram (n_bins x frames) per utterance."""
    from ds2_helpers.config import SpectConfig

    spect = spect or SpectConfig()
    return audio_hours * 3600 / spect.window_stride * spect.n_bins * 4 / 1e9


def librispeech_disk(subsets=("train-clean-100", "dev-clean", "test-clean"), *, keep_last: int = 3) -> dict:
    """What the course's real run needs on disk, in GB: the archives (openslr's published sizes, committed in
    data/setup_reference.json), the extracted FLAC (about the archive's size: FLAC does not compress further),
    the training subset's feature cache and the paper run's checkpoints."""
    from ds2_helpers.setup_check import reference  # the one reader of data/setup_reference.json

    ref = reference()["librispeech"]
    archives = sum(ref["archive_gb"][s] for s in subsets)
    train_hours = sum(ref["hours"][s] for s in subsets if s.startswith("train"))
    need = {"archives": archives, "extracted": archives, "feature_cache": feature_cache_gb(train_hours),
            "checkpoints": checkpoint_disk_gb(keep_last=keep_last)}
    need["total"] = sum(need.values())
    return {k: round(v, 1) for k, v in need.items()}


def make_plan(durations, fit: MemoryFit, *, memory_gb: float | None = None, batch_size: int = 64,
              batch_seconds: float | None = None, parameters: int = 86_608_096, keep_last: int = 3,
              pad_multiple: int = 64, headroom: float = HEADROOM, slack: float | None = None,
              fixed_batch: int | None = None, layerwise: bool = False) -> dict:
    """Batch seconds that fit, steps and hours per epoch, peak memory, checkpoint disk, utterances that cannot fit.

    `layerwise`: `fit` was measured on layerwise steps (TrainConfig.layerwise), which take no micro-batches.

    `slack`: training gives MindSpore's per-shape memory back once it has grown by this share (TrainConfig's
    `memory_slack`), so a step's measured peak may be exceeded by that much between two releases."""
    from ds2_helpers.config import TrainConfig

    slack = TrainConfig().memory_slack if slack is None else slack
    fixed_batch = fixed_batch or batch_size
    durations = np.asarray(durations, dtype=float)
    memory_gb = available_memory_gb() if memory_gb is None else memory_gb
    budget = memory_gb * (1 - headroom) / (1 + slack)
    fits = fit.max_batch_seconds(budget)
    chosen = batch_seconds or math.floor(fits)
    pad = lambda s: padded_seconds(s, pad_multiple)  # noqa: E731
    order = sorted(range(len(durations)), key=lambda i: durations[i])
    batches = cut_batches(order, durations, batch_size, chosen, pad)
    padded = [len(b) * max(pad(durations[i]) for i in b) for b in batches]
    too_long = [int(i) for i in np.flatnonzero([fit.peak_gb(pad(d)) > budget for d in durations])]
    largest = int(np.argmax(padded)) if padded else 0
    fitting = [pad(d) for i, d in enumerate(durations) if i not in set(too_long)]
    return {
        "memory_available_gb": memory_gb, "memory_budget_gb": budget, "headroom": headroom, "slack": slack,
        "base_gb": fit.base_gb, "gb_per_padded_second": fit.gb_per_second,
        "max_batch_seconds": fits, "batch_seconds": chosen, "batch_size_limit": batch_size,
        "utterances": int(len(durations)), "audio_hours": float(durations.sum() / 3600),
        "steps_per_epoch": len(batches), "padded_hours": float(sum(padded) / 3600),
        "epoch_hours": float(sum(padded) * fit.step_seconds_per_second / 3600),
        "largest_batch": {"utterances": len(batches[largest]) if batches else 0,
                          "padded_seconds": padded[largest] if padded else 0.0},
        "peak_gb": fit.peak_gb(max(padded, default=0.0)),
        "checkpoint_disk_gb": checkpoint_disk_gb(parameters, keep_last),
        "feature_cache_gb": feature_cache_gb(float(durations.sum() / 3600)),
        "cannot_fit": too_long, "probes": fit.probes,
        "fixed_batch": fixed_batch, "layerwise": layerwise,
        "micro_batch": None if layerwise else micro_batch_that_fits(fit, budget, max(fitting, default=0.0),
                                                                     fixed_batch, parameters),
    }


def accumulator_bytes(parameters: int) -> int:
    """Memory gradient accumulation adds (micro_batch.AccumulatingStep): one float32 value per trainable parameter."""
    return parameters * 4


def micro_batch_that_fits(fit: MemoryFit, budget_gb: float, longest_padded: float, batch_size: int,
                          parameters: int) -> int:
    """Utterances per micro-batch (train --micro-batch) that keep fixed batches of `batch_size` within the
    budget even when every utterance is as long as the longest: the accumulated gradients (one float32 copy of
    the weights) come on top of one micro-batch's step. 0: not even one utterance fits."""
    if longest_padded <= 0:
        return batch_size
    room = budget_gb - accumulator_bytes(parameters) / 2**30
    return int(min(batch_size, max(0, math.floor(fit.max_batch_seconds(room) / longest_padded))))


def format_plan(plan: dict, names: list[str] | None = None) -> str:
    """The plan as a student reads it before starting the run."""
    lines = [
        f"memory: {plan['memory_available_gb']:.1f} GB available; {plan['headroom']:.0%} kept free and "
        f"{plan['slack']:.0%} for growth between two releases of memory leave {plan['memory_budget_gb']:.1f} GB "
        "for one step",
        f"measured: peak = {plan['base_gb']:.2f} GB + {plan['gb_per_padded_second'] * 1024:.0f} MB per padded "
        f"audio second in the batch",
        f"largest batch that fits: {plan['max_batch_seconds']:.0f} padded seconds -> use --batch-seconds "
        f"{plan['batch_seconds']:.0f}",
        f"epoch: {plan['utterances']} utterances, {plan['audio_hours']:.1f} h of audio "
        f"({plan['padded_hours']:.1f} h padded), {plan['steps_per_epoch']} steps, about "
        f"{plan['epoch_hours']:.1f} h on this machine (a projection from the measured step)",
        f"peak memory: about {plan['peak_gb']:.1f} GB per step, up to {plan['peak_gb'] * (1 + plan['slack']):.1f} GB "
        f"before memory is given back (largest batch: {plan['largest_batch']['utterances']} "
        f"utterances, {plan['largest_batch']['padded_seconds']:.0f} padded seconds)",
        f"disk for checkpoints: about {plan['checkpoint_disk_gb']:.1f} GB (keep-last 3 resumable + final weights); "
        f"for --feature-cache: about {plan['feature_cache_gb']:.1f} GB",
    ]
    m, n = plan.get("micro_batch", 0), plan.get("fixed_batch", plan["batch_size_limit"])
    if plan.get("layerwise"):
        lines.append("measured with the backward pass one layer at a time: train with --layerwise (no --micro-batch)")
    elif 0 < m < n:
        lines.append(f"or fixed batches of {n} utterances: --batch-size {n} --micro-batch {m} (each batch run {m} "
                     "utterances at a time, one update from their summed gradients: the batch's update but for "
                     "BatchNorm's statistics, slower per utterance)")
        lines.append(f"or fixed batches of {n} with the batch's exact update: --batch-size {n} --layerwise (the "
                     "backward pass one layer at a time, each recomputed; its preflight measures whether it fits)")
    elif m >= n:
        lines.append(f"fixed batches of {n} utterances fit whole (no --micro-batch needed)")
    bad = plan["cannot_fit"]
    if bad:
        shown = ", ".join((names[i] if names else str(i)) for i in bad[:10])
        lines.append(f"cannot fit at all ({len(bad)}): {shown}{' ...' if len(bad) > 10 else ''} "
                     "(skip them with --max-duration, or use a machine with more memory)")
    else:
        lines.append("every utterance fits")
    return "\n".join(lines)


def largest_batch(batches: list[list[int]], frames: list[int], pad_multiple: int = 64,
                  micro_batch: int | None = None) -> tuple[int, int]:
    """(utterances, padded frames) of the batch with the most padded frames run at once: the step that needs
    most memory. With micro-batches of M, a batch runs at most M utterances at once, so a few long ones may need
    more than many short ones."""
    def longest(b):
        return math.ceil(max(frames[i] for i in b) / pad_multiple) * pad_multiple
    b = max(batches, key=lambda b: min(len(b), micro_batch or len(b)) * longest(b))
    return len(b), longest(b)


#: Steps of the largest batch the preflight runs before the one it measures. A step's first run of a shape holds
#: less than training does later (paper, 9 x 12.8 s: 10.0 GB on its first step, 11.4 GB on its second; a 45-step
#: run with batches up to that size peaked at 13.9 GB), so the preflight measures the second, as `measure` does.
PREFLIGHT_WARMUP = 1


def preflight(preset: str, batch: int, frames: int, *, memory_gb: float | None = None, **options) -> dict:
    """Run the largest batch in a child process (a warm-up step, then the step measured); PreflightError if it
    cannot work."""
    seconds = frames * FRAME_SECONDS
    result = run_isolated(probe_config(preset, batch, seconds, **options), steps=1, warmup=PREFLIGHT_WARMUP)
    memory_gb = available_memory_gb() if memory_gb is None else memory_gb
    what = f"the largest batch ({batch} utterances padded to {seconds:.1f} s = {batch * seconds:.0f} padded seconds)"
    if "error" in result:
        raise PreflightError(f"{what} failed its trial step: {result['error']}. Run `python -m ds2_helpers plan` "
                             "and pass the --batch-seconds it suggests (or a smaller --batch-size)")
    from ds2_helpers.config import TrainConfig

    peak = result["peak_rss_mb"] / 1024
    if peak * (1 + TrainConfig().memory_slack) > memory_gb * (1 - HEADROOM / 2):
        keep = ("" if options.get("layerwise") else ", or keep the batch and run it in micro-batches (--micro-batch) "
                "or one layer at a time (--layerwise)")
        raise PreflightError(f"{what} needs {peak:.1f} GB at its peak, {memory_gb:.1f} GB are available: lower "
                             f"--batch-seconds{keep} (`python -m ds2_helpers plan` measures what fits)")
    return {"batch": batch, "frames": frames, "peak_gb": peak, "step_seconds": result["step_seconds"],
            "memory_available_gb": memory_gb}
