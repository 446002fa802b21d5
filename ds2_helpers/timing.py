"""Timing helpers: median wall time with warm-up excluded, and real-time factors."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed calls (compilation, caches)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def realtime_factor(fn: Callable[[object], object], inputs: list, audio_seconds: float, *, warmup: int = 1) -> float:
    """Compute seconds per audio second over `inputs` (RTF < 1 means faster than real time)."""
    for item in inputs[:warmup]:
        fn(item)
    t0 = time.perf_counter()
    for item in inputs:
        fn(item)
    return (time.perf_counter() - t0) / audio_seconds
