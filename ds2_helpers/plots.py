"""Figures and widgets the notebooks show (matplotlib, ipywidgets); logic stays testable here."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ds2_helpers.config import SpectConfig
from ds2_helpers.features import load_audio, mel_spectrogram, spectrogram, stft_magnitude


def duration_histogram(manifests: dict[str, pd.DataFrame], bins: int = 30):
    """Histogram of utterance durations per split: what padding and batching have to deal with."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for name, frame in manifests.items():
        ax.hist(frame.duration, bins=bins, alpha=0.6, label=f"{name} ({len(frame)} utt.)")
    ax.set(xlabel="duration (s)", ylabel="utterances", title="Utterance durations")
    ax.legend()
    fig.tight_layout()
    return fig


def waveform_and_spectrograms(audio: np.ndarray, cfg: SpectConfig = SpectConfig(), title: str = ""):
    """Waveform, DeepSpeech2 input (normalised log1p |STFT|) and a log-mel spectrogram, stacked."""
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=False)
    t = np.arange(len(audio)) / cfg.sample_rate
    axes[0].plot(t, audio, lw=0.5)
    axes[0].set(xlim=(0, t[-1]), xlabel="time (s)", ylabel="amplitude", title=title or "waveform")
    seconds = len(audio) / cfg.sample_rate
    spect = spectrogram(audio, cfg)
    im = axes[1].imshow(spect, origin="lower", aspect="auto", extent=(0, seconds, 0, cfg.sample_rate / 2))
    axes[1].set(ylabel="Hz", title=f"linear: {spect.shape[0]} bins x {spect.shape[1]} frames (model input)")
    fig.colorbar(im, ax=axes[1], pad=0.01)
    mel = mel_spectrogram(audio, cfg)
    im = axes[2].imshow(mel, origin="lower", aspect="auto", extent=(0, seconds, 0, mel.shape[0]))
    axes[2].set(xlabel="time (s)", ylabel="mel band", title=f"log-mel: {mel.shape[0]} bands (dB)")
    fig.colorbar(im, ax=axes[2], pad=0.01)
    fig.tight_layout()
    return fig


def stride_comparison(audio: np.ndarray, strides_ms=(10, 20), cfg: SpectConfig = SpectConfig()):
    """Frames per second (and so LSTM steps) for several strides: coarser stride, fewer steps."""
    fig, axes = plt.subplots(1, len(strides_ms), figsize=(5 * len(strides_ms), 3))
    rows = []
    for ax, ms_ in zip(axes, strides_ms):
        c = SpectConfig(window_stride=ms_ / 1000, window=cfg.window)
        mag = np.log1p(stft_magnitude(audio, c))
        ax.imshow(mag, origin="lower", aspect="auto")
        ax.set(title=f"stride {ms_} ms: {mag.shape[1]} frames", xlabel="frame", ylabel="bin")
        rows.append({"stride (ms)": ms_, "frames": mag.shape[1], "frames per second": 1000 / ms_})
    fig.tight_layout()
    return fig, pd.DataFrame(rows)


def loss_curve(metrics: pd.DataFrame | str | Path, ax=None, smooth: int = 10):
    """Training loss per step with a moving average, from a metrics DataFrame or metrics.csv."""
    frame = pd.read_csv(metrics) if not isinstance(metrics, pd.DataFrame) else metrics
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(frame.step, frame.loss, alpha=0.35, label="loss per step")
    if len(frame) >= smooth:
        ax.plot(frame.step, frame.loss.rolling(smooth).mean(), label=f"mean of {smooth}")
    ax.set(xlabel="step", ylabel="CTC loss (per utterance)", yscale="log", title="Training loss")
    ax.legend()
    ax.figure.tight_layout()
    return ax


class LiveLossPlot:
    """A Trainer callback that redraws the loss curve in the notebook every `every` steps."""

    def __init__(self, every: int = 5) -> None:
        from IPython.display import display

        self.every = every
        self.rows: list[dict] = []
        self.fig, self.ax = plt.subplots(figsize=(8, 3.5))
        plt.close(self.fig)
        self.handle = display(self.fig, display_id=True)

    def __call__(self, trainer, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) % self.every == 0:
            self.redraw()

    def redraw(self) -> None:
        """Draw all steps so far into the same output."""
        self.ax.clear()
        loss_curve(pd.DataFrame(self.rows), ax=self.ax, smooth=min(10, max(2, len(self.rows) // 3)))
        if self.handle is not None:
            self.handle.update(self.fig)


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (for image widgets), closing it."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit WAV bytes of a signal (for audio widgets)."""
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def utterance_browser(manifest: pd.DataFrame, cfg: SpectConfig = SpectConfig()):
    """Pick an utterance, see its transcript and spectrogram, and listen to it (ipywidgets).

    Built from value widgets only (no Output capture), which headless runners execute reliably.
    """
    import ipywidgets as widgets

    options = [(f"{r.utterance_id} ({r.duration:.1f}s) {r.transcript[:40]}", i)
               for i, r in enumerate(manifest.itertuples(index=False))]
    picker = widgets.Dropdown(options=options, description="utterance", layout=widgets.Layout(width="90%"))
    text = widgets.HTML()
    player = widgets.Audio(format="wav", autoplay=False, loop=False)
    image = widgets.Image(format="png")

    def show(change=None) -> None:
        row = manifest.iloc[picker.value]
        audio = load_audio(row.audio_path, cfg.sample_rate)
        text.value = f"<b>{row.transcript}</b> ({row.duration:.2f} s, speaker {row.speaker})"
        player.value = wav_bytes(audio, cfg.sample_rate)
        fig, ax = plt.subplots(figsize=(9, 2.5))
        ax.imshow(spectrogram(audio, cfg), origin="lower", aspect="auto")
        ax.set(xlabel="frame (10 ms)", ylabel="bin")
        image.value = figure_png(fig)

    picker.observe(show, names="value")
    show()
    return widgets.VBox([picker, text, player, image])
