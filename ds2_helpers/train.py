"""Training: CTC loss, Adam with weight decay, per-epoch annealing, clipping, checkpoints, resume, data parallel."""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from ds2_helpers import checkpoint as ckpt
from ds2_helpers.config import ModelConfig, SpectConfig, TrainConfig, to_dict
from ds2_helpers.dataset import Batch, SpeechData, make_batches, shard
from ds2_helpers.labels import BLANK_INDEX
from ds2_helpers.model import DeepSpeech2, freeze

METRIC_FIELDS = ["step", "epoch", "loss", "lr", "utterances", "audio_seconds", "step_seconds",
                 "audio_seconds_per_second", "padding_fraction", "frames", "rank", "utterance_ids"]


def set_mode(mode: str) -> None:
    """Graph (compiled, faster) or PyNative (eager, easier to debug) on the CPU."""
    ms.set_context(mode=ms.GRAPH_MODE if mode.lower() == "graph" else ms.PYNATIVE_MODE)  # CPU: the wheel's device


def set_seed(seed: int) -> None:
    """One seed for MindSpore, NumPy and Python's random (called at the top of every notebook)."""
    import random

    ms.set_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class CTCLossNet(nn.Cell):
    """Network + CTC loss (blank `_` = index 28), averaged over the utterances of the batch."""

    def __init__(self, net: DeepSpeech2, blank: int = BLANK_INDEX) -> None:
        super().__init__(auto_prefix=False)
        self.net = net
        self.blank = blank

    def construct(self, x, x_len, y, y_len):
        logits, out_len = self.net(x, x_len)
        return self.per_utterance(logits, out_len, y, y_len).mean()

    def per_utterance(self, logits, out_len, y, y_len):
        """CTC loss of each utterance [N] (padded frames and labels are cut by the lengths)."""
        log_probs = ops.log_softmax(logits, -1)
        loss, _ = ops.ctc_loss(log_probs, y, out_len, y_len, blank=self.blank, reduction="none", zero_infinity=True)
        return loss


class _Float32Out(nn.Cell):
    """Cast a mixed-precision network's logits back to float32 for the CTC loss."""

    def __init__(self, net: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.inner = net

    def construct(self, x, lengths):
        logits, out_len = self.inner(x, lengths)
        return logits.astype(ms.float32), out_len


class TrainStep(nn.Cell):
    """One optimisation step: loss and gradients, all-reduce (data parallel), global-norm clipping, Adam."""

    def __init__(self, loss_net: CTCLossNet, optimizer: nn.Optimizer, max_grad_norm: float, world: int = 1):
        super().__init__(auto_prefix=False)
        self.loss_net = loss_net
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad_fn = ms.value_and_grad(loss_net, None, self.weights)
        self.max_grad_norm = max_grad_norm
        self.reducer = nn.DistributedGradReducer(self.weights, mean=True, degree=world) if world > 1 else None

    def construct(self, x, x_len, y, y_len):
        loss, grads = self.grad_fn(x, x_len, y, y_len)
        if self.reducer is not None:
            grads = self.reducer(grads)
        grads = ops.clip_by_global_norm(grads, self.max_grad_norm)
        self.optimizer(grads)
        return loss


def distributed_context() -> tuple[int, int]:
    """(rank, world); under msrun initialise communication and data-parallel gradient averaging."""
    world = int(os.environ.get("MS_WORKER_NUM", "1"))
    if world <= 1 or not os.environ.get("MS_ROLE"):
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init

    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return get_rank(), get_group_size()


def annealed_lr(cfg: TrainConfig, epoch: int) -> float:
    """The model zoo's schedule, actually applied: lr / anneal^epoch."""
    return cfg.learning_rate / (cfg.learning_anneal ** epoch)


@dataclass
class TrainState:
    """Where training stands; stored inside every checkpoint so `--resume` continues at the same step."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Builds network, optimizer and step; runs epochs with logging and checkpoints in `out`.

    `conv_impl` is MindSpore's Conv2d by default: our matmul convolution is faster over the first steps,
    but its step time grows run after run of steps (notebook 07), so long training keeps the steady one."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, out: str | Path, *,
                 spect: SpectConfig = SpectConfig(), pretrained: str | Path | None = None,
                 rank: int | None = None, world: int | None = None, conv_impl: str = "native",
                 amp: str | None = None) -> None:
        set_mode(train_cfg.mode)
        if rank is None or world is None:
            rank, world = distributed_context()
        self.rank, self.world = rank, world
        set_seed(train_cfg.seed)
        self.model_cfg, self.cfg, self.spect = model_cfg, train_cfg, spect
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.net = DeepSpeech2(model_cfg, conv_impl=conv_impl)
        self.pretrained_meta = ckpt.load_into(self.net, pretrained) if pretrained else None
        self.frozen = freeze(self.net, conv=train_cfg.freeze_conv, rnn_layers=train_cfg.freeze_rnn_layers)
        self.loss_net = CTCLossNet(self._with_amp(self.net, amp))
        lr = ms.Tensor(np.float32(train_cfg.learning_rate))
        self.optimizer = nn.Adam(self.net.trainable_params(), learning_rate=lr, beta1=train_cfg.betas[0],
                                 beta2=train_cfg.betas[1], eps=train_cfg.eps, weight_decay=train_cfg.weight_decay)
        self.step_cell = TrainStep(self.loss_net, self.optimizer, train_cfg.max_grad_norm, world)
        self.state = TrainState()

    @staticmethod
    def _with_amp(net: DeepSpeech2, amp: str | None) -> nn.Cell:
        """Mixed precision through mindspore.amp (O2: BatchNorm kept in float32); the loss stays float32."""
        if not amp:
            return net
        dtype = {"float16": ms.float16, "bfloat16": ms.bfloat16}[amp]
        return _Float32Out(ms.amp.auto_mixed_precision(net, amp_level="O2", dtype=dtype))

    # ---- checkpoints -------------------------------------------------------------------------
    def _params(self) -> list[dict]:
        """Network parameters under their own names plus the optimizer's state."""
        seen, out = set(), []
        for p in list(self.net.get_parameters()) + list(self.optimizer.get_parameters()):
            if p.name not in seen and p.name != "learning_rate":
                seen.add(p.name)
                out.append({"name": p.name, "data": p})
        return out

    def sync_batchnorm_stats(self) -> None:
        """Average BatchNorm moving statistics over ranks (gradients are averaged every step, these are not)."""
        if self.world <= 1:
            return
        allreduce = ops.AllReduce(ops.ReduceOp.SUM)
        for p in self.net.get_parameters():
            if "moving_" in p.name:
                p.set_data(allreduce(p.value()) / self.world)

    def save(self, path: str | Path | None = None) -> Path:
        """Atomic checkpoint with weights, Adam state and TrainState; prunes to the last k."""
        path = Path(path) if path else self.out / f"ds2-step{self.state.global_step:07d}.ckpt"
        meta = {"state": {k: v for k, v in self.state.__dict__.items() if k != "history"},
                "model": to_dict(self.model_cfg), "train": to_dict(self.cfg), "spect": to_dict(self.spect)}
        ckpt.save(path, self._params(), meta)
        if path.parent == self.out:
            ckpt.prune(self.out, self.cfg.keep_last)
        return path

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore weights, optimizer moments and position from `path` or the newest checkpoint in `out`."""
        if path is None:
            found = ckpt.checkpoints_in(self.out)
            if not found:
                return False
            path = found[-1]
        arrays, meta = ckpt.read(path)
        if "state" not in meta:
            raise ckpt.CheckpointError(f"{path}: has no training state to resume from; use --pretrained for "
                                       "weights-only checkpoints")
        own = {p["name"]: p for p in self._params()}
        missing = [n for n in own if n not in arrays]
        if missing:
            raise ckpt.CheckpointError(f"{path}: cannot resume, missing {missing[:5]} (different preset or freeze "
                                       "options?)")
        for name, p in own.items():
            if tuple(arrays[name].shape) != tuple(p["data"].shape):
                raise ckpt.CheckpointError(f"{path}: {name} has shape {arrays[name].shape}, network wants "
                                           f"{tuple(p['data'].shape)}")
            p["data"].set_data(ms.Tensor(arrays[name]))
        self.state = TrainState(**meta["state"])
        return True

    # ---- training ----------------------------------------------------------------------------
    def epoch_batches(self, data: SpeechData, epoch: int) -> list[list[int]]:
        """This rank's batches for an epoch (deterministic in seed and epoch, so resume lines up)."""
        batches = make_batches(data.durations, self.cfg.batch_size, epoch=epoch, seed=self.cfg.seed,
                               order="bucketed", sortagrad=self.cfg.sortagrad)
        return shard(batches, self.rank, self.world)

    def step(self, batch: Batch) -> float:
        """One training step on a prepared batch; returns the loss."""
        self.net.set_train(True)
        loss = self.step_cell(ms.Tensor(batch.x), ms.Tensor(batch.x_len), ms.Tensor(batch.y),
                              ms.Tensor(batch.y_len))
        return float(loss.asnumpy())

    def fit(self, data: SpeechData, *, epochs: int | None = None, max_steps: int | None = None,
            pad_multiple: int = 64, label_multiple: int = 32, fixed_frames: int | None = None,
            callback=None, progress: bool = True) -> TrainState:
        """Train until `epochs` are done or `max_steps` global steps; checkpoints every `save_every` steps."""
        from tqdm.auto import tqdm

        epochs = epochs or self.cfg.epochs
        log_path = self.out / ("metrics.csv" if self.world == 1 else f"metrics.rank{self.rank}.csv")
        new_log = not log_path.exists()
        log = open(log_path, "a", newline="")
        writer = csv.DictWriter(log, fieldnames=METRIC_FIELDS)
        if new_log:
            writer.writeheader()
        plain = not sys.stderr.isatty()
        try:
            while self.state.epoch < epochs:
                epoch = self.state.epoch
                lr = annealed_lr(self.cfg, epoch)
                self.optimizer.learning_rate.set_data(ms.Tensor(np.float32(lr)))
                batches = self.epoch_batches(data, epoch)
                bar = tqdm(total=len(batches), initial=self.state.step_in_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                           unit="step", disable=not progress or plain or self.rank != 0, dynamic_ncols=True)
                for k in range(self.state.step_in_epoch, len(batches)):
                    if max_steps is not None and self.state.global_step >= max_steps:
                        bar.close()
                        self.sync_batchnorm_stats()
                        return self.state
                    batch = data.batch(batches[k], pad_multiple=pad_multiple, label_multiple=label_multiple,
                                       fixed_frames=fixed_frames)
                    t0 = time.perf_counter()
                    loss = self.step(batch)
                    dt = time.perf_counter() - t0
                    self.state.global_step += 1
                    self.state.step_in_epoch = k + 1
                    audio = float(batch.x_len.sum()) * self.spect.window_stride
                    row = {"step": self.state.global_step, "epoch": epoch, "loss": round(loss, 5), "lr": lr,
                           "utterances": len(batch.ids), "audio_seconds": round(audio, 3),
                           "step_seconds": round(dt, 4), "audio_seconds_per_second": round(audio / dt, 3),
                           "padding_fraction": round(batch.padding_fraction, 4), "frames": batch.x.shape[3],
                           "rank": self.rank, "utterance_ids": " ".join(batch.ids)}
                    writer.writerow(row)
                    log.flush()
                    self.state.history.append(row)
                    bar.set_postfix(loss=f"{loss:.3f}", audio_s_per_s=f"{audio / dt:.1f}")
                    bar.update()
                    if plain and progress and self.rank == 0 and self.state.global_step % self.cfg.log_every == 0:
                        print(f"epoch {epoch + 1}/{epochs} step {k + 1}/{len(batches)} (global {self.state.global_step})"
                              f" loss {loss:.4f} lr {lr:.2e} {audio / dt:.1f} audio-s/s {dt:.2f} s/step", flush=True)
                    if callback is not None:
                        callback(self, row)
                    if self.cfg.save_every and self.state.global_step % self.cfg.save_every == 0 and self.rank == 0:
                        self.save()
                bar.close()
                self.state.epoch += 1
                self.state.step_in_epoch = 0
                self.sync_batchnorm_stats()  # every rank reaches this point, so the all-reduce cannot hang
                if self.rank == 0:
                    self.save()
        finally:
            log.close()
        return self.state

    def export_weights(self, path: str | Path) -> Path:
        """Weights only (no optimizer state): what a pretrained checkpoint or an evaluation needs."""
        params = [{"name": p.name, "data": p} for p in self.net.get_parameters()]
        return ckpt.save(path, params, {"model": to_dict(self.model_cfg), "spect": to_dict(self.spect)})


def write_run_config(out: Path, **configs) -> None:
    """config.json next to the checkpoints: how this run was made."""
    (out / "config.json").write_text(json.dumps({k: to_dict(v) for k, v in configs.items()}, indent=2))
