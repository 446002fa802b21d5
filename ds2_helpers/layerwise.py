"""A training step whose backward pass runs one layer at a time, each recomputed from its kept input.

One graph for the whole step keeps, until the backward pass reaches it, everything each layer's backward needs:
for every LSTM the kernel's `reserve` (15.1 H floats per frame and direction, ds2_helpers.step_profile) and more.
On MindSpore 2.10's CPU backend recomputation inside that graph gave little of it back (`Cell.recompute()` on the
RNN layers: 16.1 -> 13.6 GB at batch 16, README; a custom `bprop` per layer, probed: the RNN stack 9.9 -> 8.4 GB).
Here the step is a short program of separate graphs instead:

1. forward: the convolution block (training mode: its BatchNorm statistics and moving averages, as in one graph),
   then each RNN layer with the LSTM kernel in inference mode - it writes no reserve - keeping only each layer's
   input;
2. the dense layer and the CTC loss, forward and backward: the loss and its gradient at the RNN stack's output;
3. each RNN layer from the top: its forward again in training mode, then its backward, giving the gradient at
   its input and its weights' gradients; the layer's buffers are freed before the next one starts;
4. the convolution block the same way (its moving averages restored afterwards, so they take one update a step);
5. the `optimizers.Update` (all-reduce, clipping, optimizer) from the gradients.

The gradients are those of one graph (tests/test_layerwise.py compares them), at the cost of a second forward pass
of each layer. The layers' weights enter their graphs as plain tensors: passed as Parameters, each layer's distinct
Parameters made MindSpore keep about 1 GB more per backward call (probe: 1,024 units, 16 x 636 frames). The backward
pass stops at the lowest layer that trains: with `TrainConfig.freeze_conv` the frozen layers below it are not
recomputed; frozen RNN layers under a convolution block that trains are (the gradient has to pass through them).
"""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from ds2_helpers.config import ParameterError
from ds2_helpers.dataset import Batch
from ds2_helpers.model import DeepSpeech2
from ds2_helpers.optimizers import Update

#: One bidirectional layer's weights, in the order its graphs take them.
WEIGHTS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
           "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse")


class Front(nn.Cell):
    """`DeepSpeech2.front` as a graph of its own: spectrogram [N, 1, bins, T], frame lengths -> RNN input."""

    def __init__(self, net: DeepSpeech2) -> None:
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, x, x_len):
        return self.net.front(x, x_len, self.net.output_lengths(x_len))


class BiLSTM(nn.Cell):
    """One layer of `model.BatchRNN` (both directions, the reverse one from each utterance's true end, summed)
    from its weights given as inputs. `training=False` runs MindSpore's LSTM kernel in inference mode (no
    reserve, nothing kept for a backward pass)."""

    def __init__(self, input_size: int, hidden_size: int, training: bool) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.lstm = ops.LSTM(input_size, hidden_size, 1, True, False, 0.0)
        if not training:
            self.lstm.add_prim_attr("is_training", False)  # the CPU kernel's switch (oneDNN forward_inference)
        self.reverse = ops.ReverseSequence(seq_dim=0, batch_dim=1)

    def construct(self, x, lengths, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r):
        h0 = ops.zeros((1, x.shape[1], self.hidden_size), x.dtype)
        fwd = self.lstm(x, h0, h0, _packed(w_ih, w_hh, b_ih, b_hh))[0]
        bwd = self.lstm(self.reverse(x, lengths), h0, h0, _packed(w_ih_r, w_hh_r, b_ih_r, b_hh_r))[0]
        return fwd + self.reverse(bwd, lengths)


def _packed(w_ih, w_hh, b_ih, b_hh):
    """The CPU kernel's flat weight: W_ih, W_hh, then one bias (b_ih + b_hh), as nn.LSTM packs it on CPU."""
    return ops.concat((w_ih.reshape(-1, 1, 1), w_hh.reshape(-1, 1, 1), (b_ih + b_hh).reshape(-1, 1, 1)))


class _Dot(nn.Cell):
    """sum(cell(*inputs) * given), whose gradient in the inputs is the cell's backward pass fed `given`. (Not
    GradOperation's `sens_param`: MindSpore 2.10 refuses a gradient fed in with open dimensions.)"""

    def __init__(self, cell: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.cell = cell

    def construct(self, *args):
        *inputs, given = args
        return (self.cell(*inputs) * ops.stop_gradient(given)).sum()


class _Backward(nn.Cell):
    """Gradients of a layer's inputs (its input, lengths, weights) given the gradient at its output; the
    layer's forward pass is recomputed inside."""

    def __init__(self, cell: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.dot = _Dot(cell)
        self.grad = ops.GradOperation(get_all=True)

    def construct(self, *args):
        return self.grad(self.dot)(*args)[:-1]


class _FrontBackward(nn.Cell):
    """Gradients of the convolution block's weights given the gradient at its output."""

    def __init__(self, front: Front, weights) -> None:
        super().__init__(auto_prefix=False)
        self.dot = _Dot(front)
        self.weights = weights
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, x, x_len, given):
        return self.grad(self.dot, self.weights)(x, x_len, given)


class Head(nn.Cell):
    """Dense layer + CTC loss from the RNN stack's output (`loss_net`'s, e.g. train.CTCLossNet)."""

    def __init__(self, loss_net: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.loss_net = loss_net

    def construct(self, h, out_len, y, y_len):
        return self.loss_net.per_utterance(self.loss_net.net.fc(h), out_len, y, y_len).mean()


class _HeadBackward(nn.Cell):
    """The loss, its gradient at the RNN stack's output and the dense layer's weight gradients."""

    def __init__(self, head: Head, weights) -> None:
        super().__init__(auto_prefix=False)
        self.grad_fn = ms.value_and_grad(head, grad_position=0, weights=weights)

    def construct(self, h, out_len, y, y_len):
        return self.grad_fn(h, out_len, y, y_len)


class LayerwiseStep:
    """A training step (`run(batch)` -> loss, like micro_batch.AccumulatingStep) whose backward pass recomputes
    one layer at a time: the memory of the largest layer's forward + backward instead of every layer's at once."""

    def __init__(self, loss_net: nn.Cell, optimizer: nn.Optimizer, max_grad_norm: float, world: int = 1,
                 dynamic: bool = True) -> None:
        net = getattr(loss_net, "net", None)  # train.CTCLossNet's; mixed precision wraps it, distillation has none
        if not isinstance(net, DeepSpeech2) or not hasattr(loss_net, "per_utterance") or not net.RNN.is_lstm:
            raise ParameterError("layerwise steps train the plain network with the CTC loss in float32: no mixed "
                                 "precision, distillation loss or GRU (the LSTM kernel's inference mode is what "
                                 "they use)")
        self.net = net
        trainable = {p.name for p in optimizer.parameters}
        hidden, n_bins = net.cfg.hidden_size, net.cfg.n_bins
        self.layers = []  # each layer's 8 Parameters (WEIGHTS), bottom to top
        for lstm in net.RNN.lstms:
            params = {p.name.rsplit(".", 1)[-1]: p for p in lstm.get_parameters()}
            self.layers.append([params[w] for w in WEIGHTS])
        self.rnn_trainable = [all(p.name in trainable for p in ws) for ws in self.layers]
        self.conv_weights = [p for p in net.conv.trainable_params() if p.name in trainable]
        self.moving = [p for p in net.conv.get_parameters() if "moving_" in p.name]
        self.front = Front(net)
        self.forward_cells, self.backward_cells = {}, {}
        for size in sorted({lstm.w_ih_list[0].shape[1] for lstm in net.RNN.lstms}):
            self.forward_cells[size] = BiLSTM(size, hidden, training=False)
            self.backward_cells[size] = _Backward(BiLSTM(size, hidden, training=True))
        self.fc_weights = [p for p in net.fc.trainable_params() if p.name in trainable]
        self.head = _HeadBackward(Head(loss_net), ms.ParameterTuple(self.fc_weights))
        self.front_backward = _FrontBackward(self.front, ms.ParameterTuple(self.conv_weights)) \
            if self.conv_weights else None
        self.lowest = self._lowest_trainable()
        self.update = Update(optimizer, max_grad_norm, world)
        self.order = [p.name for p in optimizer.parameters]
        if dynamic:
            self._open_shapes(n_bins, hidden)

    def _open_shapes(self, n_bins: int, hidden: int) -> None:
        """One graph for every batch shape (train.dynamic_inputs: a graph per shape keeps its own memory)."""
        t = lambda *shape, dtype=ms.float32: ms.Tensor(shape=list(shape), dtype=dtype)  # noqa: E731
        lengths = t(None, dtype=ms.int32)
        self.front.set_inputs(t(None, 1, n_bins, None), lengths)
        if self.front_backward is not None:
            feats = self.net.conv.channels * self.net.conv.f2
            self.front_backward.set_inputs(t(None, 1, n_bins, None), lengths, t(None, None, feats))
        self.head.set_inputs(t(None, None, hidden), lengths, t(None, None, dtype=ms.int32), lengths)
        for size, cell in self.forward_cells.items():
            weights = (t(4 * hidden, size), t(4 * hidden, hidden), t(4 * hidden), t(4 * hidden)) * 2
            cell.set_inputs(t(None, None, size), lengths, *weights)
            self.backward_cells[size].set_inputs(t(None, None, size), lengths, *weights, t(None, None, hidden))

    @staticmethod
    def _values(params):
        """The weights as tensors of their own (see the module's docstring)."""
        return [ms.Tensor(p.asnumpy()) for p in params]

    def run(self, batch: Batch) -> float:
        """One update from the batch; returns its mean loss."""
        loss, grads = self.gradients(batch)
        # mutable: a tuple of tensors is otherwise compiled in as constants, and the update recompiled every step
        self.update(ms.mutable(tuple(grads[name] for name in self.order)))
        return loss

    def gradients(self, batch: Batch) -> tuple[float, dict]:
        """The batch's mean loss and the gradient of every trainable weight, by name."""
        self.net.set_train(True)
        x, x_len = ms.Tensor(batch.x), ms.Tensor(batch.x_len)
        out_len = self.net.output_lengths(x_len)
        h = self._free(self.front(x, x_len))
        inputs = []
        for ws in self.layers:
            inputs.append(h)
            h = self._free(self.forward_cells[h.shape[2]](h, out_len, *self._values(ws)))
        loss, (dh, fc_grads) = self._free(self.head(h, out_len, ms.Tensor(batch.y), ms.Tensor(batch.y_len)))
        grads = dict(zip([p.name for p in self.fc_weights], fc_grads))
        for k in range(len(self.layers) - 1, max(self.lowest, 0) - 1, -1):
            ws, h = self.layers[k], inputs[k]
            dx, _, *dws = self._free(self.backward_cells[h.shape[2]](h, out_len, *self._values(ws), dh))
            if self.rnn_trainable[k]:
                grads.update(zip([p.name for p in ws], dws))
            dh = dx
        if self.lowest == -1:  # the convolution block trains: its forward again, its moving averages kept as they were
            saved = [p.value().copy() for p in self.moving]
            grads.update(zip([p.name for p in self.conv_weights], self._free(self.front_backward(x, x_len, dh))))
            for p, value in zip(self.moving, saved):
                ops.assign(p, value)
        return float(loss.asnumpy()), grads

    @staticmethod
    def _free(result):
        """`result` once its graph has run and the memory MindSpore kept for that graph is given back: each graph
        keeps its own buffers (paper, 16 x 12.7 s: a 10.2 GB peak without this in a probe, 7.4 GB with it in
        data/layerwise_reference_2core.json). It discards the compiled graphs too, so every graph compiles again
        on its next call: paper at batch 4 x 6.4 s, 14 compilations and about 6 s of a 21 s step (probe). Giving
        the memory back only between different graphs (the RNN layers of one size run one after another) cut
        that to 8 compilations and 4.9 s, but raised the peak at 16 x 12.7 s from 6.5 to 7.5 GB, for no
        measurable change in the step's time (probe, one process each)."""
        ms.ms_memory_recycle()
        return result

    def _lowest_trainable(self) -> int:
        """-1 if the convolution block trains (the backward pass goes all the way down), else the lowest
        trainable RNN layer (len(layers) if none)."""
        if self.conv_weights:
            return -1
        trainable = [k for k, ok in enumerate(self.rnn_trainable) if ok]
        return trainable[0] if trainable else len(self.layers)
