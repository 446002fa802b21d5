import numpy as np
import pytest

from ds2_helpers.config import ParameterError, SpectConfig
from ds2_helpers.features import AudioError, load_audio, n_frames, spectrogram


def reference_spectrogram(audio: np.ndarray, n_fft: int, hop: int, window: np.ndarray) -> np.ndarray:
    """Plain NumPy: reflect-pad by n_fft/2, frame, window, rFFT, log1p |.|, normalise."""
    padded = np.pad(audio, n_fft // 2, mode="reflect")
    frames = 1 + (len(padded) - n_fft) // hop
    stack = np.stack([padded[i * hop: i * hop + n_fft] * window for i in range(frames)], axis=1)
    spect = np.log1p(np.abs(np.fft.rfft(stack, axis=0)))
    return (spect - spect.mean()) / spect.std()


def test_paper_config_geometry():
    cfg = SpectConfig()
    assert (cfg.n_fft, cfg.hop_length, cfg.n_bins, cfg.window) == (320, 160, 161, "hamming")


@pytest.mark.parametrize("window", ["hamming", "hann"])
def test_spectrogram_matches_numpy_reference(window):
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(16000).astype(np.float32) * 0.1
    cfg = SpectConfig(window=window)
    n = np.arange(cfg.n_fft)
    win = 0.54 - 0.46 * np.cos(2 * np.pi * n / cfg.n_fft) if window == "hamming" else \
        0.5 - 0.5 * np.cos(2 * np.pi * n / cfg.n_fft)
    ours = spectrogram(audio, cfg)
    ref = reference_spectrogram(audio.astype(np.float64), cfg.n_fft, cfg.hop_length, win)
    assert ours.shape == (161, n_frames(16000)) == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-4)
    assert abs(ours.mean()) < 1e-4 and abs(ours.std() - 1) < 1e-3


def test_legacy_hanning_means_hann_and_differs_from_hamming():
    audio = np.random.default_rng(1).standard_normal(8000).astype(np.float32)
    hanning = spectrogram(audio, SpectConfig(window="hanning"))
    np.testing.assert_array_equal(hanning, spectrogram(audio, SpectConfig(window="hann")))
    assert np.abs(hanning - spectrogram(audio, SpectConfig(window="hamming"))).max() > 1e-3


def test_unknown_window_is_a_parameter_error():
    with pytest.raises(ParameterError, match="unknown window"):
        SpectConfig(window="kaiserish")


def test_load_audio_resamples_and_reports_bad_files(tmp_path):
    import soundfile as sf

    t = np.arange(8000) / 8000
    sf.write(tmp_path / "a.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000)
    audio = load_audio(tmp_path / "a.wav", 16000)
    assert audio.dtype == np.float32 and abs(len(audio) - 16000) <= 1
    (tmp_path / "bad.flac").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="bad.flac"):
        load_audio(tmp_path / "bad.flac")
    sf.write(tmp_path / "short.wav", np.zeros(100, np.float32), 16000)
    with pytest.raises(AudioError, match="too short"):
        load_audio(tmp_path / "short.wav")
