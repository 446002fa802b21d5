"""Gradient accumulation: one update from a batch run as several smaller micro-batches.

A training step's memory grows with the utterances it runs at once (the LSTM's kept gates and states, oneDNN's
buffers: ds2_helpers.step_profile), but the update only needs the batch's mean gradient. Running the batch in
micro-batches and summing their gradients, each weighted by its share of the batch, gives the same mean gradient
(the loss is a mean over utterances) with the memory of one micro-batch. What changes: BatchNorm's batch statistics
come from each micro-batch, and its moving averages take one update per micro-batch; the matmuls are smaller, so
each utterance costs more time (measured by `bench`, TrainConfig.micro_batch)."""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from ds2_helpers.dataset import Batch
from ds2_helpers.optimizers import Update


def split(batch: Batch, micro_batch: int) -> list[tuple[Batch, float]]:
    """(micro-batch, its share of the batch's utterances) for each run of `micro_batch` utterances. Each keeps the
    batch's padding of frames and labels: every shape MindSpore sees keeps its own memory (ds2_helpers.train), so
    the micro-batches add no shapes but the last, shorter one."""
    n = batch.x.shape[0]
    out = []
    for start in range(0, n, micro_batch):
        part = slice(start, min(start + micro_batch, n))
        out.append((Batch(batch.x[part], batch.x_len[part], batch.y[part], batch.y_len[part], batch.ids[part]),
                    (part.stop - part.start) / n))
    return out


class _Accumulate(nn.Cell):
    """acc <- acc + share * grad (acc <- share * grad when `keep` is 0: the batch's first micro-batch), for every
    trainable parameter; returns the micro-batch's loss."""

    def __init__(self, loss_net: nn.Cell, weights, accumulators) -> None:
        super().__init__(auto_prefix=False)
        self.loss_net = loss_net
        self.weights = weights
        self.accumulators = accumulators
        self.grad_fn = ms.value_and_grad(loss_net, None, weights)
        self.hyper_map = ops.HyperMap()

    def construct(self, x, x_len, y, y_len, share, keep):
        loss, grads = self.grad_fn(x, x_len, y, y_len)
        self.hyper_map(ops.partial(_fold, share, keep), self.accumulators, grads)
        return loss


_MUL_NO_NAN = ops.MulNoNan()


def _fold(share, keep, acc, grad):
    # acc x keep, but 0 where keep is 0 even if acc holds a NaN or an inf (acc * 0 would carry it over). Not
    # ops.where(keep > 0, acc, 0): Graph mode folds the broadcast zero into a parameter-sized constant for every
    # accumulator - 2.4 GB of the paper model's memory from the first compile on (ds2_helpers.micro_batch's tests)
    return ops.assign(acc, _MUL_NO_NAN(acc, keep) + grad * share)


class _Apply(nn.Cell):
    """The `Update` (all-reduce, clipping, the optimizer) from the accumulated gradients."""

    def __init__(self, update: Update, accumulators) -> None:
        super().__init__(auto_prefix=False)
        self.update = update
        self.accumulators = accumulators

    def construct(self):
        return ops.depend(self.accumulators[0].sum(), self.update(self.accumulators))  # a value that waits for it


class AccumulatingStep:
    """A training step run in micro-batches of `micro_batch` utterances; called like TrainStep, on numpy arrays
    through `run(batch)`. The accumulators (one float32 copy of the trainable parameters) are not checkpointed:
    a step is either whole or not taken."""

    def __init__(self, loss_net: nn.Cell, optimizer: nn.Optimizer, max_grad_norm: float, micro_batch: int,
                 world: int = 1, dynamic_inputs: tuple | None = None) -> None:
        weights = optimizer.parameters
        self.accumulators = weights.clone(prefix="grad_accumulator", init="zeros")
        self.accumulate = _Accumulate(loss_net, weights, self.accumulators)
        self.apply = _Apply(Update(optimizer, max_grad_norm, world), self.accumulators)
        self.micro_batch = micro_batch
        if dynamic_inputs is not None:
            scalar = ms.Tensor(shape=[], dtype=ms.float32)
            self.accumulate.set_inputs(*dynamic_inputs, scalar, scalar)

    def run(self, batch: Batch) -> float:
        """One update from the whole batch; returns the batch's mean loss."""
        loss = 0.0
        for k, (part, share) in enumerate(split(batch, self.micro_batch)):
            value = self.accumulate(ms.Tensor(part.x), ms.Tensor(part.x_len), ms.Tensor(part.y),
                                    ms.Tensor(part.y_len), ms.Tensor(share, ms.float32),
                                    ms.Tensor(0.0 if k == 0 else 1.0, ms.float32))
            loss += share * float(value.asnumpy())
        self.apply().asnumpy()  # waits for the update
        return loss

