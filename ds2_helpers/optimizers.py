"""The optimizer a TrainConfig names, and LAMB written out for the CPU.

MindSpore's `nn.Lamb` calls the fused `Lamb` primitive, which has no CPU kernel in MindSpore 2.10 ("Unsupported
op [Lamb] on CPU"; the class is also marked deprecated), so `Lamb` below is the same update in ordinary tensor
operations, checked against NumPy in tests/test_optimizers.py. Adam is MindSpore's `nn.Adam` with the arguments
training always used; SGD is `nn.SGD` with momentum (`nn.Momentum` is marked deprecated in 2.x).

Weight decay: `nn.Adam` and `nn.SGD` add `weight_decay * w` to the gradient (L2); LAMB adds it to the update
before the trust ratio, as its paper does. All three skip BatchNorm's beta and gamma (nn.Optimizer's filter).

`Update` is what every training step does with its gradients: average them over data-parallel workers, clip their
global norm (`clip_by_global_norm`, ours: MindSpore's held three gradient-sized copies), apply the optimizer."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from ds2_helpers.config import OPTIMIZERS, ParameterError, TrainConfig

_lamb_update = ops.MultitypeFuncGraph("lamb_update")


@_lamb_update.register("Number", "Number", "Number", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                       "Tensor", "Tensor", "Bool")
def _lamb_one(beta1, beta2, eps, lr, weight_decay, bias1, bias2, param, m, v, grad, decay):
    """One parameter tensor's LAMB step (You et al. 2019, Algorithm 2):
    m, v = Adam's moments; r = m_hat / (sqrt(v_hat) + eps) + wd * w; w -= lr * (||w|| / ||r||) * r."""
    m_new = beta1 * m + (1.0 - beta1) * grad
    v_new = beta2 * v + (1.0 - beta2) * grad * grad
    update = (m_new / bias1) / (ops.sqrt(v_new / bias2) + eps)
    if decay:
        update = update + weight_decay * param
    w_norm, u_norm = ops.norm(param), ops.norm(update)
    # trust ratio ||w|| / ||update||; 1 where either is 0 (a zero-initialised bias, a zero update)
    trust = ops.where((w_norm > 0) & (u_norm > 0), w_norm / ops.maximum(u_norm, 1e-30), ops.ones_like(w_norm))
    ops.assign(m, m_new)
    ops.assign(v, v_new)
    ops.assign(param, param - lr * trust * update)
    return True


class Lamb(nn.Optimizer):
    """LAMB (layer-wise adaptive moments) in plain operations, so it runs on the CPU; state: `lamb_m.*`, `lamb_v.*`
    (the names `nn.Lamb` uses) and the optimizer's `global_step` (the bias corrections need it)."""

    def __init__(self, params, learning_rate, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-6,
                 weight_decay: float = 0.0) -> None:
        super().__init__(learning_rate, params, weight_decay)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.moments1 = self._parameters.clone(prefix="lamb_m", init="zeros")
        self.moments2 = self._parameters.clone(prefix="lamb_v", init="zeros")
        self.hyper_map = ops.HyperMap()

    def construct(self, gradients):
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        t = self.global_step.astype(ms.float32)
        bias1 = 1.0 - ops.pow(self.beta1, t)
        bias2 = 1.0 - ops.pow(self.beta2, t)
        return self.hyper_map(ops.partial(_lamb_update, self.beta1, self.beta2, self.eps, lr, self.weight_decay,
                                          bias1, bias2),
                              self._parameters, self.moments1, self.moments2, gradients, self.decay_flags)


def build_optimizer(cfg: TrainConfig, params) -> nn.Optimizer:
    """The optimizer `cfg.optimizer` names over `params`, its rate a Parameter that `set_learning_rate` changes."""
    lr = ms.Tensor(np.float32(cfg.learning_rate))
    if cfg.optimizer == "adam":  # exactly the arguments training used before there was a choice
        return nn.Adam(params, learning_rate=lr, beta1=cfg.betas[0], beta2=cfg.betas[1], eps=cfg.eps,
                       weight_decay=cfg.weight_decay)
    if cfg.optimizer == "lamb":
        return Lamb(params, lr, beta1=cfg.betas[0], beta2=cfg.betas[1], eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return nn.SGD(params, learning_rate=lr, momentum=float(cfg.momentum), weight_decay=cfg.weight_decay,
                      nesterov=bool(cfg.nesterov))
    raise ParameterError(f"optimizer {cfg.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")


_square_sum = ops.MultitypeFuncGraph("square_sum")
_scaled = ops.MultitypeFuncGraph("scaled")


@_square_sum.register("Tensor")
def _square_sum_one(grad):
    return ops.reduce_sum(ops.square(grad))


@_scaled.register("Tensor", "Tensor")
def _scaled_one(scale, grad):
    return grad * scale


def clip_by_global_norm(grads, max_norm: float, hyper_map=None):
    """`grads` scaled by max_norm / max(global norm, max_norm): the values of `ops.clip_by_global_norm`, which
    computes each clipped gradient as `x * clip_norm / global_norm` followed by a cast - two temporaries and a copy
    the size of every gradient. On the paper model at batch 2 x 12.7 s its step peaked 1.2 GB above this one
    (and ran slower; tests/test_optimizers.py measures it). One multiply by a scalar here."""
    hyper_map = hyper_map or ops.HyperMap()
    norm = ops.sqrt(ops.addn(hyper_map(_square_sum, grads)))
    return hyper_map(ops.partial(_scaled, max_norm / ops.maximum(norm, max_norm)), grads)


class Update(nn.Cell):
    """The end of every training step, fed the batch's gradients: all-reduce (data parallel), global-norm
    clipping, the optimizer's update. train.TrainStep, micro_batch.AccumulatingStep and the step profile use it."""

    def __init__(self, optimizer: nn.Optimizer, max_grad_norm: float, world: int = 1):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self.reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=world) if world > 1 else None
        self.hyper_map = ops.HyperMap()

    def construct(self, grads):
        if self.reducer is not None:
            grads = self.reducer(grads)
        return self.optimizer(clip_by_global_norm(grads, self.max_grad_norm, self.hyper_map))


def set_learning_rate(optimizer: nn.Optimizer, lr: float) -> None:
    """Set the rate of the next steps. `ops.assign`, not `Parameter.set_data`: in PyNative mode the optimizer's
    compiled update kept the old value after `set_data` (weights still moved at rate 0), in Graph mode both work."""
    ops.assign(optimizer.learning_rate, ms.Tensor(np.float32(lr)))

