"""Spectrograms kept on disk between epochs and runs: one .npy per utterance, written atomically.

The key is the audio file (absolute path, size, modification time) plus the spectrogram config, so a changed
file or another window never reads stale features, and several runs or msrun workers can share one folder
(two writers of the same file both rename a complete file into place).

Only plain (unaugmented) spectrograms are ever stored: training with speed, gain or noise augmentation computes
those utterances' features from the audio every time, and SpecAugment masks a copy of the cached array
(`SpeechData.augmented_features`)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from ds2_helpers.atomic import atomic_write
from ds2_helpers.config import SpectConfig, to_dict


class FeatureCache:
    """`get(audio_path, compute)` returns the cached spectrogram or computes, stores and returns it."""

    def __init__(self, folder: str | Path, spect: SpectConfig) -> None:
        self.folder = Path(folder)
        self.tag = hashlib.sha1(json.dumps(to_dict(spect), sort_keys=True).encode()).hexdigest()[:12]
        self.hits = self.misses = 0

    def path(self, audio_path: str | Path) -> Path:
        """Where the features of this audio file under this config live."""
        st = os.stat(audio_path)
        key = f"{os.path.abspath(audio_path)}|{st.st_size}|{st.st_mtime_ns}|{self.tag}"
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npy"

    def get(self, audio_path: str | Path, compute) -> np.ndarray:
        """Features from the cache, or from `compute()` (then stored)."""
        path = self.path(audio_path)
        try:
            feats = np.load(path, allow_pickle=False)
            self.hits += 1
            return feats
        except (FileNotFoundError, ValueError, EOFError, OSError):
            pass  # absent, or left unreadable by something else: compute it again
        feats = compute()
        buffer = io.BytesIO()
        np.save(buffer, feats, allow_pickle=False)
        atomic_write(path, lambda fh: fh.write(buffer.getvalue()), binary=True)
        self.misses += 1
        return feats
