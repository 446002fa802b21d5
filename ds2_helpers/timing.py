"""Timing helpers: real-time factors with warm-up excluded."""

from __future__ import annotations

import time
from typing import Callable


def realtime_factor(fn: Callable[[object], object], inputs: list, audio_seconds: float, *, warmup: int = 1) -> float:
    """Compute seconds per audio second over `inputs` (RTF < 1 means faster than real time)."""
    for item in inputs[:warmup]:
        fn(item)
    t0 = time.perf_counter()
    for item in inputs:
        fn(item)
    return (time.perf_counter() - t0) / audio_seconds
