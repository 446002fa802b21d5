"""Data augmentation for training: speed perturbation, gain and additive noise on the waveform, SpecAugment masks
on the spectrogram. Configured by `ds2_helpers.config.AugmentConfig` (all off by default).

Every random choice comes from one `numpy.random.Generator` per utterance and epoch, `utterance_rng(seed, epoch,
utterance_id)`, drawn in a fixed order (speed, gain, noise, then the masks): the same run sees the same augmented
utterance at the same step whether or not it was stopped and resumed in between, and another epoch sees another
version of it. The id is hashed with SHA-256, not Python's `hash()`, which is salted per process."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np
import scipy.signal

from ds2_helpers.config import AugmentConfig


def utterance_rng(seed: int, epoch: int, utterance_id: str) -> np.random.Generator:
    """The generator of one utterance's augmentation in one epoch (the same in every process and every run)."""
    digest = hashlib.sha256(str(utterance_id).encode("utf-8")).digest()
    words = [int.from_bytes(digest[k: k + 4], "little") for k in range(0, 16, 4)]
    return np.random.default_rng([int(seed) % 2**64, int(epoch) % 2**64, *words])


# ---- waveform --------------------------------------------------------------------------------------------------
def speed_ratio(speed: float) -> tuple[int, int]:
    """(up, down) of the polyphase resampling that plays audio `speed` times as fast (1.1 -> (10, 11))."""
    frac = Fraction(float(speed)).limit_denominator(100)
    return frac.denominator, frac.numerator


def speed_length(n_samples: int, speed: float) -> int:
    """Samples after `speed_perturb`: ceil(n * up / down), about n / speed."""
    up, down = speed_ratio(speed)
    return n_samples if up == down else int(math.ceil(n_samples * up / down))


def speed_perturb(audio: np.ndarray, speed: float) -> np.ndarray:
    """Play `audio` `speed` times as fast by resampling (`scipy.signal.resample_poly`) and keeping the sample rate:
    length / speed samples, every frequency times speed - tempo and pitch change together, like sox's `speed`
    in Kaldi's recipes and DeepSpeech2's perturbation."""
    up, down = speed_ratio(speed)
    if up == down:
        return audio
    return scipy.signal.resample_poly(np.asarray(audio, dtype=np.float32), up, down).astype(np.float32)


def gain(audio: np.ndarray, db: float) -> np.ndarray:
    """Scale the volume by `db` decibels (amplitude x 10^(db/20))."""
    return (np.asarray(audio, dtype=np.float32) * np.float32(10.0 ** (db / 20.0))).astype(np.float32)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise from `rng`, scaled so that mean(audio^2) / mean(noise^2) is exactly `snr_db`
    (over the whole utterance, pauses included); silent audio is returned unchanged."""
    audio = np.asarray(audio, dtype=np.float32)
    noise = rng.standard_normal(audio.size)
    power = float(np.mean(audio.astype(np.float64) ** 2))
    if power == 0.0:
        return audio
    noise *= math.sqrt(power / (10.0 ** (snr_db / 10.0)) / float(np.mean(noise ** 2)))
    return (audio + noise).astype(np.float32)


@dataclass(frozen=True)
class WaveformDraw:
    """What one utterance got: speed factor, gain in dB and noise SNR in dB (None: not applied); `fell_back`:
    the drawn speed would have left CTC too few frames, so the utterance kept speed 1."""

    speed: float = 1.0
    gain_db: float | None = None
    snr_db: float | None = None
    fell_back: bool = False


def draw_waveform(cfg: AugmentConfig, rng: np.random.Generator) -> WaveformDraw:
    """The waveform parameters for one utterance, drawn in a fixed order (every configured kind always draws,
    so one choice never shifts the others)."""
    speed = float(cfg.speeds[int(rng.integers(len(cfg.speeds)))]) if cfg.speeds else 1.0
    db = float(rng.uniform(*cfg.gain_db)) if cfg.gain_db is not None else None
    snr = None
    if cfg.noise_snr_db is not None:
        noisy, value = rng.random() < cfg.noise_prob, float(rng.uniform(*cfg.noise_snr_db))
        snr = value if noisy else None
    return WaveformDraw(speed=speed, gain_db=db, snr_db=snr)


def augment_waveform(audio: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator, *,
                     fits: Callable[[int], bool] | None = None) -> tuple[np.ndarray, WaveformDraw]:
    """Speed, then gain, then noise, as `cfg` asks; returns the audio and what was drawn.

    `fits(n_samples)`: whether CTC can still align the transcript to audio of that length; a speed-up that
    would leave too few output frames is not applied (the utterance keeps speed 1.0, `fell_back`)."""
    draw = draw_waveform(cfg, rng)
    if draw.speed != 1.0 and fits is not None and not fits(speed_length(len(audio), draw.speed)):
        draw = WaveformDraw(1.0, draw.gain_db, draw.snr_db, fell_back=True)
    out = speed_perturb(audio, draw.speed)
    if draw.gain_db is not None:
        out = gain(out, draw.gain_db)
    if draw.snr_db is not None:
        out = add_noise(out, draw.snr_db, rng)
    return out, draw


# ---- features (SpecAugment) ------------------------------------------------------------------------------------
def mask_bands(bins: int, frames: int, cfg: AugmentConfig, rng: np.random.Generator
               ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """SpecAugment's masks as (start, width) pairs: `freq_masks` bands of width uniform in [0, freq_width] bins,
    then `time_masks` of width uniform in [0, min(time_width, time_max_fraction x frames)] frames; each start
    uniform over the places the band fits."""
    freq, time = [], []
    for _ in range(cfg.freq_masks):
        width = int(rng.integers(0, min(cfg.freq_width, bins) + 1))
        freq.append((int(rng.integers(0, bins - width + 1)), width))
    longest = min(cfg.time_width, int(cfg.time_max_fraction * frames))
    for _ in range(cfg.time_masks):
        width = int(rng.integers(0, longest + 1))
        time.append((int(rng.integers(0, frames - width + 1)), width))
    return freq, time


def apply_masks(feats: np.ndarray, freq: list[tuple[int, int]], time: list[tuple[int, int]]) -> np.ndarray:
    """A copy of `feats` [bins, frames] with the bands set to its mean (0 for normalised features)."""
    out = np.array(feats, dtype=np.float32, copy=True)
    fill = np.float32(feats.mean())
    for start, width in freq:
        out[start: start + width, :] = fill
    for start, width in time:
        out[:, start: start + width] = fill
    return out


def spec_mask(feats: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """SpecAugment's frequency and time masks on a copy of `feats` (the cached array is never changed)."""
    freq, time = mask_bands(feats.shape[0], feats.shape[1], cfg, rng)
    return apply_masks(feats, freq, time)


def augment_features(feats: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """The feature-side augmentation of `cfg` (SpecAugment masks; `feats` itself when there are none)."""
    return spec_mask(feats, cfg, rng) if cfg.spectral else feats
