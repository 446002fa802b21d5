"""DeepSpeech2 in MindSpore: 2 masked convolutions, bidirectional RNNs with summed directions, a dense layer.

Cell and parameter names follow the model zoo (`conv.conv1`, `RNN.lstms.N`, `fc.module`) so its
checkpoints load after conversion (see ds2_helpers.checkpoint).
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from ds2_helpers.config import ModelConfig

CONV1 = dict(kernel=(41, 11), stride=(2, 2), padding=(20, 20, 5, 5))
CONV2 = dict(kernel=(21, 11), stride=(2, 1), padding=(10, 10, 5, 5))


def conv_out(n: int, kernel: int, stride: int, pad: int) -> int:
    """Output size of a convolution along one axis: floor((n + 2p - k) / s) + 1."""
    return (n + 2 * pad - kernel) // stride + 1


def output_lengths(frames, cfg: ModelConfig | None = None):
    """Output frames for input spectrogram frames (works on ints and NumPy arrays)."""
    for conv in (CONV1, CONV2):
        frames = (frames + 2 * conv["padding"][2] - conv["kernel"][1]) // conv["stride"][1] + 1
    return frames


def rnn_input_size(cfg: ModelConfig) -> int:
    """Features per frame after the convolutions: channels x remaining frequency bins (32 x 41 = 1312)."""
    f = cfg.n_bins
    for conv in (CONV1, CONV2):
        f = conv_out(f, conv["kernel"][0], conv["stride"][0], conv["padding"][0])
    return cfg.conv_channels * f


def toeplitz_index(c_in: int, c_out: int, f_in: int, kernel: tuple[int, int], stride_f: int,
                   pad_f: int) -> tuple[np.ndarray, int]:
    """Indices that turn a conv kernel [c_out, c_in, kf, kt] into kt banded matrices [c_in*f_in, c_out*f_out].

    Entry -1 (mapped to an appended zero) marks the band's outside. With it, a convolution becomes kt
    large matrix products, which MindSpore's CPU backend runs ~100x faster than its Conv2D kernel.
    """
    kf, kt = kernel
    f_out = conv_out(f_in, kf, stride_f, pad_f)
    co, ci, fo, fi = np.meshgrid(np.arange(c_out), np.arange(c_in), np.arange(f_out), np.arange(f_in), indexing="ij")
    k = fi - (fo * stride_f - pad_f)
    valid = (k >= 0) & (k < kf)
    idx = np.full((kt, c_in * f_in, c_out * f_out), -1, dtype=np.int32)
    size = c_out * c_in * kf * kt
    for j in range(kt):
        flat = ((co * c_in + ci) * kf + np.clip(k, 0, kf - 1)) * kt + j
        flat = np.where(valid, flat, size)  # size = index of the appended zero
        # rows: input feature (ci, fi); columns: output feature (co, fo)
        idx[j] = flat.transpose(1, 3, 0, 2).reshape(c_in * f_in, c_out * f_out)
    return idx, f_out


class MatmulConv(nn.Cell):
    """A Conv2d over (freq, time) with the parameter layout of nn.Conv2d, computed as banded matmuls.

    Input and output are time-major [N, T, C*F] (features ordered channel-major, as DeepSpeech2's
    RNN input). `weight` is [c_out, c_in, kf, kt], so checkpoints are interchangeable with nn.Conv2d.
    """

    def __init__(self, c_in: int, c_out: int, f_in: int, kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.weight = ms.Parameter(ms.common.initializer.initializer("he_normal", (c_out, c_in) + tuple(kernel)),
                                   name="weight")
        idx, self.f_out = toeplitz_index(c_in, c_out, f_in, kernel, stride[0], padding[0])
        self.index = ms.Tensor(idx)
        self.kt, self.stride_t, self.pad_t = kernel[1], stride[1], padding[2]
        self.c_out = c_out

    def construct(self, x):
        n, t, _ = x.shape
        flat = ops.concat((self.weight.reshape(-1), ops.zeros(1, self.weight.dtype)))
        mats = ops.gather(flat, self.index, 0).astype(x.dtype)  # [kt, c_in*f_in, c_out*f_out]
        x = ops.pad(x, (0, 0, self.pad_t, self.pad_t))
        t_out = (t + 2 * self.pad_t - self.kt) // self.stride_t + 1
        span = self.stride_t * (t_out - 1) + 1
        y = ops.matmul(x[:, 0:span:self.stride_t, :], mats[0])
        for j in range(1, self.kt):
            y = y + ops.matmul(x[:, j:j + span:self.stride_t, :], mats[j])
        return y


class MaskConv(nn.Cell):
    """Conv-BN-tanh twice; frames past each utterance's length are zeroed so padding never leaks in.

    `impl="matmul"` (default) computes each convolution as banded matrix products; `impl="native"`
    uses nn.Conv2d. Both hold the same `weight` [c_out, c_in, kf, kt], so checkpoints move freely.
    """

    def __init__(self, channels: int, n_bins: int = 161, impl: str = "matmul") -> None:
        super().__init__()
        self.impl = impl
        self.channels = channels
        if impl == "native":
            self.conv1 = nn.Conv2d(1, channels, kernel_size=CONV1["kernel"], stride=CONV1["stride"], pad_mode="pad",
                                   padding=CONV1["padding"], has_bias=False, weight_init="he_normal")
            self.conv2 = nn.Conv2d(channels, channels, kernel_size=CONV2["kernel"], stride=CONV2["stride"],
                                   pad_mode="pad", padding=CONV2["padding"], has_bias=False, weight_init="he_normal")
        elif impl == "matmul":
            self.conv1 = MatmulConv(1, channels, n_bins, CONV1["kernel"], CONV1["stride"], CONV1["padding"])
            self.conv2 = MatmulConv(channels, channels, self.conv1.f_out, CONV2["kernel"], CONV2["stride"],
                                    CONV2["padding"])
        else:
            raise ValueError(f"conv impl {impl!r}: use 'matmul' or 'native'")
        self.f1 = conv_out(n_bins, CONV1["kernel"][0], CONV1["stride"][0], CONV1["padding"][0])
        self.f2 = conv_out(self.f1, CONV2["kernel"][0], CONV2["stride"][0], CONV2["padding"][0])
        self.bn1 = nn.BatchNorm2d(channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.tanh = nn.Tanh()

    def construct(self, x, lengths):
        """x [N, 1, bins, T] -> [T', N, C*bins''] (time-major RNN input), frames >= length set to 0."""
        if self.impl == "native":
            x = self.tanh(self.bn1(self.conv1(x)))
            x = x * _time_mask(lengths, x.shape[3], x.dtype)
            x = self.tanh(self.bn2(self.conv2(x)))
            x = x * _time_mask(lengths, x.shape[3], x.dtype)
            n, c, f, t = x.shape
            return x.reshape(n, c * f, t).transpose(2, 0, 1)
        n = x.shape[0]
        x = x.reshape(n, x.shape[2], x.shape[3]).transpose(0, 2, 1)  # [N, T, F]
        x = self._bn_tanh(self.conv1(x), self.bn1, self.f1, lengths)
        x = self._bn_tanh(self.conv2(x), self.bn2, self.f2, lengths)
        return x.transpose(1, 0, 2)

    def _bn_tanh(self, y, bn, f, lengths):
        """BatchNorm2d + tanh + length mask on time-major [N, T, C*F] activations."""
        n, t, _ = y.shape
        y = y.reshape(n, t, self.channels, f).transpose(0, 2, 3, 1)  # NCHW for BatchNorm2d
        y = self.tanh(bn(y)) * _time_mask(lengths, t, y.dtype)
        return y.transpose(0, 3, 1, 2).reshape(n, t, self.channels * f)


def _time_mask(lengths, frames: int, dtype):
    """[N, 1, 1, T] mask, 1 where frame < length."""
    steps = ops.arange(frames, dtype=ms.int32).reshape(1, -1)
    return (steps < lengths.reshape(-1, 1)).astype(dtype).reshape(lengths.shape[0], 1, 1, frames)


class BatchRNN(nn.Cell):
    """A stack of single-layer bidirectional RNNs whose two directions are summed (the model zoo's BatchRNN)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, rnn_type: str = "LSTM") -> None:
        super().__init__()
        cls = nn.LSTM if rnn_type.upper() == "LSTM" else nn.GRU
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.lstms = nn.CellList([cls(size, hidden_size, bidirectional=True, has_bias=True) for size in sizes])
        self.hidden_size = hidden_size
        self.is_lstm = rnn_type.upper() == "LSTM"
        self.reverse = ops.ReverseSequence(seq_dim=0, batch_dim=1)

    def construct(self, x, lengths):
        """x [T, N, F] -> [T, N, H]. The reverse direction reads each utterance from its true end."""
        for rnn in self.lstms:
            x = self._bidirectional(rnn, x, lengths)
        return x

    def _bidirectional(self, rnn, x, lengths):
        """Both directions through MindSpore's fused CPU kernel; nn.LSTM's own `seq_length` path is a
        step-by-step loop ~70x slower. Outputs past an utterance's length are don't-care values."""
        n = x.shape[1]
        h0 = ops.zeros((n, self.hidden_size), x.dtype)
        state = (h0, h0) if self.is_lstm else h0
        fwd, _ = rnn.rnn(x, state, None, rnn.w_ih_list[0], rnn.w_hh_list[0], rnn.b_ih_list[0], rnn.b_hh_list[0])
        x_rev = self.reverse(x, lengths)
        bwd, _ = rnn.rnn(x_rev, state, None, rnn.w_ih_list[1], rnn.w_hh_list[1], rnn.b_ih_list[1], rnn.b_hh_list[1])
        return fwd + self.reverse(bwd, lengths)


class SequenceWise(nn.Cell):
    """Apply a Dense layer to every frame of a [T, N, F] sequence."""

    def __init__(self, module: nn.Cell) -> None:
        super().__init__()
        self.module = module

    def construct(self, x):
        t, n = x.shape[0], x.shape[1]
        return self.module(x.reshape(t * n, -1)).reshape(t, n, -1)


class DeepSpeech2(nn.Cell):
    """Spectrogram [N, 1, 161, T] + frame lengths [N] -> logits [T', N, 29] and output lengths [N]."""

    def __init__(self, cfg: ModelConfig = ModelConfig(), conv_impl: str = "matmul") -> None:
        super().__init__()
        self.cfg = cfg
        self.conv = MaskConv(cfg.conv_channels, cfg.n_bins, conv_impl)
        self.RNN = BatchRNN(rnn_input_size(cfg), cfg.hidden_size, cfg.hidden_layers, cfg.rnn_type)
        bound = 1.0 / math.sqrt(cfg.hidden_size)
        dense = nn.Dense(cfg.hidden_size, cfg.num_classes, has_bias=False,
                         weight_init=ms.common.initializer.Uniform(bound))
        self.fc = SequenceWise(dense)

    def construct(self, x, lengths):
        out_lengths = self.output_lengths(lengths)
        x = x * _time_mask(lengths, x.shape[3], x.dtype)  # whatever sits in the padding, it reads as zeros
        x = self.conv(x, out_lengths)
        x = self.RNN(x, out_lengths)
        return self.fc(x), out_lengths

    def output_lengths(self, lengths):
        """Exact output frames after both convolutions (time padding 5, kernel 11, strides 2 then 1)."""
        for conv in (CONV1, CONV2):
            lengths = (lengths + 2 * conv["padding"][2] - conv["kernel"][1]) // conv["stride"][1] + 1
        return lengths


def count_parameters(net: nn.Cell, trainable_only: bool = True) -> int:
    """Number of (trainable) weights."""
    params = net.trainable_params() if trainable_only else net.get_parameters()
    return int(sum(np.prod(p.shape) for p in params))


def freeze(net: DeepSpeech2, *, conv: bool = False, rnn_layers: int = 0) -> list[str]:
    """Stop gradients to the convolutions and/or the first `rnn_layers` RNN layers; returns frozen names."""
    frozen = []
    for p in net.get_parameters():
        layer = p.name.split(".")
        in_conv = conv and p.name.startswith("conv.")
        in_rnn = p.name.startswith("RNN.lstms.") and int(layer[2]) < rnn_layers
        if in_conv or in_rnn:
            p.requires_grad = False
            frozen.append(p.name)
    return frozen


def architecture_table(cfg: ModelConfig, frames_per_second: int = 100):
    """One row per layer: output shape for one second of audio, parameters, forward GFLOPs per audio second.

    FLOPs count multiply-adds twice (dense convolution arithmetic, LSTM gate matmuls both directions);
    element-wise work is left out. Training costs about 3x the forward pass (forward + 2 for backward).
    """
    import pandas as pd

    t1 = output_lengths(frames_per_second)
    f1 = conv_out(cfg.n_bins, CONV1["kernel"][0], CONV1["stride"][0], CONV1["padding"][0])
    f2 = conv_out(f1, CONV2["kernel"][0], CONV2["stride"][0], CONV2["padding"][0])
    c = cfg.conv_channels
    k1, k2 = np.prod(CONV1["kernel"]), np.prod(CONV2["kernel"])
    rows = [
        ("input spectrogram", f"1 x {cfg.n_bins} x {frames_per_second}", 0, 0.0),
        ("conv1 41x11 /(2,2) + BN + tanh", f"{c} x {f1} x {t1}", c * k1 + 2 * c, 2.0 * c * k1 * f1 * t1),
        ("conv2 21x11 /(2,1) + BN + tanh", f"{c} x {f2} x {t1}", c * c * k2 + 2 * c, 2.0 * c * c * k2 * f2 * t1),
    ]
    gates = 4 if cfg.rnn_type.upper() == "LSTM" else 3
    size = rnn_input_size(cfg)
    for layer in range(cfg.hidden_layers):
        h = cfg.hidden_size
        params = 2 * (gates * h * (size + h) + 2 * gates * h)
        rows.append((f"Bi{cfg.rnn_type.upper()} {layer + 1} ({size} -> {h}, directions summed)", f"{t1} x {h}",
                     params, 2.0 * 2 * gates * h * (size + h) * t1))
        size = h
    rows.append((f"dense {cfg.hidden_size} -> {cfg.num_classes} (no bias)", f"{t1} x {cfg.num_classes}",
                 cfg.hidden_size * cfg.num_classes, 2.0 * cfg.hidden_size * cfg.num_classes * t1))
    table = pd.DataFrame(rows, columns=["layer", "output per second of audio", "parameters", "forward GFLOP/s-audio"])
    table["forward GFLOP/s-audio"] /= 1e9
    table["share of FLOPs"] = table["forward GFLOP/s-audio"] / table["forward GFLOP/s-audio"].sum()
    return table


def training_flops_per_audio_second(cfg: ModelConfig) -> float:
    """Approximate training FLOPs (forward + backward = 3x forward) for one second of audio."""
    return 3e9 * float(architecture_table(cfg)["forward GFLOP/s-audio"].sum())
