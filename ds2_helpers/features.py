"""Audio loading and the DeepSpeech2 spectrogram: log(1 + |STFT|), per-utterance normalised."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf

from ds2_helpers.config import SpectConfig


class AudioError(ValueError):
    """Audio that cannot be used, with the file named."""


class LowSampleRateWarning(UserWarning):
    """Audio recorded below the model's rate: upsampling adds no high frequencies, so expect more errors."""


def load_audio(path: str | Path, sample_rate: int = 16000, *, min_seconds: float = 0.05) -> np.ndarray:
    """Read any soundfile-readable audio as mono float32 at `sample_rate`, resampling if needed.

    Audio below `sample_rate` (8 kHz telephone audio) is upsampled with a LowSampleRateWarning naming the file."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a folder; give the audio files themselves (e.g. {path}/*.flac)")
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file; check the path (for a manifest's file: rebuild the manifest "
                         "with `python -m ds2_helpers manifest` or re-extract the archive)")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises its own LibsndfileError / RuntimeError
        raise AudioError(f"{path}: unreadable audio ({exc}); check the file or re-extract it") from exc
    audio = audio.mean(axis=1)
    if audio.size == 0:
        raise AudioError(f"{path}: the file holds no samples; record or export it again")
    if sr < sample_rate:
        warnings.warn(f"{path}: recorded at {sr} Hz, upsampled to {sample_rate} Hz; the model was trained on "
                      f"{sample_rate / 1000:g} kHz audio, so expect a worse transcript", LowSampleRateWarning,
                      stacklevel=2)
    if sr != sample_rate:
        import librosa

        audio = librosa.resample(audio, orig_sr=sr, target_sr=sample_rate).astype(np.float32)
    if audio.size < min_seconds * sample_rate:
        raise AudioError(f"{path}: {audio.size / sample_rate:.3f} s is too short "
                         f"(need at least {min_seconds} s of speech)")
    return audio


def window(cfg: SpectConfig) -> np.ndarray:
    """The analysis window of `n_fft` samples; `hanning` is accepted and means `hann`.

    Periodic (the default, `cfg.periodic_window`): `scipy.signal.get_window(name, n_fft, fftbins=True)`, which is
    what `librosa.stft(window="hamming")` uses - the model zoo's call. Symmetric: `scipy.signal.windows.<name>(n_fft)`
    (sym=True), what librosa uses when handed the function `scipy.signal.windows.hamming` itself."""
    if cfg.periodic_window:
        return scipy.signal.get_window(cfg.scipy_window, cfg.n_fft, fftbins=True).astype(np.float32)
    return getattr(scipy.signal.windows, cfg.scipy_window)(cfg.n_fft, sym=True).astype(np.float32)


def stft_magnitude(audio: np.ndarray, cfg: SpectConfig = SpectConfig()) -> np.ndarray:
    """|STFT| [shape=(n_bins, n_frames)] with centred frames: the whole signal reflect-padded by n_fft/2.

    This is `librosa.stft(center=True, pad_mode="reflect")` as librosa 0.8 computed it when the model zoo
    trained the pretrained checkpoint. librosa >= 0.10 pads head and tail separately, the tail from the last
    n_fft/2 samples only; when the length is a multiple of the hop that piece is one sample too short for
    `np.pad(..., "reflect")`, so the last sample of the last frame becomes y[n-hop+1] instead of y[n-hop-1]
    (only that frame, only those lengths). We keep librosa 0.8's result (tests/test_features.py shows both)."""
    import librosa

    padded = np.pad(np.asarray(audio, dtype=np.float32), cfg.n_fft // 2, mode="reflect")
    spec = librosa.stft(y=padded, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.n_fft,
                        window=window(cfg), center=False)
    return np.abs(spec).astype(np.float32)


def spectrogram(audio: np.ndarray, cfg: SpectConfig = SpectConfig()) -> np.ndarray:
    """DeepSpeech2 input features [shape=(161, n_frames)]: log1p magnitude, mean/variance normalised."""
    spect = np.log1p(stft_magnitude(audio, cfg))
    if cfg.normalize:
        spect = (spect - spect.mean()) / max(float(spect.std()), 1e-5)
    return spect.astype(np.float32)


def n_frames(n_samples: int, cfg: SpectConfig = SpectConfig()) -> int:
    """Spectrogram frames for a signal of `n_samples` (centred STFT)."""
    return 1 + n_samples // cfg.hop_length


def mel_spectrogram(audio: np.ndarray, cfg: SpectConfig = SpectConfig(), n_mels: int = 64) -> np.ndarray:
    """Log-mel power spectrogram in dB [shape=(n_mels, n_frames)], for comparison plots."""
    import librosa

    power = stft_magnitude(audio, cfg) ** 2
    mel = librosa.feature.melspectrogram(S=power, sr=cfg.sample_rate, n_mels=n_mels)
    return librosa.power_to_db(mel, ref=np.max).astype(np.float32)
