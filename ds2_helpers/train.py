"""Training: CTC loss, Adam (or LAMB, SGD) with weight decay, a learning-rate schedule, clipping, checkpoints,
resume, data parallel."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from ds2_helpers import checkpoint as ckpt
from ds2_helpers.config import ModelConfig, ParameterError, SpectConfig, TrainConfig, to_dict
from ds2_helpers.dataset import Batch, SpeechData, make_batches, padded_seconds, shard
from ds2_helpers.labels import BLANK_INDEX
from ds2_helpers.layerwise import LayerwiseStep
from ds2_helpers.memory import resident_gb
from ds2_helpers.micro_batch import AccumulatingStep
from ds2_helpers.model import DeepSpeech2, freeze
from ds2_helpers.optimizers import Update, build_optimizer, set_learning_rate
from ds2_helpers.schedules import annealed_lr as _annealed_lr, is_step_based, lr_at
from ds2_helpers.train_log import EpochProgress, MetricsLog, metrics_row


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
    """One optimisation step: loss and gradients, then the `Update`."""

    def __init__(self, loss_net: CTCLossNet, optimizer: nn.Optimizer, max_grad_norm: float, world: int = 1):
        super().__init__(auto_prefix=False)
        self.loss_net = loss_net
        self.weights = optimizer.parameters
        self.grad_fn = ms.value_and_grad(loss_net, None, self.weights)
        self.update = Update(optimizer, max_grad_norm, world)

    def construct(self, x, x_len, y, y_len):
        loss, grads = self.grad_fn(x, x_len, y, y_len)
        self.update(grads)
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


def dynamic_inputs(n_bins: int) -> tuple[ms.Tensor, ...]:
    """Placeholders for `Cell.set_inputs`: batch, frames and label length left open (None), so Graph mode
    compiles one graph for every batch shape. Each static shape would get its own graph, and each graph keeps
    its own buffers for the whole run: memory grew by gigabytes with every new shape (notebook 07)."""
    return (ms.Tensor(shape=[None, 1, n_bins, None], dtype=ms.float32), ms.Tensor(shape=[None], dtype=ms.int32),
            ms.Tensor(shape=[None, None], dtype=ms.int32), ms.Tensor(shape=[None], dtype=ms.int32))


def release_memory() -> None:
    """Give back the runtime memory MindSpore keeps for the batch shapes it has run. Without it every new batch
    shape (batch size x frames, even with one dynamic-shape graph) keeps its own buffers for the rest of the run
    (data/memory_shapes_reference_2core.json, notebook 07). It costs time: the next step allocates again, so
    `Trainer` calls it only when memory has grown by `TrainConfig.memory_slack` since the last release."""
    ms.ms_memory_recycle()


annealed_lr = _annealed_lr  # the per-epoch anneal, importable from here as before (schedules.lr_at's "anneal")


@dataclass
class TrainState:
    """Where training stands; stored inside every checkpoint so `--resume` continues at the same step."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Builds network, optimizer and step; runs epochs with logging and checkpoints in `out`.

    `conv_impl` overrides `model_cfg.conv` (MindSpore's Conv2d by default: our matmul convolution's step time
    grows run after run of steps, notebook 07); checkpoints record it. `loss_cell`: network -> loss cell taking
    (x, x_len, y, y_len), instead of CTCLossNet (ds2_helpers.distill.loss_cell)."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, out: str | Path, *,
                 spect: SpectConfig = SpectConfig(), pretrained: str | Path | None = None,
                 rank: int | None = None, world: int | None = None, conv_impl: str | None = None,
                 amp: str | None = None, loss_cell=None) -> None:
        set_mode(train_cfg.mode)
        if rank is None or world is None:
            rank, world = distributed_context()
        self.rank, self.world = rank, world
        set_seed(train_cfg.seed)
        self.cfg, self.spect = train_cfg, spect
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.net = DeepSpeech2(model_cfg, conv_impl=conv_impl)
        self.model_cfg = self.net.cfg  # with the convolution actually used
        self.pretrained_meta = ckpt.load_into(self.net, pretrained) if pretrained else None
        self.frozen = freeze(self.net, conv=train_cfg.freeze_conv, rnn_layers=train_cfg.freeze_rnn_layers)
        self.loss_net = (loss_cell or CTCLossNet)(self._with_amp(self.net, amp))  # loss_cell: e.g. distill
        self.optimizer = build_optimizer(train_cfg, self.net.trainable_params())
        dynamic = train_cfg.dynamic_shapes and train_cfg.mode.lower() == "graph"
        if dynamic and model_cfg.rnn_type.upper() == "GRU":
            raise ParameterError("rnn_type GRU in Graph mode: MindSpore 2.10's CPU GRU loops over the time steps in "
                                 "Python, which one graph for every length cannot unroll ('Stack' of 0 inputs); use "
                                 "mode 'pynative', or for short inputs only TrainConfig(dynamic_shapes=False) "
                                 "(a graph per input shape: at 12.7 s it exceeded MindSpore's call depth)")
        if train_cfg.layerwise:
            self.step_cell = LayerwiseStep(self.loss_net, self.optimizer, train_cfg.max_grad_norm, world, dynamic)
        elif train_cfg.micro_batch:
            self.step_cell = AccumulatingStep(self.loss_net, self.optimizer, train_cfg.max_grad_norm,
                                              train_cfg.micro_batch, world,
                                              dynamic_inputs(model_cfg.n_bins) if dynamic else None)
        else:
            self.step_cell = TrainStep(self.loss_net, self.optimizer, train_cfg.max_grad_norm, world)
            if dynamic:
                self.step_cell.set_inputs(*dynamic_inputs(model_cfg.n_bins))
        self.state = TrainState()
        self.rss_gb, self.released, self._rss_floor = 0.0, False, None
        self.data_info: dict = {}  # the manifest and batching of the run (cmd_train); checkpoints record it
        self.resumed_from: Path | None = None
        self.resumed_meta: dict = {}
        self._saved_step: int | None = None
        self.steps_total: int | None = None  # a step-based schedule's length (fit sets it)

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
        """Atomic checkpoint with weights, optimizer state and TrainState; prunes to the last k."""
        path = Path(path) if path else self.out / f"ds2-step{self.state.global_step:07d}.ckpt"
        meta = {"state": {k: v for k, v in self.state.__dict__.items() if k != "history"},
                "model": to_dict(self.model_cfg), "train": to_dict(self.cfg), "spect": to_dict(self.spect),
                "data": self.data_info}
        ckpt.save(path, self._params(), meta)
        self._saved_step = self.state.global_step
        if path.parent == self.out:
            ckpt.prune(self.out, self.cfg.keep_last)
        return path

    def _newest_readable(self) -> tuple[Path, dict, dict] | None:
        """The newest checkpoint in `out` that reads; an unreadable one (a kill or a full disk mid-write on a
        filesystem without atomic rename, a damaged disk) is renamed `*.corrupt` and the previous one used."""
        import sys

        for path in reversed(ckpt.checkpoints_in(self.out)):
            try:
                arrays, meta = ckpt.read(path)
            except ckpt.CheckpointError as exc:
                kept = path.with_name(path.name + ".corrupt")
                path.rename(kept)
                print(f"warning: {path} cannot be read ({str(exc).split(';')[0].split(': ', 1)[-1]}); kept as "
                      f"{kept.name}, resuming from the checkpoint before it", file=sys.stderr, flush=True)
                continue
            return path, arrays, meta
        return None

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore weights, optimizer moments and position from `path` or the newest checkpoint in `out`."""
        if path is None:
            found = self._newest_readable()
            if found is None:
                return False
            path, arrays, meta = found
        else:
            arrays, meta = ckpt.read(path)
        if "state" not in meta:
            raise ckpt.CheckpointError(f"{path}: has no training state to resume from; use --pretrained for "
                                       "weights-only checkpoints")
        own = {p["name"]: p for p in self._params()}
        saved_optimizer = meta.get("train", {}).get("optimizer", "adam")  # older checkpoints: Adam
        if saved_optimizer != self.cfg.optimizer:
            # another update rule: its state means nothing here, the weights and position carry over (the CLI
            # refuses this unless --allow-changes: run_folder.identity)
            import sys

            network = {p.name for p in self.net.get_parameters()}
            own = {n: p for n, p in own.items() if n in network}
            print(f"warning: {path} was trained with {saved_optimizer}, this run uses {self.cfg.optimizer}: "
                  "weights and position resumed, optimizer state starts afresh", file=sys.stderr, flush=True)
        missing = [n for n in own if n not in arrays]
        if missing:
            from ds2_helpers.run_folder import differences

            saved = {k: v for k, v in meta.get("model", {}).items() if k != "conv"}
            differ = differences(saved, to_dict(self.model_cfg))
            why = ("the network differs - " + "; ".join(differ) + " (use the checkpoint's --preset)") if differ \
                else "different freeze options?"
            raise ckpt.CheckpointError(f"{path}: cannot resume, missing {missing[:5]}: {why}")
        for name, p in own.items():
            if tuple(arrays[name].shape) != tuple(p["data"].shape):
                raise ckpt.CheckpointError(f"{path}: {name} has shape {arrays[name].shape}, network wants "
                                           f"{tuple(p['data'].shape)}")
            p["data"].set_data(ms.Tensor(arrays[name]))
        self.state = TrainState(**meta["state"])
        self.resumed_from, self.resumed_meta, self._saved_step = Path(path), meta, self.state.global_step
        return True

    # ---- training ----------------------------------------------------------------------------
    def epoch_batches(self, data: SpeechData, epoch: int, pad_multiple: int = 64) -> list[list[int]]:
        """This rank's batches for an epoch (deterministic in seed and epoch, so resume lines up)."""
        return epoch_batches(self.cfg, self.spect, data, epoch, self.rank, self.world, pad_multiple)

    def step(self, batch: Batch) -> float:
        """One training step on a prepared batch; returns the loss."""
        self.net.set_train(True)
        if isinstance(self.step_cell, (AccumulatingStep, LayerwiseStep)):
            loss = self.step_cell.run(batch)
        else:
            loss = float(self.step_cell(ms.Tensor(batch.x), ms.Tensor(batch.x_len), ms.Tensor(batch.y),
                                        ms.Tensor(batch.y_len)).asnumpy())
        self.rss_gb = resident_gb()
        policy = self.cfg.release_memory
        grown = self._rss_floor is not None and self.rss_gb > self._rss_floor * (1 + self.cfg.memory_slack)
        self.released = policy == "always" or (policy == "auto" and grown)
        if self.released:
            release_memory()
            self._rss_floor = None  # the next step, with one shape's memory, sets the new floor
        elif self._rss_floor is None:
            self._rss_floor = self.rss_gb
        return loss

    def schedule_length(self, data: SpeechData, epochs: int, pad_multiple: int = 64) -> int | None:
        """Steps of a step-based schedule: `schedule_steps`, else epochs x this rank's batches per epoch
        (None for the per-epoch schedules, which need no length)."""
        if not is_step_based(self.cfg.schedule):
            return None
        return self.cfg.schedule_steps or epochs * len(self.epoch_batches(data, 0, pad_multiple))

    def fit(self, data: SpeechData, *, epochs: int | None = None, max_steps: int | None = None,
            pad_multiple: int = 64, label_multiple: int = 32, fixed_frames: int | None = None,
            callback=None, progress: bool = True, checkpoint_at_stop: bool = False) -> TrainState:
        """Train until `epochs` are done or `max_steps` global steps; checkpoints every `save_every` steps and
        after each epoch; `checkpoint_at_stop`: also where `max_steps` stops it (so a resume starts there)."""
        epochs = epochs or self.cfg.epochs
        self.steps_total = self.schedule_length(data, epochs, pad_multiple)
        per_step = self.steps_total is not None
        log_path = self.out / ("metrics.csv" if self.world == 1 else f"metrics.rank{self.rank}.csv")
        with MetricsLog(log_path, until_step=self.state.global_step) as log:
            while self.state.epoch < epochs:
                epoch = self.state.epoch
                if not per_step:  # "anneal" / "constant": one rate per epoch, set before its first step
                    lr = lr_at(self.cfg, self.state.global_step, epoch)
                    set_learning_rate(self.optimizer, lr)
                batches = self.epoch_batches(data, epoch, pad_multiple)
                shown = EpochProgress(epoch, epochs, len(batches), self.state.step_in_epoch,
                                      enabled=progress and self.rank == 0, log_every=self.cfg.log_every)
                for k in range(self.state.step_in_epoch, len(batches)):
                    if max_steps is not None and self.state.global_step >= max_steps:
                        shown.close()
                        self.sync_batchnorm_stats()
                        if checkpoint_at_stop and self.rank == 0 and self._saved_step != self.state.global_step:
                            self.save()
                        return self.state
                    batch = data.batch(batches[k], pad_multiple=pad_multiple, label_multiple=label_multiple,
                                       fixed_frames=fixed_frames, augment=self.cfg.augment, seed=self.cfg.seed,
                                       epoch=epoch)  # augmentation: training only, deterministic for resume
                    if per_step:
                        lr = lr_at(self.cfg, self.state.global_step, epoch, self.steps_total)
                        set_learning_rate(self.optimizer, lr)
                    t0 = time.perf_counter()
                    loss = self.step(batch)
                    dt = time.perf_counter() - t0
                    self.state.global_step += 1
                    self.state.step_in_epoch = k + 1
                    row = metrics_row(step=self.state.global_step, epoch=epoch, loss=loss, lr=lr, batch=batch,
                                      step_seconds=dt, window_stride=self.spect.window_stride, rss_gb=self.rss_gb,
                                      released=self.released, rank=self.rank)
                    log.write(row)
                    self.state.history.append(row)
                    shown.update(row, k + 1)
                    if callback is not None:
                        callback(self, row)
                    if self.cfg.save_every and self.state.global_step % self.cfg.save_every == 0 and self.rank == 0:
                        self.save()
                shown.close()
                self.state.epoch += 1
                self.state.step_in_epoch = 0
                self.sync_batchnorm_stats()  # every rank reaches this point, so the all-reduce cannot hang
                if self.rank == 0:
                    self.save()
        return self.state

    def export_weights(self, path: str | Path) -> Path:
        """Weights only (no optimizer state): what a pretrained checkpoint or an evaluation needs."""
        params = [{"name": p.name, "data": p} for p in self.net.get_parameters()]
        return ckpt.save(path, params, {"model": to_dict(self.model_cfg), "spect": to_dict(self.spect)})


def epoch_batches(cfg: TrainConfig, spect: SpectConfig, data: SpeechData, epoch: int, rank: int = 0,
                  world: int = 1, pad_multiple: int = 64) -> list[list[int]]:
    """One rank's batches for an epoch: length buckets of `batch_size` utterances or `batch_seconds` padded
    seconds, SortaGrad order in the first epoch, shuffled batches after (deterministic in seed and epoch).
    With speed perturbation the `batch_seconds` budget counts every utterance at its slowest speed
    (`AugmentConfig.max_stretch`: 0.9 makes it 1/0.9 as long), so no augmented batch exceeds it."""
    stretch = cfg.augment.max_stretch
    batches = make_batches(data.durations, cfg.batch_size, batch_seconds=cfg.batch_seconds,
                           padded=lambda s: padded_seconds(s * stretch, pad_multiple, spect.window_stride),
                           epoch=epoch, seed=cfg.seed, order="bucketed", sortagrad=cfg.sortagrad)
    return shard(batches, rank, world)


def write_run_config(out: Path, **configs) -> None:
    """config.json next to the checkpoints: how this run was made (earlier starts and resumes kept in it)."""
    from ds2_helpers.run_folder import write_config

    write_config(out, {k: (v if isinstance(v, (dict, list, str, type(None))) else to_dict(v))
                       for k, v in configs.items()})
