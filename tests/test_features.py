import numpy as np
import pytest
import scipy.signal

from ds2_helpers.config import ParameterError, SpectConfig, to_dict
from ds2_helpers.features import AudioError, LowSampleRateWarning, load_audio, n_frames, spectrogram

N_FFT, HOP = 320, 160
LENGTHS = [16037, 12345, 16001]  # not multiples of the hop: there librosa >= 0.10 and 0.8 agree (see below)


def speechlike(n: int, seed: int = 0) -> np.ndarray:
    """Noise plus a rising chirp with a slow amplitude envelope: energy spread over bins and frames."""
    t = np.arange(n) / 16000
    rng = np.random.default_rng(seed)
    chirp = scipy.signal.chirp(t, 100, t[-1], 6000) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (0.5 * chirp + 0.05 * rng.standard_normal(n)).astype(np.float32)


def librosa_features(audio: np.ndarray, window) -> np.ndarray:
    """The model zoo's recipe, spelt out: centred reflect-padded librosa STFT, log1p |.|, per-utterance mean/std."""
    import librosa

    stft = librosa.stft(audio, n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, window=window, center=True,
                        pad_mode="reflect")
    spect = np.log1p(np.abs(stft))
    return (spect - spect.mean()) / spect.std()


def numpy_features(audio: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Plain NumPy: reflect-pad the whole signal by n_fft/2, frame, window, rFFT, log1p |.|, normalise."""
    padded = np.pad(audio, N_FFT // 2, mode="reflect")
    frames = 1 + (len(padded) - N_FFT) // HOP
    stack = np.stack([padded[i * HOP: i * HOP + N_FFT] * window for i in range(frames)], axis=1)
    spect = np.log1p(np.abs(np.fft.rfft(stack, axis=0)))
    return (spect - spect.mean()) / spect.std()


def test_paper_config_geometry():
    cfg = SpectConfig()
    assert (cfg.n_fft, cfg.hop_length, cfg.n_bins, cfg.window) == (N_FFT, HOP, 161, "hamming")
    assert cfg.periodic_window, "the default must stay the model zoo's (periodic) window"


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("name", ["hamming", "hann"])
def test_default_is_the_model_zoos_librosa_call(name, n):
    """The zoo passes its config's window *name* to librosa.stft: the periodic window."""
    audio = speechlike(n)
    ours = spectrogram(audio, SpectConfig(window=name))
    ref = librosa_features(audio, name)
    assert ours.shape == ref.shape == (161, n_frames(n))
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert abs(ours.mean()) < 1e-4 and abs(ours.std() - 1) < 1e-3


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("name", ["hamming", "hann"])
def test_symmetric_option_is_librosa_with_the_scipy_function(name, n):
    """periodic_window=False: what librosa makes of the function object, scipy.signal.windows.<name>(n_fft)."""
    audio = speechlike(n, seed=1)
    ours = spectrogram(audio, SpectConfig(window=name, periodic_window=False))
    np.testing.assert_allclose(ours, librosa_features(audio, getattr(scipy.signal.windows, name)), atol=1e-4)


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("name", ["hamming", "hann"])
def test_spectrogram_matches_numpy_reference(name, periodic):
    n = 16037  # not a multiple of the hop: the whole-signal np.pad and librosa's split padding agree
    audio = np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1
    a0 = 0.54 if name == "hamming" else 0.5
    win = a0 - (1 - a0) * np.cos(2 * np.pi * np.arange(N_FFT) / (N_FFT if periodic else N_FFT - 1))
    ours = spectrogram(audio, SpectConfig(window=name, periodic_window=periodic))
    np.testing.assert_allclose(ours, numpy_features(audio.astype(np.float64), win), atol=2e-4)


def test_tail_padding_at_multiples_of_the_hop_is_librosa_08s():
    """At lengths that are a multiple of the hop, librosa >= 0.10 reflects the tail from its last n_fft/2 samples
    only and so changes the last frame; we keep librosa 0.8's whole-signal reflection (the checkpoint's features)."""
    audio = speechlike(16000)
    win = scipy.signal.get_window("hamming", N_FFT, fftbins=True)
    ours = spectrogram(audio)
    np.testing.assert_allclose(ours, numpy_features(audio.astype(np.float64), win), atol=1e-4)
    diff = np.abs(ours - librosa_features(audio, "hamming")).max(axis=0)
    print(f"installed librosa vs librosa 0.8 padding, last frame: {diff[-1]:.4f}")
    assert diff[-1] > 1e-3  # the installed librosa differs in the last frame (and so in the normalisation)


@pytest.mark.parametrize("name", ["hamming", "hann"])
def test_periodic_and_symmetric_windows_differ(name):
    audio = speechlike(16037, seed=2)
    periodic = spectrogram(audio, SpectConfig(window=name))
    symmetric = spectrogram(audio, SpectConfig(window=name, periodic_window=False))
    diff = float(np.abs(periodic - symmetric).max())
    print(f"{name}: max |periodic - symmetric| = {diff:.4f}")
    assert 1e-3 < diff < 0.5, diff


def test_checkpoint_metadata_without_the_window_field_means_periodic():
    """Checkpoints written before `periodic_window` existed were all trained on the periodic window."""
    legacy = {k: v for k, v in to_dict(SpectConfig(window="hann")).items() if k != "periodic_window"}
    assert SpectConfig.from_meta({"spect": legacy}) == SpectConfig(window="hann", periodic_window=True)
    symmetric = to_dict(SpectConfig(periodic_window=False))
    assert SpectConfig.from_meta({"spect": symmetric}) == SpectConfig(periodic_window=False)
    assert SpectConfig.from_meta({"model": {}}) == SpectConfig()


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
    with pytest.warns(LowSampleRateWarning):
        audio = load_audio(tmp_path / "a.wav", 16000)
    assert audio.dtype == np.float32 and abs(len(audio) - 16000) <= 1
    (tmp_path / "bad.flac").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="bad.flac"):
        load_audio(tmp_path / "bad.flac")
    sf.write(tmp_path / "short.wav", np.zeros(100, np.float32), 16000)
    with pytest.raises(AudioError, match="too short"):
        load_audio(tmp_path / "short.wav")


def test_load_audio_says_a_missing_file_does_not_exist(tmp_path):
    with pytest.raises(AudioError, match=r"gone\.flac: no such audio file; check the path") as info:
        load_audio(tmp_path / "gone.flac")
    assert "unreadable" not in str(info.value)


@pytest.mark.parametrize("rate", [8000, 11025])
def test_audio_below_16k_warns_with_the_file_and_rate(tmp_path, rate):
    import soundfile as sf

    sf.write(tmp_path / "phone.wav", speechlike(rate), rate)
    with pytest.warns(LowSampleRateWarning) as caught:
        audio = load_audio(tmp_path / "phone.wav")
    assert abs(len(audio) - 16000) <= 1
    message = str(caught[0].message)
    assert "phone.wav" in message and f"{rate} Hz" in message and "trained on 16 kHz" in message
    assert issubclass(LowSampleRateWarning, UserWarning)


@pytest.mark.parametrize("rate", [16000, 22050, 44100])
def test_audio_at_or_above_16k_does_not_warn(tmp_path, rate):
    import warnings

    import soundfile as sf

    sf.write(tmp_path / "good.wav", speechlike(rate), rate)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowSampleRateWarning)
        assert abs(len(load_audio(tmp_path / "good.wav")) - 16000) <= 1
