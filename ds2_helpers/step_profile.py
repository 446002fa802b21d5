"""Where one training step's time and memory go: each part of the network (convolution block, RNN stack,
dense layer + CTC loss, clipping + optimizer update) run on its own, forward alone and forward + backward, beside
the whole step - each in a fresh process, so its peak memory is its own - and compared with its FLOP floor
(the part's FLOPs / the machine's measured matrix-multiply rate).

A part's memory is its peak resident memory above the process's memory once the network is built: what that part's
forward and backward pass allocate (activations kept for backward, gradients, oneDNN scratch buffers). Measuring at
batch 1 and at a larger batch separates a part's fixed cost from its cost per utterance.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ds2_helpers import bench

#: What `BenchConfig.recompute` names, in words.
RECOMPUTED = {"conv": "the convolution block", "rnn": "each RNN layer"}
#: The name of the whole step's row (`Trainer.step`, as `bench` times it); recompute rows add to it.
WHOLE_STEP = "whole step (Trainer.step)"
PARTS = ("convolution block", "RNN stack", "dense + CTC loss", "clip + optimizer update")


@dataclass(frozen=True)
class PartConfig:
    """One part of the `preset` network, timed on `batch_size` synthetic utterances of `seconds` each."""

    part: str
    preset: str = "paper"
    batch_size: int = 16
    seconds: float = bench.MEAN_SECONDS
    backward: bool = True  # forward + backward (the gradients training needs) or forward alone

    @property
    def name(self) -> str:
        if self.part == PARTS[-1]:
            return self.part
        return f"{self.part}, {'forward + backward' if self.backward else 'forward'}"


def _inputs(cfg: PartConfig, net):
    """The part's Cell and its input tensors (what the network feeds it in a step on this batch)."""
    import mindspore as ms
    from mindspore import nn

    from ds2_helpers.model import output_lengths, rnn_input_size
    from ds2_helpers.train import CTCLossNet

    batch = bench.synthetic_batch(bench.BenchConfig(name=cfg.part, preset=cfg.preset, batch_size=cfg.batch_size,
                                                    seconds=cfg.seconds))
    n, frames = batch.x.shape[0], int(output_lengths(batch.x.shape[3]))
    lengths = ms.Tensor(np.full(n, frames, np.int32))
    rng = np.random.default_rng(0)

    def dense(width):  # a [T', N, width] activation of the network's own range (after tanh / summed directions)
        return ms.Tensor(np.tanh(rng.standard_normal((frames, n, width))).astype(np.float32))

    class Squared(nn.Cell):  # a scalar from a part's output, so backward runs through all of it
        def __init__(self, inner):
            super().__init__(auto_prefix=False)
            self.inner = inner

        def construct(self, x, lengths):
            return (self.inner(x, lengths) ** 2).mean()

    class DenseCTC(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.fc, self.loss = net.fc, CTCLossNet(net)

        def construct(self, x, lengths, y, y_len):
            return self.loss.per_utterance(self.fc(x), lengths, y, y_len).mean()

    if cfg.part == "convolution block":
        return Squared(net.conv), (ms.Tensor(batch.x), lengths), net.conv.trainable_params(), False
    if cfg.part == "RNN stack":
        return Squared(net.RNN), (dense(rnn_input_size(net.cfg)), lengths), net.RNN.trainable_params(), True
    if cfg.part == "dense + CTC loss":
        args = (dense(net.cfg.hidden_size), lengths, ms.Tensor(batch.y), ms.Tensor(batch.y_len))
        return DenseCTC(), args, net.fc.trainable_params(), True
    raise ValueError(f"part {cfg.part!r}: use one of {PARTS}")


def _update_cell(net):
    """Clipping + the course's optimizer over every weight, fed gradients: the step's last part."""
    import mindspore as ms

    from ds2_helpers.config import train_preset
    from ds2_helpers.optimizers import Update, build_optimizer

    tcfg = train_preset("paper")
    update = Update(build_optimizer(tcfg, net.trainable_params()), tcfg.max_grad_norm)
    grads = tuple(ms.Tensor(np.full(p.shape, 1e-3, np.float32)) for p in net.trainable_params())
    return update, (grads,)


def run_part(cfg: PartConfig, *, steps: int = 2, warmup: int = 1) -> dict:
    """Time one part in this process (Graph mode): median seconds of `steps` calls after `warmup`, peak memory."""
    import mindspore as ms
    from mindspore import nn

    from ds2_helpers.config import model_preset
    from ds2_helpers.model import DeepSpeech2
    from ds2_helpers.memory import peak_gb, reset_peak, resident_gb
    from ds2_helpers.train import set_seed

    ms.set_context(mode=ms.GRAPH_MODE)
    set_seed(0)
    net = DeepSpeech2(model_preset(cfg.preset))
    net.set_train(True)
    if cfg.part == "clip + optimizer update":
        cell, args = _update_cell(net)
    else:
        inner, args, weights, input_grad = _inputs(cfg, net)
        if cfg.backward:
            class Grad(nn.Cell):
                def __init__(self):
                    super().__init__(auto_prefix=False)
                    self.inner = inner
                    self.grad = ms.value_and_grad(inner, 0 if input_grad else None, weights)

                def construct(self, *xs):
                    return self.grad(*xs)
            cell = Grad()
        else:
            cell = inner
    built = resident_gb()
    reset_peak()
    times = []
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        out = cell(*args)
        out = out[0] if isinstance(out, tuple) else out
        if hasattr(out, "asnumpy"):  # the update returns a bool, once it has run
            out.asnumpy()
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    peak = peak_gb()
    return {"step_seconds": statistics.median(times), "step_seconds_all": times, "built_gb": built,
            "peak_gb": peak, "memory_gb": peak - built}


def part_gflop(cfg: PartConfig) -> float:
    """GFLOPs of the part for one batch: forward from `model.architecture_table`, x3 with backward (as
    `model.training_flops_per_audio_second` counts the whole step, so the parts' floors add up to the step's);
    the optimizer's element-wise work counts as 0."""
    from ds2_helpers.config import model_preset
    from ds2_helpers.model import architecture_table

    table = architecture_table(model_preset(cfg.preset))
    forward = table["forward GFLOP/s-audio"].to_numpy()  # input, conv1, conv2, RNN layers..., dense
    factor = np.full(len(forward), 3.0 if cfg.backward else 1.0)
    rows = {"convolution block": slice(1, 3), "RNN stack": slice(3, len(forward) - 1),
            "dense + CTC loss": slice(len(forward) - 1, None), "clip + optimizer update": slice(0, 0)}[cfg.part]
    audio = cfg.batch_size * (int(cfg.seconds * 100) + 1) / 100
    return float((forward[rows] * factor[rows]).sum() * audio)


def run_isolated(cfg: PartConfig, *, steps: int = 2, warmup: int = 1, timeout: float = 3600) -> dict:
    """`run_part` in a fresh process (python -m ds2_helpers profile-one)."""
    args = [sys.executable, "-m", "ds2_helpers", "profile-one", json.dumps(asdict(cfg)), "--steps", str(steps),
            "--warmup", str(warmup)]
    return bench.run_json_process(args, timeout=timeout)


def configs(preset: str = "paper", batch_sizes: tuple[int, ...] = (1, 16), seconds: float = bench.MEAN_SECONDS):
    """Every part forward and forward + backward at each batch size, the update once per batch size."""
    out = []
    for b in batch_sizes:
        for part in PARTS[:-1]:
            out += [PartConfig(part, preset, b, seconds, backward=False), PartConfig(part, preset, b, seconds)]
        out.append(PartConfig(PARTS[-1], preset, b, seconds))
    return out


def run(preset: str = "paper", batch_sizes: tuple[int, ...] = (1, 16), seconds: float = bench.MEAN_SECONDS, *,
        recompute: tuple[tuple[str, ...], ...] = (), micro_batches: tuple[int, ...] = (), layerwise: bool = False,
        parts: bool = True, steps: int = 2, progress: bool = True) -> dict:
    """Profile every part (unless `parts` is False) and the whole step at each batch size, and the whole step at
    the largest batch with each `recompute` choice (`bench.BenchConfig.recompute`: what MindSpore's Cell.recompute
    saves), in each size of `micro_batches` (gradient accumulation, ds2_helpers.micro_batch) and, with `layerwise`,
    one layer at a time (ds2_helpers.layerwise); the matmul rate
    measured before and after, the higher kept (the floor must not flatter the parts).
    Returns {machine, rates, rows}."""
    before = bench.matmul_gflops()
    rows = []
    for cfg in configs(preset, batch_sizes, seconds) if parts else []:
        res = run_isolated(cfg, steps=steps)
        rows.append({**asdict(cfg), "name": cfg.name, "gflop": part_gflop(cfg), **res})
        if progress:
            print(f"batch {cfg.batch_size}, {cfg.name}: " + (f"{res['step_seconds']:.2f} s, "
                  f"{res['memory_gb']:.2f} GB" if "error" not in res else "failed: " + res["error"]), flush=True)
    largest = max(batch_sizes)
    if progress and any(m >= largest for m in micro_batches):
        print(f"micro-batches of {', '.join(str(m) for m in micro_batches if m >= largest)}: not smaller than the "
              f"largest batch ({largest}), so no different from it: not run", flush=True)
    wholes = ([(b, (), None, False) for b in batch_sizes] + [(largest, kept, None, False) for kept in recompute]
              + [(largest, (), m, False) for m in micro_batches if m < largest]
              + ([(largest, (), None, True)] if layerwise else []))
    for b, kept, micro, by_layer in wholes:
        whole = bench.BenchConfig(name="whole step", preset=preset, batch_size=b, seconds=seconds, recompute=kept,
                                  micro_batch=micro, layerwise=by_layer)
        res = bench.run_isolated(whole, steps=steps, warmup=1)
        gflop = 0.0
        if "error" not in res:
            from ds2_helpers.model import training_flops_per_audio_second

            gflop = training_flops_per_audio_second(whole.model_config()) / 1e9 * res["audio_seconds_per_step"]
            res = {**res, "peak_gb": res["peak_rss_mb"] / 1024,
                   "memory_gb": (res["step_peak_rss_mb"] - res["built_rss_mb"]) / 1024}
        name = whole_step_name(kept, micro, by_layer)
        rows.append({"part": "whole step", "preset": preset, "batch_size": b, "seconds": seconds, "backward": True,
                     "recompute": list(kept), "micro_batch": micro, "layerwise": by_layer, "name": name,
                     "gflop": gflop, **res})
        if progress:
            print(f"batch {b}, {name}: " + (f"{res['step_seconds']:.2f} s, peak {res['peak_gb']:.2f} GB"
                                            if "error" not in res else "failed: " + res["error"]), flush=True)
    after = bench.matmul_gflops()
    rate = max(max(before.values()), max(after.values()))
    for row in rows:
        if "step_seconds" in row:
            row["floor_seconds"] = row["gflop"] / rate
            row["percent_of_floor"] = 100 * row["floor_seconds"] / row["step_seconds"] if row["gflop"] else None
    return {**bench.provenance(), "matmul_gflops": rate,
            "rates_before": before, "rates_after": after,
            "what": f"{'each part of a training step' if parts else 'whole training steps'} in its own process "
                    f"(Graph mode, synthetic utterances of {seconds} s); memory_gb = peak RSS above the built network",
            "rows": rows}


def mindspore_gflops(profile: dict) -> float:
    """MindSpore's own matrix-multiply rate in a profile's run: the faster of its measurements before and after."""
    return max(profile["rates_before"]["mindspore"], profile["rates_after"]["mindspore"])


def lstm_reserve_floats(input_size: int, hidden_size: int, frames: int, batch: int = 1) -> int:
    """Size (floats) of the `reserve` output (the 4th) of MindSpore's CPU LSTM kernel (oneDNN's): the workspace
    its backward pass reads, for one direction over `batch` utterances of `frames` frames."""
    import mindspore as ms
    from mindspore import ops

    x = ms.Tensor(np.zeros((frames, batch, input_size), np.float32))
    h0 = ms.Tensor(np.zeros((1, batch, hidden_size), np.float32))
    w = ms.Tensor(np.zeros((4 * hidden_size * (input_size + hidden_size + 1), 1, 1), np.float32))  # W_ih, W_hh, bias
    return int(ops.LSTM(input_size, hidden_size, 1, True, False, 0.0)(x, h0, h0, w)[3].shape[0])


def lstm_reserve_floats_per_frame(input_size: int, hidden_size: int) -> float:
    """Floats MindSpore's CPU LSTM kernel keeps for the backward pass per frame of one direction: the growth of
    its reserve (`lstm_reserve_floats`) from 16 to 48 frames of one utterance with these sizes (the reserve is
    allocated in blocks of 1,024 floats, so a short difference could read as none)."""
    return (lstm_reserve_floats(input_size, hidden_size, 48) - lstm_reserve_floats(input_size, hidden_size, 16)) / 32


def rnn_reserve_bytes(cfg, frames: int, batch: int) -> float:
    """Bytes the RNN stack's LSTM kernels keep for backward in one step on `batch` utterances of `frames` RNN
    frames: every layer's measured reserve per frame (`lstm_reserve_floats_per_frame`), both directions."""
    from ds2_helpers.model import rnn_input_size

    if cfg.rnn_gates != 4:
        raise ValueError(f"rnn_type {cfg.rnn_type!r}: the reserve is measured for MindSpore's LSTM kernel only")
    sizes = [rnn_input_size(cfg)] + [cfg.hidden_size] * (cfg.hidden_layers - 1)
    per_frame = {size: lstm_reserve_floats_per_frame(size, cfg.hidden_size) for size in set(sizes)}
    return float(sum(per_frame[size] for size in sizes) * 2 * 4 * frames * batch)


def whole_step_name(recompute: tuple[str, ...] = (), micro_batch: int | None = None, layerwise: bool = False) -> str:
    """The row name of a whole step: plain (WHOLE_STEP), with recomputation, in micro-batches or layer by layer."""
    return (WHOLE_STEP + "".join(f", recompute {RECOMPUTED[p]}" for p in recompute)
            + (f", micro-batches of {micro_batch}" if micro_batch else "") + (", layer by layer" if layerwise else ""))


def table(profile: dict):
    """Seconds, share of the whole step, % of the part's floor and memory per part and batch size."""
    import pandas as pd

    frame = pd.DataFrame(profile["rows"])
    if "step_seconds" not in frame:
        frame["step_seconds"] = np.nan
    plain = frame[(frame.part == "whole step") & (frame.name == WHOLE_STEP)]
    whole = plain.set_index("batch_size").step_seconds
    frame["share_of_step"] = frame.step_seconds / frame.batch_size.map(whole)
    cols = ["batch_size", "name", "step_seconds", "share_of_step", "percent_of_floor", "memory_gb", "peak_gb"]
    return frame[[c for c in cols if c in frame]].round(3)


def chart(profile: dict, batch_size: int | None = None, title: str = "Where a training step's time and memory go"):
    """Two panels for one batch size (the largest measured by default): seconds of each part (forward,
    forward + backward) beside its floor, and the memory of each part and of the whole step above the built
    network."""
    import matplotlib.pyplot as plt

    frame = table(profile)
    b = batch_size or int(frame.batch_size.max())
    rows = [r for r in profile["rows"] if r["batch_size"] == b and "step_seconds" in r]
    fig, (ax, mx) = plt.subplots(1, 2, figsize=(11, 0.5 * max(len(rows), 2) + 1.4), sharey=True)
    names = [r["name"] for r in rows]
    y = np.arange(len(rows))
    ax.barh(y, [r["step_seconds"] for r in rows], color="tab:blue", label="measured")
    ax.scatter([r.get("floor_seconds") or 0 for r in rows], y, color="tab:red", marker="|", s=300, zorder=3,
               label="its FLOP floor")
    ax.set(yticks=y, yticklabels=names, xlabel="seconds per step", title=f"time (batch {b})")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    mx.barh(y, [r.get("memory_gb", 0) for r in rows], color="tab:orange")
    mx.set(xlabel="GB above the built network\n(peak RSS less the network's)", title="memory")
    ax.invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write(profile: dict, out: str | Path) -> dict[str, Path]:
    """profile.json, profile.csv and profile.png in `out` (`atomic.write_report`)."""
    from ds2_helpers.atomic import write_report

    return write_report(out, "profile", profile, table(profile), chart(profile))
