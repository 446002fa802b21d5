"""Configuration dataclasses with named presets (`paper` = the model zoo's DeepSpeech2, `mini` = 2-core size)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

OPTIMIZERS = ("adam", "lamb", "sgd")
"""`TrainConfig.optimizer`: Adam (the model zoo's), LAMB (Adam with a per-layer trust ratio), SGD with momentum."""
WINDOW_ALIASES = {"hanning": "hann", "hann": "hann", "hamming": "hamming", "blackman": "blackman", "bartlett": "bartlett"}


class ParameterError(ValueError):
    """A configuration value that cannot work, with the fix in the message."""


@dataclass(frozen=True)
class SpectConfig:
    """One spectrogram config for training *and* evaluation (the model zoo drifted hamming/hanning).

    `periodic_window`: True = the periodic window (`scipy.signal.get_window(name, n_fft, fftbins=True)`), what
    `librosa.stft` builds from a window *name*; the model zoo hands it the name from its config, so the
    pretrained checkpoint and every checkpoint trained here before this field existed use it. False = the
    symmetric `scipy.signal.windows.<name>(n_fft)`, what librosa builds from a window *function* (early
    deepspeech.pytorch passed `scipy.signal.hamming`)."""

    sample_rate: int = 16000
    window_size: float = 0.02
    window_stride: float = 0.01
    window: str = "hamming"
    normalize: bool = True
    periodic_window: bool = True

    def __post_init__(self) -> None:
        if self.window.lower() not in WINDOW_ALIASES:
            raise ParameterError(f"unknown window {self.window!r}; use one of {sorted(WINDOW_ALIASES)}")

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> SpectConfig:
        """The config a checkpoint's metadata records, `SpectConfig()` if it records none.

        A "spect" dict without `periodic_window` was written before the field existed, by training on the
        periodic window: it means periodic whatever the field's default is now."""
        if "spect" not in meta:
            return cls()
        return from_dict(cls, {"periodic_window": True, **meta["spect"]})

    @property
    def n_fft(self) -> int:
        """FFT size = window length in samples (320 at 16 kHz / 20 ms)."""
        return int(round(self.sample_rate * self.window_size))

    @property
    def hop_length(self) -> int:
        """Stride in samples (160 at 16 kHz / 10 ms)."""
        return int(round(self.sample_rate * self.window_stride))

    @property
    def n_bins(self) -> int:
        """Frequency bins of the linear spectrogram (161 for the paper config)."""
        return self.n_fft // 2 + 1

    @property
    def scipy_window(self) -> str:
        """Window name SciPy accepts today (`hanning` is gone; it means `hann`)."""
        return WINDOW_ALIASES[self.window.lower()]


@dataclass(frozen=True)
class ModelConfig:
    """DeepSpeech2 shape: two convolutions, a stack of bidirectional RNNs (directions summed), a dense layer."""

    conv_channels: int = 32
    rnn_type: str = "LSTM"
    hidden_size: int = 1024
    hidden_layers: int = 5
    num_classes: int = 29
    n_bins: int = 161
    # How the convolutions are computed (same weights either way): "native" = MindSpore's nn.Conv2d, the one
    # every command uses; "matmul" = our blocked matrix products, which on some hosts start faster but grow
    # slower in long runs (notebook 07). Stored in checkpoints; one written before this field reads "native".
    conv: str = "native"

    def __post_init__(self) -> None:
        if self.rnn_type.upper() not in ("LSTM", "GRU"):
            raise ParameterError(f"rnn_type {self.rnn_type!r}: use 'LSTM' or 'GRU'")
        if self.conv not in ("native", "matmul"):
            raise ParameterError(f"conv {self.conv!r}: use 'native' (nn.Conv2d) or 'matmul'")

    @property
    def rnn_gates(self) -> int:
        """Gate blocks per RNN layer: 4 for an LSTM (i, f, g, o), 3 for a GRU; W_ih and W_hh stack that many."""
        return 4 if self.rnn_type.upper() == "LSTM" else 3


AUGMENT_KINDS = ("speed", "gain", "noise", "specaugment")
"""What `train --augment` can switch on (each with the parameters of `AugmentConfig.of`)."""


@dataclass(frozen=True)
class AugmentConfig:
    """Data augmentation in training (never in evaluation); everything off by default.

    Waveform (before the spectrogram): `speeds` = speed perturbation, one factor drawn per utterance and
    applied by resampling (tempo and pitch change together, as in Kaldi's and DeepSpeech2's 0.9/1.0/1.1);
    `gain_db` = volume change drawn from [low, high] dB; `noise_snr_db` = white noise at an SNR drawn from
    [low, high] dB, added to a share `noise_prob` of the utterances. Features (after): SpecAugment masks,
    `freq_masks` bands of up to `freq_width` bins and `time_masks` of up to `time_width` frames (and at most
    `time_max_fraction` of the utterance), filled with the spectrogram's mean (0 when normalised).

    The per-utterance normalisation of `SpectConfig.normalize` removes most of a gain: it acts only through
    the 1 of log(1 + |STFT|), i.e. on the quietest bins."""

    speeds: tuple[float, ...] | None = None
    gain_db: tuple[float, float] | None = None
    noise_snr_db: tuple[float, float] | None = None
    noise_prob: float = 0.5
    freq_masks: int = 0
    freq_width: int = 27
    time_masks: int = 0
    time_width: int = 100
    time_max_fraction: float = 0.2

    def __post_init__(self) -> None:
        for name in ("speeds", "gain_db", "noise_snr_db"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.speeds is not None:
            if not self.speeds or not all(0.5 <= float(s) <= 2.0 for s in self.speeds):
                raise ParameterError(f"augment speeds {self.speeds}: give one or more factors between 0.5 and 2 "
                                     "(e.g. 0.9,1.0,1.1), or none to switch speed perturbation off")
        for name in ("gain_db", "noise_snr_db"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or not value[0] <= value[1]
                                      or not all(abs(float(v)) < float("inf") for v in value)):
                raise ParameterError(f"augment {name} {value}: give a range (low, high) with low <= high, "
                                     "both finite, or none to switch it off")
        if not 0 <= self.noise_prob <= 1:
            raise ParameterError(f"augment noise_prob {self.noise_prob}: use a share between 0 and 1")
        if min(self.freq_masks, self.freq_width, self.time_masks, self.time_width) < 0:
            raise ParameterError(f"augment masks: freq_masks {self.freq_masks}, freq_width {self.freq_width}, "
                                 f"time_masks {self.time_masks}, time_width {self.time_width}: use 0 or more")
        if not 0 <= self.time_max_fraction <= 1:
            raise ParameterError(f"augment time_max_fraction {self.time_max_fraction}: use a share between 0 and 1")

    @property
    def waveform(self) -> bool:
        """True when an augmentation changes the audio (the spectrogram is then computed afresh every time)."""
        return (self.speeds is not None and tuple(self.speeds) != (1.0,)) or self.gain_db is not None or \
            (self.noise_snr_db is not None and self.noise_prob > 0)

    @property
    def spectral(self) -> bool:
        """True when SpecAugment masks something."""
        return (self.freq_masks > 0 and self.freq_width > 0) or (self.time_masks > 0 and self.time_width > 0)

    @property
    def enabled(self) -> bool:
        """Does this config change anything?"""
        return self.waveform or self.spectral

    @property
    def max_stretch(self) -> float:
        """How much longer an utterance can get (1 / the slowest speed, at least 1: an utterance CTC could not
        fit when sped up keeps speed 1): batch budgets plan for it."""
        return max(1.0, 1.0 / min(self.speeds)) if self.speeds else 1.0

    @classmethod
    def of(cls, kinds: str | list[str] | tuple[str, ...] | None) -> AugmentConfig:
        """The config for a list of kinds ("speed,gain,noise,specaugment"; "" or None: off) with the defaults:
        speeds 0.9/1.0/1.1; gain -6..+6 dB; white noise at 10..30 dB SNR on half the utterances; SpecAugment
        LibriSpeech-double's 2 frequency masks of up to 27 bins and 2 time masks of up to 100 frames (and 20 %)."""
        if isinstance(kinds, str):
            kinds = [k.strip() for k in kinds.split(",") if k.strip()]
        kinds = list(kinds or [])
        unknown = [k for k in kinds if k not in AUGMENT_KINDS]
        if unknown:
            raise ParameterError(f"augment {', '.join(map(repr, unknown))}: unknown; use a comma-separated list "
                                 f"of {', '.join(AUGMENT_KINDS)} (e.g. speed,specaugment)")
        return cls(speeds=(0.9, 1.0, 1.1) if "speed" in kinds else None,
                   gain_db=(-6.0, 6.0) if "gain" in kinds else None,
                   noise_snr_db=(10.0, 30.0) if "noise" in kinds else None,
                   freq_masks=2 if "specaugment" in kinds else 0,
                   time_masks=2 if "specaugment" in kinds else 0)

    @property
    def kinds(self) -> list[str]:
        """The kinds switched on, in AUGMENT_KINDS order (for names and logs)."""
        on = {"speed": self.speeds is not None and tuple(self.speeds) != (1.0,), "gain": self.gain_db is not None,
              "noise": self.noise_snr_db is not None and self.noise_prob > 0, "specaugment": self.spectral}
        return [k for k in AUGMENT_KINDS if on[k]]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation knobs; defaults follow the model zoo's OptimConfig where it is sound."""

    learning_rate: float = 3e-4
    learning_anneal: float = 1.1
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 400.0
    batch_size: int = 20
    batch_seconds: float | None = None  # padded audio seconds per batch (batch_size is then an upper bound)
    micro_batch: int | None = None  # run each batch in micro-batches of this many utterances, one update from their
                                    # summed gradients (less memory, more time: ds2_helpers.micro_batch)
    layerwise: bool = False  # backward one layer at a time, each recomputed from its kept input (the same gradients
                             # in less memory, a second forward pass: ds2_helpers.layerwise)
    epochs: int = 1
    mode: str = "graph"
    dynamic_shapes: bool = True  # Graph mode: one graph for every batch shape instead of one compile per shape
    release_memory: str = "auto"  # MindSpore keeps memory per batch shape: give it back "auto" (when memory has
    memory_slack: float = 0.25    # grown by this share since the last release), "always" (every step) or "never"
    sortagrad: bool = True
    seed: int = 1234
    save_every: int = 200
    keep_last: int = 3
    freeze_conv: bool = False
    freeze_rnn_layers: int = 0
    log_every: int = 1
    # The update rule and the rate at each step (ds2_helpers.optimizers, ds2_helpers.schedules). The defaults are
    # what training did before these fields existed: Adam, lr / anneal^epoch set once per epoch.
    optimizer: str = "adam"              # "adam", "lamb" or "sgd" (with momentum)
    momentum: float = 0.9                # sgd only
    nesterov: bool = False               # sgd only: Nesterov momentum
    schedule: str = "anneal"             # "anneal" (per epoch), "constant", "cosine" (warm-up + cosine), "onecycle"
    warmup_steps: int | None = None      # cosine/onecycle: warm-up steps; None: warmup_fraction of the schedule
    warmup_fraction: float | None = None  # None: schedules.DEFAULT_WARMUP_FRACTION (0.05 cosine, 0.3 onecycle)
    schedule_steps: int | None = None    # cosine/onecycle length in steps; None: epochs x batches per epoch
    augment: AugmentConfig = AugmentConfig()  # off; applied in training only (ds2_helpers/augment.py)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):  # read back from a checkpoint's or config.json's metadata
            object.__setattr__(self, "augment", from_dict(AugmentConfig, self.augment))
        self._check_optimizer()
        if self.mode.lower() not in ("graph", "pynative"):
            raise ParameterError(f"mode {self.mode!r}: use 'graph' or 'pynative'")
        if self.batch_size < 1:
            raise ParameterError(f"batch size {self.batch_size}: use 1 or more utterances per batch")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ParameterError(f"micro batch {self.micro_batch}: use 1 or more utterances per micro-batch, or None "
                                 "to run each batch at once")
        if self.micro_batch is not None and self.micro_batch > self.batch_size:
            raise ParameterError(f"micro batch {self.micro_batch} > batch size {self.batch_size}: every batch would "
                                 f"run at once; use 1 to {self.batch_size - 1}, or leave --micro-batch out")
        if self.layerwise and self.micro_batch is not None:
            raise ParameterError("layerwise and micro_batch together: choose one way to save memory (layerwise keeps "
                                 "the batch's gradients exact, micro-batches change BatchNorm's statistics)")
        if self.layerwise and self.mode.lower() != "graph":
            raise ParameterError("layerwise steps run in mode 'graph' (each layer is a compiled graph)")
        if self.epochs < 1:
            raise ParameterError(f"epochs {self.epochs}: use 1 or more (0 would write an untrained checkpoint)")
        if not self.learning_rate > 0:
            raise ParameterError(f"learning rate {self.learning_rate}: use a positive rate (a negative one climbs "
                                 "the loss instead of descending it)")
        if not self.learning_anneal > 0 or not self.max_grad_norm > 0:
            raise ParameterError(f"learning_anneal {self.learning_anneal} and max_grad_norm {self.max_grad_norm}: "
                                 "both must be positive")
        if self.save_every < 0 or self.keep_last < 1:
            raise ParameterError(f"save_every {self.save_every} / keep_last {self.keep_last}: save every 0 (only at "
                                 "the end of each epoch) or more steps, and keep at least 1 checkpoint")
        if self.freeze_rnn_layers < 0:
            raise ParameterError(f"freeze_rnn_layers {self.freeze_rnn_layers}: use 0 or more")
        if self.release_memory not in ("auto", "always", "never"):
            raise ParameterError(f"release_memory {self.release_memory!r}: use 'auto', 'always' or 'never'")
        if self.batch_seconds is not None and self.batch_seconds <= 0:
            raise ParameterError(f"batch seconds {self.batch_seconds}: use a positive number of padded audio seconds")

    def _check_optimizer(self) -> None:
        """The optimizer and schedule fields, each refusal naming the fix."""
        from ds2_helpers.schedules import SCHEDULES, STEP_BASED

        if self.optimizer not in OPTIMIZERS:
            raise ParameterError(f"optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ParameterError(f"schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if not 0 <= self.momentum < 1:
            raise ParameterError(f"momentum {self.momentum}: use a number in [0, 1) (0.9 is usual)")
        if self.nesterov and not self.momentum > 0:
            raise ParameterError("nesterov needs a momentum above 0")
        step_based = {"warmup_steps": self.warmup_steps, "warmup_fraction": self.warmup_fraction,
                      "schedule_steps": self.schedule_steps}
        given = [k for k, v in step_based.items() if v is not None]
        if given and self.schedule not in STEP_BASED:
            raise ParameterError(f"{', '.join(given)}: only the step-based schedules ({', '.join(STEP_BASED)}) use "
                                 f"them, schedule {self.schedule!r} would ignore them; choose one of those or drop "
                                 "them")
        if self.warmup_steps is not None and self.warmup_fraction is not None:
            raise ParameterError("give warmup_steps or warmup_fraction, not both")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ParameterError(f"warmup steps {self.warmup_steps}: use 0 (no warm-up) or more")
        if self.warmup_fraction is not None and not 0 <= self.warmup_fraction < 1:
            raise ParameterError(f"warmup fraction {self.warmup_fraction}: use a share of the schedule in [0, 1)")
        if self.schedule_steps is not None and self.schedule_steps < 1:
            raise ParameterError(f"schedule steps {self.schedule_steps}: use 1 or more")
        if None not in (self.warmup_steps, self.schedule_steps) and self.warmup_steps >= self.schedule_steps:
            raise ParameterError(f"warmup steps {self.warmup_steps} >= schedule steps {self.schedule_steps}: the "
                                 "warm-up must end before the schedule does")


MODEL_PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(),
    "mini": ModelConfig(conv_channels=8, hidden_size=192, hidden_layers=2),
}

TRAIN_PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    "mini": TrainConfig(learning_rate=1e-3, learning_anneal=1.05, batch_size=16, save_every=100),
}


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """A named model preset with fields overridden (e.g. from a notebook's parameters cell)."""
    try:
        return replace(MODEL_PRESETS[name], **overrides)
    except KeyError:
        raise ParameterError(f"unknown preset {name!r}; choose from {sorted(MODEL_PRESETS)}") from None


def train_preset(name: str, **overrides: Any) -> TrainConfig:
    """A named training preset with fields overridden."""
    try:
        return replace(TRAIN_PRESETS[name], **overrides)
    except KeyError:
        raise ParameterError(f"unknown preset {name!r}; choose from {sorted(TRAIN_PRESETS)}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config dataclass (for JSON next to checkpoints)."""
    return asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]):
    """Rebuild a config dataclass, ignoring unknown keys from newer versions."""
    names = {f.name for f in fields(cls)}
    clean = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
    return cls(**clean)
