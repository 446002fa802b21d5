"""DeepSpeech2 in MindSpore: 2 masked convolutions, bidirectional RNNs with summed directions, a dense layer.

Cell and parameter names follow the model zoo (`conv.conv1`, `RNN.lstms.N`, `fc.module`) so its
checkpoints load after conversion (see ds2_helpers.checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import replace

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from ds2_helpers.config import ModelConfig

CONV1 = dict(kernel=(41, 11), stride=(2, 2), padding=(20, 20, 5, 5))
CONV2 = dict(kernel=(21, 11), stride=(2, 1), padding=(10, 10, 5, 5))
#: oneDNN (MindSpore 2.10, AVX2) computes conv1 (1 input channel) with `ref:any` instead of its gemm kernel when the
#: output channels are fewer than this and the batch is below 4 on long inputs: 30.7 s instead of 0.16 s for one
#: 12.7-second utterance with 8 channels (the mini model; 16 and 32 channels took the gemm kernel). In inference
#: `MaskConv` computes such a conv1 with zero filters added up to this many channels and drops their output.
GEMM_MIN_CHANNELS = 16


def conv_out(n: int, kernel: int, stride: int, pad: int) -> int:
    """Output size of a convolution along one axis: floor((n + 2p - k) / s) + 1."""
    return (n + 2 * pad - kernel) // stride + 1


#: (kernel, stride, padding) of each convolution along time: the one source of the output-length formula.
TIME_GEOMETRY = tuple((conv["kernel"][1], conv["stride"][1], conv["padding"][2]) for conv in (CONV1, CONV2))


def output_lengths(frames):
    """Output frames for input spectrogram frames (ints, NumPy arrays or MindSpore tensors; the network calls
    it inside its graph too): each convolution maps n frames to floor((n + 2p - k) / s) + 1."""
    for kernel, stride, pad in TIME_GEOMETRY:
        frames = conv_out(frames, kernel, stride, pad)
    return frames


_lengths_after_convs = output_lengths  # the graph compiler resolves the bare name to the method below, itself


def rnn_input_size(cfg: ModelConfig) -> int:
    """Features per frame after the convolutions: channels x remaining frequency bins (32 x 41 = 1312)."""
    f = cfg.n_bins
    for conv in (CONV1, CONV2):
        f = conv_out(f, conv["kernel"][0], conv["stride"][0], conv["padding"][0])
    return cfg.conv_channels * f


def block_index(c_in: int, c_out: int, kernel: tuple[int, int], stride_f: int, block: int) -> np.ndarray:
    """Indices that turn a kernel [c_out, c_in, kf, kt] into kt matrices [span*c_in, block*c_out].

    Row (s, ci) is input frequency s of a block's window, column (b, co) its output frequency b; entry
    -1 (an appended zero) lies outside the kernel. Every block of outputs shares these matrices.
    """
    kf, kt = kernel
    span = (block - 1) * stride_f + kf
    co, ci, b, s = np.meshgrid(np.arange(c_out), np.arange(c_in), np.arange(block), np.arange(span), indexing="ij")
    k = s - b * stride_f
    size = c_out * c_in * kf * kt
    idx = np.empty((kt, span * c_in, block * c_out), dtype=np.int32)
    for j in range(kt):
        flat = np.where((k >= 0) & (k < kf), ((co * c_in + ci) * kf + np.clip(k, 0, kf - 1)) * kt + j, size)
        idx[j] = flat.transpose(3, 1, 2, 0).reshape(span * c_in, block * c_out)  # rows (s, ci), cols (b, co)
    return idx


class MatmulConv(nn.Cell):
    """A Conv2d over (freq, time) with the parameter layout of nn.Conv2d, computed as dense matmuls.

    Input and output are [N, T, F*C], frequency-major. Output frequencies go in blocks of `block`; each
    block reads a window of `(block-1)*stride+kf` input frequencies, so the windows (stacked) times one
    small weight matrix per time tap give the convolution with little wasted arithmetic.
    `weight` is [c_out, c_in, kf, kt], so checkpoints are interchangeable with nn.Conv2d.
    """

    def __init__(self, c_in: int, c_out: int, f_in: int, kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int, int, int], block: int = 8, fuse_taps: bool = True) -> None:
        super().__init__()
        self.weight = ms.Parameter(ms.common.initializer.initializer("he_normal", (c_out, c_in) + tuple(kernel)),
                                   name="weight")
        kf, self.kt = kernel
        self.stride_f, self.stride_t, self.pad_t = stride[0], stride[1], padding[2]
        self.f_out = conv_out(f_in, kf, stride[0], padding[0])
        self.block, self.n_blocks = block, -(-self.f_out // block)
        self.span = (block - 1) * stride[0] + kf
        needed = (self.n_blocks - 1) * block * stride[0] + self.span  # padded input frequencies read
        self.pad_f = (padding[0], needed - f_in - padding[0])
        self.index = ms.Tensor(block_index(c_in, c_out, kernel, stride[0], block))
        self.c_in, self.c_out, self.fuse_taps = c_in, c_out, fuse_taps

    def construct(self, x):
        n, t, _ = x.shape
        flat = ops.concat((self.weight.reshape(-1), ops.zeros(1, self.weight.dtype)))
        mats = ops.gather(flat, self.index, 0).astype(x.dtype)  # [kt, span*c_in, block*c_out]
        x = ops.pad(x.reshape(n, t, -1, self.c_in), (0, 0, self.pad_f[0], self.pad_f[1], self.pad_t, self.pad_t))
        x = x.reshape(n, t + 2 * self.pad_t, -1)  # 3-D throughout: StridedSliceGrad fails on some 4-D slices
        step, width = self.block * self.stride_f * self.c_in, self.span * self.c_in
        windows = ops.concat([x[:, :, b * step:b * step + width] for b in range(self.n_blocks)], axis=2)
        t_out = (t + 2 * self.pad_t - self.kt) // self.stride_t + 1
        if self.stride_t == 1 and self.fuse_taps:
            y = self._fused_taps(windows, mats, n, t + 2 * self.pad_t, t_out)
        else:
            last = self.stride_t * (t_out - 1) + 1
            rows = n * t_out * self.n_blocks  # 2-D operands: one GEMM per tap (4-D matmul broadcasts mats)
            y = ops.matmul(windows[:, 0:last:self.stride_t].reshape(rows, -1), mats[0])
            for j in range(1, self.kt):
                y = y + ops.matmul(windows[:, j:j + last:self.stride_t].reshape(rows, -1), mats[j])
        y = y.reshape(n, t_out, self.n_blocks * self.block, self.c_out)[:, :, :self.f_out]
        return y.reshape(n, t_out, self.f_out * self.c_out)

    def _fused_taps(self, windows, mats, n, tp, t_out):
        """All taps in one GEMM, Z[t, j] = window[t] @ W_j; then y[t] = sum_j Z[t + j, j], read as a skewed view."""
        kt, cols = self.kt, self.block * self.c_out
        wcat = mats.transpose(1, 0, 2).reshape(mats.shape[1], kt * cols)  # [span*c_in, kt*cols]
        z = ops.matmul(windows.reshape(n * tp * self.n_blocks, -1), wcat)  # rows (n, t, block)
        z = z.reshape(n, tp, self.n_blocks, kt, cols).transpose(0, 3, 1, 2, 4).reshape(n, kt * tp, -1)
        z = ops.pad(z, (0, 0, 0, kt))  # row j*(tp+1) + t of the padded [n, kt*(tp+1)] holds Z[t + j, j]
        z = z.reshape(n, kt, tp + 1, -1)[:, :, :t_out]
        return z.sum(axis=1)


class MaskedBatchNorm(nn.Cell):
    """BatchNorm whose training statistics count only valid frames, so padding cannot change them.

    `construct(x, mask)`: x is [N, C, F, T] (`channel_axis=1`) or [N, T, F, C] (`channel_axis=-1`);
    `mask` [N, 1, 1, T] or [N, T, 1, 1] is 1.0 for valid frames and 0.0 for padded ones. In training each
    channel is normalised by the mean and (biased) variance of its valid values only, all frequency bins of
    a valid frame included, and the moving statistics are updated as MindSpore 2.10's nn.BatchNorm2d does
    on CPU: moving = momentum * moving + (1 - momentum) * batch, with the *unbiased* batch variance
    (count / (count - 1) x the one used for normalising). In inference the moving statistics are used.
    Without padding it equals nn.BatchNorm2d, whose parameter names and shapes it keeps (`gamma`, `beta`,
    `moving_mean`, `moving_variance`, each [C]), so checkpoints load unchanged.
    """

    def __init__(self, num_features: int, channel_axis: int = 1, eps: float = 1e-5, momentum: float = 0.9) -> None:
        super().__init__()
        init = ms.common.initializer.initializer
        self.moving_mean = ms.Parameter(init("zeros", num_features), name="mean", requires_grad=False)
        self.moving_variance = ms.Parameter(init("ones", num_features), name="variance", requires_grad=False)
        self.gamma = ms.Parameter(init("ones", num_features), name="gamma")
        self.beta = ms.Parameter(init("zeros", num_features), name="beta")
        if channel_axis not in (1, -1):
            raise ValueError(f"channel_axis {channel_axis}: use 1 ([N, C, F, T]) or -1 ([N, T, F, C])")
        self.channels_last = channel_axis == -1
        self.stat_shape = (1, 1, 1, num_features) if self.channels_last else (1, num_features, 1, 1)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum

    def construct(self, x, mask):
        dtype = x.dtype
        x = x.astype(ms.float32)  # statistics in float32, also under mixed precision
        if self.training:
            mask = ops.stop_gradient(mask.astype(ms.float32))
            count = mask.sum() * (x.size // (mask.size * self.num_features))  # valid values per channel
            mean = self._masked_sum(x, mask) / count
            centred = x - expand(mean, x)
            var = self._masked_sum(centred * centred, mask) / count  # biased; two passes keep it exact
            unbiased = var.reshape(-1) * count / ops.maximum(count - 1, 1)  # a single value: no NaN
            self._update_moving(mean.reshape(-1), unbiased)
        else:
            centred = x - expand(self.moving_mean.reshape(self.stat_shape), x)
            var = self.moving_variance.reshape(self.stat_shape)
        scale = ops.rsqrt(var + self.eps) * self.gamma.reshape(self.stat_shape)
        # statistics broadcast first (`expand`): half the convolution block's training memory
        return (centred * expand(scale, x) + expand(self.beta.reshape(self.stat_shape), x)).astype(dtype)

    def _masked_sum(self, v, mask):
        """Per-channel sum of v over valid frames, shaped like the statistics: one batched matrix product
        with the mask over time, so no masked copy of v is made or kept for the backward pass."""
        if self.channels_last:
            n, t, f, c = v.shape
            sums = ops.bmm(mask.reshape(n, 1, t), v.reshape(n, t, f * c)).reshape(n * f, c).sum(0)
        else:
            n, c, f, t = v.shape
            sums = ops.bmm(v.reshape(n, c * f, t), mask.reshape(n, t, 1)).reshape(n, c, f).sum((0, 2))
        return sums.reshape(self.stat_shape)

    def _update_moving(self, mean, var):
        """moving = momentum * moving + (1 - momentum) * batch, outside the gradient."""
        mean, var = ops.stop_gradient(mean), ops.stop_gradient(var)
        ops.assign(self.moving_mean, self.momentum * self.moving_mean + (1 - self.momentum) * mean)
        ops.assign(self.moving_variance, self.momentum * self.moving_variance + (1 - self.momentum) * var)


class MaskConv(nn.Cell):
    """Conv-BN-tanh twice; frames past each utterance's length are zeroed and left out of the BatchNorm
    statistics (MaskedBatchNorm), so padding never leaks in, in training or inference.

    `impl="native"` (default, as ModelConfig.conv) uses nn.Conv2d; `impl="matmul"` computes each convolution
    as blocked matrix products. Both hold the same `weight` [c_out, c_in, kf, kt], so checkpoints move freely.
    """

    def __init__(self, channels: int, n_bins: int = 161, impl: str = "native") -> None:
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
                                    CONV2["padding"], block=6)  # block 4-8 measured within noise; 6 wastes 1 of 42
        else:
            raise ValueError(f"conv impl {impl!r}: use 'matmul' or 'native'")
        self.f1 = conv_out(n_bins, CONV1["kernel"][0], CONV1["stride"][0], CONV1["padding"][0])
        self.f2 = conv_out(self.f1, CONV2["kernel"][0], CONV2["stride"][0], CONV2["padding"][0])
        channel_axis = 1 if impl == "native" else -1  # [N, C, F, T] or [N, T, F, C]
        self.bn1 = MaskedBatchNorm(channels, channel_axis)
        self.bn2 = MaskedBatchNorm(channels, channel_axis)
        self.tanh = nn.Tanh()
        self.widen_conv1 = impl == "native" and channels < GEMM_MIN_CHANNELS

    def construct(self, x, lengths):
        """x [N, 1, bins, T] -> [T', N, C*bins''] (time-major RNN input), frames >= length set to 0."""
        if self.impl == "native":
            x = self._conv1_widened(x) if self.widen_conv1 and not self.training else self.conv1(x)
            mask = _time_mask(lengths, x.shape[3], x.dtype)  # both convolutions keep the output length
            x = masked(self.tanh(self.bn1(x, mask)), mask)
            x = masked(self.tanh(self.bn2(self.conv2(x), mask)), mask)
            n, c, f, t = x.shape
            return x.reshape(n, c * f, t).transpose(2, 0, 1)
        n = x.shape[0]
        x = x.reshape(n, x.shape[2], x.shape[3]).transpose(0, 2, 1)  # [N, T, F]
        x = self._bn_tanh(self.conv1(x), self.bn1, lengths)
        x = self._bn_tanh(self.conv2(x), self.bn2, lengths)
        t = x.shape[1]
        return x.reshape(n, t, self.f2, self.channels).transpose(1, 0, 3, 2).reshape(t, n, self.channels * self.f2)

    def _conv1_widened(self, x):
        """conv1 with zero filters up to GEMM_MIN_CHANNELS (oneDNN's gemm kernel), the real channels kept."""
        w = self.conv1.weight
        w = ops.concat((w, ops.zeros((GEMM_MIN_CHANNELS - self.channels,) + w.shape[1:], w.dtype)), 0)
        padding = (CONV1["padding"][0], CONV1["padding"][2])  # symmetric (top = bottom, left = right)
        return ops.conv2d(x, w, None, CONV1["stride"], "pad", padding)[:, :self.channels]

    def _bn_tanh(self, y, bn, lengths):
        """Masked BatchNorm + tanh + length mask on frequency-major [N, T, F*C] activations.

        Viewed as [N, T, F, C] (channels last), the statistics are per channel without a transpose."""
        n, t, fc = y.shape
        mask = _time_mask(lengths, t, y.dtype).reshape(n, t, 1, 1)
        y = masked(self.tanh(bn(y.reshape(n, t, -1, self.channels), mask)), mask)
        return y.reshape(n, t, fc)


def _time_mask(lengths, frames: int, dtype):
    """[N, 1, 1, T] mask, 1 where frame < length."""
    steps = ops.arange(frames, dtype=ms.int32).reshape(1, -1)
    return (steps < lengths.reshape(-1, 1)).astype(dtype).reshape(lengths.shape[0], 1, 1, frames)


def expand(small, like):
    """`small` (a mask, or per-channel statistics) broadcast to the shape of `like`, as its own tensor.

    Multiplying a full activation by a smaller tensor lets the operation broadcast, and on MindSpore 2.10's CPU
    backend the backward pass of such a Mul raised the peak by about 7.6 activation-sized buffers, against 1.9 with
    the operand broadcast first (measured on a [16, 32, 81, 636] tensor). In the convolution block, training
    at batch 16 x 12.7 s, that took its forward + backward from 6.1 to 2.9 GB."""
    return ops.broadcast_to(small, like.shape)


def masked(x, mask):
    """x with the frames past each utterance's length set to 0: `mask` expanded to x's shape (`expand`), and no
    gradient flows into it."""
    return x * ops.stop_gradient(expand(mask, x))


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

    def __init__(self, cfg: ModelConfig = ModelConfig(), conv_impl: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg if conv_impl is None else replace(cfg, conv=conv_impl)  # what checkpoints record
        self.conv = MaskConv(cfg.conv_channels, cfg.n_bins, self.cfg.conv)
        self.RNN = BatchRNN(rnn_input_size(cfg), cfg.hidden_size, cfg.hidden_layers, cfg.rnn_type)
        bound = 1.0 / math.sqrt(cfg.hidden_size)
        dense = nn.Dense(cfg.hidden_size, cfg.num_classes, has_bias=False,
                         weight_init=ms.common.initializer.Uniform(bound))
        self.fc = SequenceWise(dense)

    def construct(self, x, lengths):
        out_lengths = self.output_lengths(lengths)
        x = self.RNN(self.front(x, lengths, out_lengths), out_lengths)
        return self.fc(x), out_lengths

    def front(self, x, lengths, out_lengths):
        """Spectrogram -> the RNN stack's input [T', N, F]: the convolution block on the masked input."""
        x = masked(x, _time_mask(lengths, x.shape[3], x.dtype))  # whatever sits in the padding, it reads as zeros
        return self.conv(x, out_lengths)

    def output_lengths(self, lengths):
        """Exact output frames after both convolutions (the module's `output_lengths`, inside the graph)."""
        return _lengths_after_convs(lengths)


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
    gates = cfg.rnn_gates
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


def training_flops_per_audio_second(cfg: ModelConfig, *, freeze_conv: bool = False, freeze_rnn_layers: int = 0) -> float:
    """Approximate training FLOPs for one second of audio: forward + 2x forward of backward per trained layer.

    A frozen layer skips its weight gradient (2x forward), and the whole backward pass (1x) when every
    layer below it is frozen too, as with `freeze_conv` plus the lower RNN layers.
    """
    forward = architecture_table(cfg)["forward GFLOP/s-audio"].to_numpy()  # input, conv1, conv2, RNNs, dense
    cost = np.full(len(forward), 3.0)
    if freeze_conv:
        cost[1:3] = 1.0
    cost[3:3 + freeze_rnn_layers] = 1.0 if freeze_conv else 2.0
    return 1e9 * float(cost @ forward)
