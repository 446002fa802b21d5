"""Inference at the machine's speed, and the bounds to judge it by.

`forward(net)` runs the network as one compiled MindSpore graph (`ms.jit` over the network, its batch and time
axes left free with `Cell.set_inputs`: compiled on the first call, then reused for every shape), so `evaluate`
and `transcribe` get Graph mode's speed without switching the whole process out of PyNative mode. `warm_up` pays
the compilation on tiny inputs before anything is timed.

The bounds (a roofline): the forward pass costs FLOPs (the architecture table's) and memory traffic. Every LSTM
step multiplies the batch's hidden vectors by W_hh (4H x H floats, 16.8 MB per direction and layer for `paper`),
so the weights stream through once per output frame, whatever the batch: `recurrent_bytes_per_audio_second`.
The machine's two rates are measured in the same run: sgemm (NumPy and MindSpore, the better one) and the
fastest rate at which anything measured here streams a W_hh-sized matrix through the recurrence
(`weight_read_gbytes`: NumPy's or MindSpore's matrix-vector product, or MindSpore's own LSTM kernel stepping one
utterance; which is fastest differs between hosts and runs, data/inference_reference_2core.json records all
three). The parts run one after another, so their times add: the convolutions, the LSTMs' input products and
the dense layer at the sgemm rate, and the recurrence (the products with W_hh, one per frame) at the slower of
its FLOPs and its W_hh traffic. For `paper` the traffic is the slower at batch 1 and still, on the reference
host, at evaluate's batches of about ten utterances, so neither bound alone is the roofline: `bounds` reports
all three.
"""

from __future__ import annotations

import time
import weakref

import numpy as np

from ds2_helpers.model import DeepSpeech2, architecture_table, output_lengths

MODES = ("graph", "pynative")
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forward(net: DeepSpeech2, mode: str = "graph"):
    """(x, lengths) -> (logits [T', N, C], output lengths [N]) as MindSpore tensors, in inference mode; "graph"
    compiles it once per network (kept with it), "pynative" runs it op by op."""
    import mindspore as ms

    if mode not in MODES:
        raise ValueError(f"inference mode {mode!r}: use one of {', '.join(MODES)}")
    net.set_train(False)
    if mode == "pynative":
        return net
    if net not in _COMPILED:
        from ds2_helpers.train import dynamic_inputs

        net.set_inputs(*dynamic_inputs(net.cfg.n_bins)[:2])
        _COMPILED[net] = ms.jit(net)
    return _COMPILED[net]


def warm_up(net: DeepSpeech2, mode: str = "graph") -> float:
    """Seconds spent compiling: two tiny batches of different shapes, so the dynamic graph exists before timing."""
    import mindspore as ms

    fn = forward(net, mode)
    t0 = time.perf_counter()
    for n, frames in ((1, 64), (2, 96)):
        x = np.zeros((n, 1, net.cfg.n_bins, frames), np.float32)
        fn(ms.Tensor(x), ms.Tensor(np.full(n, frames, np.int32)))[0].asnumpy()
    return time.perf_counter() - t0


def forward_flops_per_audio_second(cfg) -> float:
    """Forward FLOPs for one second of audio (the architecture table: convolutions, LSTM gates, dense)."""
    return 1e9 * float(architecture_table(cfg)["forward GFLOP/s-audio"].sum())


def _w_hh_entries_per_audio_second(cfg) -> float:
    """Entries of W_hh ([gates*H, H]) each second of audio passes through: every output frame, both directions
    of every layer (100 input frames a second)."""
    frames = float(output_lengths(100))
    return cfg.hidden_layers * 2 * cfg.rnn_gates * cfg.hidden_size * cfg.hidden_size * frames


def recurrent_flops_per_audio_second(cfg) -> float:
    """The forward FLOPs of the products with W_hh (part of the architecture table's LSTM rows): a multiply-add
    per entry for each utterance's hidden vector."""
    return 2.0 * _w_hh_entries_per_audio_second(cfg)


def recurrent_bytes_per_audio_second(cfg, batch: int = 1) -> float:
    """Bytes of W_hh read per second of audio: every output frame (both directions, every layer) reads the
    whole recurrent matrix (float32) once for the `batch` utterances it steps together."""
    return 4.0 * _w_hh_entries_per_audio_second(cfg) / batch


def weight_read_gbytes(cfg, repeats: int = 200, frames: int = 200) -> dict[str, float]:
    """GB/s at which this machine streams a W_hh-sized matrix through the batch-1 recurrence, three ways, each
    the best of three timed loops: NumPy's sgemv, MindSpore's (oneDNN's) compiled matmul of one row, and
    MindSpore's own LSTM kernel stepping one utterance through `frames` frames (one layer, one direction, one
    input feature, so nearly all of its time is the recurrence, each step reading all of W_hh). The roofline
    uses the fastest: no way of running the network found so far reads its weights faster."""
    import mindspore as ms
    from mindspore import nn, ops

    gates = cfg.rnn_gates
    rng = np.random.default_rng(0)
    w = rng.standard_normal((gates * cfg.hidden_size, cfg.hidden_size)).astype(np.float32)
    v = rng.standard_normal(cfg.hidden_size).astype(np.float32)
    w_ms, v_ms = ms.Tensor(np.ascontiguousarray(w.T)), ms.Tensor(v[None])

    class Recurrence(nn.Cell):
        def __init__(self):
            super().__init__()
            self.rnn = (nn.LSTM if gates == 4 else nn.GRU)(1, cfg.hidden_size, 1, batch_first=True)

        def construct(self, x, h0):
            return self.rnn(x, (h0, h0) if gates == 4 else h0)[0]

    matmul, rnn = ms.jit(ops.matmul), ms.jit(Recurrence())
    x = ms.Tensor(np.zeros((1, frames, 1), np.float32))
    h0 = ms.Tensor(np.zeros((1, 1, cfg.hidden_size), np.float32))

    def best(run, reps, nbytes) -> float:
        seconds = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            out = [run() for _ in range(reps)][-1]
            if hasattr(out, "asnumpy"):
                out.asnumpy()
            seconds = min(seconds, (time.perf_counter() - t0) / reps)
        return nbytes / seconds / 1e9

    matmul(v_ms, w_ms).asnumpy()
    rnn(x, h0).asnumpy()
    return {"numpy sgemv": best(lambda: w @ v, repeats, w.nbytes),
            "mindspore matmul": best(lambda: matmul(v_ms, w_ms), repeats // 2, w.nbytes),
            "mindspore recurrence": best(lambda: rnn(x, h0), 3, w.nbytes * frames)}


def bounds(cfg, batch: int, sgemm_gflops: float, read_gbps: float) -> dict:
    """The roofline for one configuration, in seconds of compute per audio second (= the best possible RTF):
    `flop_rtf` all the FLOPs at the sgemm rate (the FLOP floor), `memory_rtf` the W_hh traffic alone, and
    `bound_rtf` the parts added up: everything but the recurrence at the sgemm rate, plus the recurrence at the
    slower of its FLOPs and its traffic. `bound` is "FLOPs" where the recurrence's FLOPs outlast its traffic,
    else "FLOPs + W_hh traffic"."""
    rate = sgemm_gflops * 1e9
    flop_rtf = forward_flops_per_audio_second(cfg) / rate
    recurrent_rtf = recurrent_flops_per_audio_second(cfg) / rate
    memory_rtf = recurrent_bytes_per_audio_second(cfg, batch) / (read_gbps * 1e9)
    return {"flop_rtf": flop_rtf, "memory_rtf": memory_rtf,
            "bound_rtf": flop_rtf - recurrent_rtf + max(recurrent_rtf, memory_rtf),
            "bound": "FLOPs" if recurrent_rtf >= memory_rtf else "FLOPs + W_hh traffic"}
