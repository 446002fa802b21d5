"""From a manifest to padded batches: features (cached or on the fly), length-sorted buckets, rank sharding."""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ds2_helpers.config import AugmentConfig, SpectConfig
from ds2_helpers.feature_cache import FeatureCache
from ds2_helpers.features import AudioError, load_audio, n_frames, spectrogram
from ds2_helpers.labels import BLANK_INDEX, encode
from ds2_helpers.librispeech import ManifestError, read_manifest
from ds2_helpers.model import output_lengths

DURATION_TOLERANCE = 0.1  # seconds the audio may differ from the manifest's duration (rounding, resampling)
REBUILD = "rebuild the manifest with `python -m ds2_helpers manifest --root ... --subset ... --out ...`"


def ctc_min_frames(labels) -> int:
    """Fewest output frames CTC can align `labels` to: one per label, plus a blank between two equal neighbours
    ("AA BB" needs 5 + 2 = 7, not 5)."""
    labels = list(labels)
    return len(labels) + sum(a == b for a, b in zip(labels, labels[1:]))


@dataclass
class Batch:
    """Padded arrays for one step: x [N, 1, bins, T], x_len [N], y [N, S] (blank-padded), y_len [N]."""

    x: np.ndarray
    x_len: np.ndarray
    y: np.ndarray
    y_len: np.ndarray
    ids: list[str]

    @property
    def padding_fraction(self) -> float:
        """Share of the padded frames that carry no audio (the cost of unsorted batches)."""
        return 1.0 - float(self.x_len.sum()) / float(self.x.shape[0] * self.x.shape[3])


class SpeechData:
    """A manifest's utterances with their labels; features computed on demand and optionally cached.

    `cache`: True keeps every spectrogram in RAM after its first use (fine for the mini corpus: ~0.2 GB; not for
    train-clean-100: ~23 GB), False computes them every time, a folder keeps them on disk (FeatureCache).

    Utterances CTC cannot align (too many characters for their frames) are left out and listed in `skipped`; if
    that leaves none, a ManifestError says why (`allow_empty=True` returns the empty dataset instead).

    Augmentation (`batch(..., augment=...)`, what `Trainer.fit` passes; evaluation never does): the caches hold
    only the plain spectrograms. Speed, gain or noise change the audio, so those utterances are read and
    transformed afresh every time, bypassing the RAM and disk caches (nothing augmented is ever stored);
    SpecAugment alone masks a copy of the cached spectrogram. `speed_fallbacks` counts the utterances that kept
    speed 1.0 because the drawn speed-up left CTC too few frames."""

    def __init__(self, manifest: str | Path | pd.DataFrame, spect: SpectConfig = SpectConfig(), *,
                 cache: bool | str | Path = True, max_duration: float | None = None, limit: int | None = None,
                 allow_empty: bool = False) -> None:
        frame = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
        name = "the manifest" if isinstance(manifest, pd.DataFrame) else str(manifest)
        longer = frame[frame.duration > max_duration] if max_duration else frame.iloc[:0]
        if max_duration:
            frame = frame[frame.duration <= max_duration]
        if limit:
            frame = frame.iloc[:limit]
        self.spect = spect
        self.cache = bool(cache) and not isinstance(cache, (str, Path))
        self.disk = FeatureCache(cache, spect) if isinstance(cache, (str, Path)) else None
        self._features: dict[int, np.ndarray] = {}
        self.speed_fallbacks = 0
        self.skipped: list[str] = []
        keep = []
        for i, row in enumerate(frame.itertuples(index=False)):
            frames = n_frames(int(round(row.duration * spect.sample_rate)), spect)
            labels = encode(row.transcript)
            need, have = ctc_min_frames(labels), int(output_lengths(frames))
            if need > have:
                self.skipped.append(f"{row.audio_path}: {len(labels)} characters need {need} output frames but "
                                    f"{row.duration:g} s give {have} (CTC needs one per character plus a blank "
                                    f"between repeated letters)")
                continue
            keep.append(i)
        if not keep and not allow_empty:  # an empty dataset would "train" and save an untrained checkpoint
            why = [f"{len(longer)} longer than max_duration {max_duration:g} s"] if len(longer) else []
            if self.skipped:
                why.append(f"{len(self.skipped)} with more characters than CTC can fit, e.g. "
                           + "; ".join(self.skipped[:3]))
            raise ManifestError(f"{name}: no usable utterances ({'; '.join(why) or 'no rows'}); "
                                "raise max_duration if it filtered them, check the transcripts against the audio, or use another manifest")
        self.frame = frame.iloc[keep].reset_index(drop=True)
        self.labels = [np.asarray(encode(t), dtype=np.int32) for t in self.frame.transcript]

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def durations(self) -> np.ndarray:
        """Seconds per utterance, in manifest order."""
        return self.frame.duration.to_numpy()

    def _existing_path(self, i: int) -> str:
        path = self.frame.audio_path[i]
        if not os.path.exists(path):
            raise AudioError(f"{path}: no such audio file; restore it or {REBUILD}")
        return path

    def _check_frames(self, i: int, frames: int) -> None:
        """ManifestError when `frames` (of the unaugmented audio) do not last the manifest's duration."""
        recorded = float(self.frame.duration[i])
        actual = (frames - 1) * self.spect.hop_length / self.spect.sample_rate  # to within one hop
        if abs(actual - recorded) > DURATION_TOLERANCE:  # e.g. audio cut after the manifest was built
            raise ManifestError(f"{self.frame.audio_path[i]}: the audio lasts {actual:.2f} s but the manifest "
                                f"records {recorded:.2f} s (the file changed after the manifest was built); {REBUILD}")

    def features(self, i: int) -> np.ndarray:
        """Spectrogram [bins, frames] of utterance i (cached after the first call when `cache`); AudioError for a
        missing or unreadable file, ManifestError when its length is not the manifest's duration."""
        if i in self._features:
            return self._features[i]
        path = self._existing_path(i)
        compute = lambda: spectrogram(load_audio(path, self.spect.sample_rate), self.spect)  # noqa: E731
        feats = self.disk.get(path, compute) if self.disk else compute()
        self._check_frames(i, feats.shape[1])
        if self.cache:
            self._features[i] = feats
        return feats

    def audio(self, i: int) -> np.ndarray:
        """Waveform of utterance i at the spectrogram's rate (never cached), checked like `features`."""
        audio = load_audio(self._existing_path(i), self.spect.sample_rate)
        self._check_frames(i, n_frames(audio.size, self.spect))
        return audio

    def augmented_features(self, i: int, augment: AugmentConfig, *, seed: int, epoch: int) -> np.ndarray:
        """Utterance i's spectrogram as augmented in `epoch` of a run with `seed` (deterministic in seed, epoch and
        utterance id). Waveform augmentations recompute it from the audio (caches bypassed); a speed-up that
        would leave CTC too few output frames is skipped for this utterance (speed 1.0, `speed_fallbacks`)."""
        from ds2_helpers.augment import augment_features, augment_waveform, utterance_rng

        rng = utterance_rng(seed, epoch, self.frame.utterance_id[i])
        if augment.waveform:
            need = ctc_min_frames(self.labels[i])
            fits = lambda n: int(output_lengths(n_frames(n, self.spect))) >= need  # noqa: E731
            audio, drawn = augment_waveform(self.audio(i), augment, rng, fits=fits)
            self.speed_fallbacks += drawn.fell_back
            feats = spectrogram(audio, self.spect)
        else:
            feats = self.features(i)
        return augment_features(feats, augment, rng)

    def batch(self, indices: list[int], *, pad_multiple: int = 1, fixed_frames: int | None = None,
              label_multiple: int = 1, feats: list[np.ndarray] | None = None,
              augment: AugmentConfig | None = None, seed: int = 0, epoch: int = 0) -> Batch:
        """Pad a list of utterances into one Batch (frames rounded up to `pad_multiple`, or exactly `fixed_frames`);
        `feats`: their spectrograms when already computed; `augment`: augmented as in `epoch` of a run with
        `seed` (training only)."""
        if feats is None and augment is not None and augment.enabled:
            feats = [self.augmented_features(i, augment, seed=seed, epoch=epoch) for i in indices]
        feats = feats if feats is not None else [self.features(i) for i in indices]
        lengths = np.array([f.shape[1] for f in feats], dtype=np.int32)
        if fixed_frames:  # the model zoo's scheme: pad or crop everything to one length
            frames = fixed_frames
            lengths = np.minimum(lengths, frames)
        else:
            frames = int(math.ceil(lengths.max() / pad_multiple) * pad_multiple)
        x = np.zeros((len(indices), 1, self.spect.n_bins, frames), dtype=np.float32)
        for k, f in enumerate(feats):
            x[k, 0, :, : lengths[k]] = f[:, : lengths[k]]
        labels = [self.labels[i] for i in indices]
        y_len = np.array([len(l) for l in labels], dtype=np.int32)
        s = int(math.ceil(max(y_len.max(), 1) / label_multiple) * label_multiple)
        y = np.full((len(indices), s), BLANK_INDEX, dtype=np.int32)
        for k, l in enumerate(labels):
            y[k, : len(l)] = l
        return Batch(x, lengths, y, y_len, [self.frame.utterance_id[i] for i in indices])


def make_batches(durations: np.ndarray, batch_size: int, *, batch_seconds: float | None = None,
                 padded=None, epoch: int = 0, seed: int = 0, order: str = "bucketed", sortagrad: bool = True,
                 drop_last: bool = False) -> list[list[int]]:
    """Index lists per step. `bucketed`: sort by length, cut into batches, shuffle the batch order
    (SortaGrad keeps epoch 0 sorted); `sorted`: always shortest first; `random`: shuffle utterances.

    With `batch_seconds` a batch holds as many utterances as fit in that many *padded* audio seconds
    (utterances x the longest one's padded duration, `padded(seconds)`; at most `batch_size`), so short
    utterances travel in large batches and long ones in small batches of about the same memory."""
    n = len(durations)
    rng = random.Random(seed * 100_003 + epoch)
    if order == "random":
        idx = list(range(n))
        rng.shuffle(idx)
    elif order in ("bucketed", "sorted"):
        idx = sorted(range(n), key=lambda i: (durations[i], i))
    else:
        raise ValueError(f"order {order!r}: use 'bucketed', 'sorted' or 'random'")
    batches = cut_batches(idx, durations, batch_size, batch_seconds, padded)
    if drop_last and batches and len(batches[-1]) < batch_size and not batch_seconds:
        batches.pop()
    if order == "bucketed" and not (sortagrad and epoch == 0):
        rng.shuffle(batches)
    return batches


def padded_seconds(seconds: float, pad_multiple: int = 64, frame_seconds: float = 0.01) -> float:
    """Audio seconds after padding the frames up to a multiple of `pad_multiple` (what a batch costs)."""
    return math.ceil(seconds / frame_seconds / pad_multiple) * pad_multiple * frame_seconds


def cut_batches(idx: list[int], durations, batch_size: int, batch_seconds: float | None = None,
                padded=None) -> list[list[int]]:
    """Cut an ordered list of utterances into batches of at most `batch_size` and `batch_seconds` padded seconds
    (an utterance longer than `batch_seconds` on its own makes a batch of one)."""
    padded = padded or float
    batches, current, longest = [], [], 0.0
    for i in idx:
        seconds = padded(float(durations[i]))
        full = len(current) >= batch_size
        too_long = batch_seconds is not None and (len(current) + 1) * max(longest, seconds) > batch_seconds
        if current and (full or too_long):
            batches.append(current)
            current, longest = [], 0.0
        current.append(i)
        longest = max(longest, seconds)
    if current:
        batches.append(current)
    return batches


def shard(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """Batches for one data-parallel rank: every world-th batch, trimmed so all ranks take the same steps."""
    steps = len(batches) // world
    return batches[rank: steps * world: world]


def padding_waste(durations: np.ndarray, batch_size: int, order: str, seed: int = 0) -> float:
    """Share of padded frames over an epoch when batching `durations` in `order` ('sorted' or 'random')."""
    batches = make_batches(np.asarray(durations), batch_size, order=order, seed=seed, epoch=1, sortagrad=False)
    padded = sum(len(b) * max(durations[i] for i in b) for b in batches)
    return 1.0 - float(np.sum(durations)) / padded


class _BatchSource:
    """Random-access source for mindspore.dataset: item k is the padded batch k (features computed there)."""

    def __init__(self, data: SpeechData, batches: list[list[int]], pad_multiple: int, label_multiple: int) -> None:
        self.data, self.batches = data, batches
        self.pad_multiple, self.label_multiple = pad_multiple, label_multiple

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int):
        b = self.data.batch(self.batches[k], pad_multiple=self.pad_multiple, label_multiple=self.label_multiple)
        return b.x, b.x_len, b.y, b.y_len


def ms_pipeline(data: SpeechData, batches: list[list[int]], *, workers: int = 1, prefetch: int = 2,
                pad_multiple: int = 64, label_multiple: int = 32):
    """A mindspore.dataset pipeline yielding (x, x_len, y, y_len) per batch, computed by `workers` processes
    ahead of the training loop (`prefetch` batches per worker queue)."""
    import mindspore.dataset as msds

    msds.config.set_prefetch_size(prefetch)
    return msds.GeneratorDataset(_BatchSource(data, batches, pad_multiple, label_multiple),
                                 column_names=["x", "x_len", "y", "y_len"], shuffle=False,
                                 num_parallel_workers=workers, python_multiprocessing=workers > 1)
