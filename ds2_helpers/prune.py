"""Pruning: zero the smallest weights (unstructured, masks kept through a fine-tune) or drop whole LSTM units
(structured: a narrower network that really is smaller), save either as a normal checkpoint, and measure both.

What to expect from `measure` (timed round-robin, so other load on the host hits every variant alike):
MindSpore's CPU LSTM and Dense kernels are dense matrix products - a zero costs what any other number costs - so
unstructured sparsity changes the CER but not the step or inference time, and the checkpoint stores the zeros
too (the same size). Structured pruning removes rows and columns: the network, its checkpoint and its time
shrink, the time by less than the LSTM arithmetic does (the convolutions are untouched, `architecture_table`
shows their share), and the CER pays for the capacity taken away until fine-tuning wins part of it back.

Arrays are the network's own parameter names (ds2_helpers.checkpoint): per RNN layer L and direction
(`l0`, `l0_reverse`) `RNN.lstms.L.weight_ih_l0` [G*H, in], `weight_hh_l0` [G*H, H], `bias_ih_l0`, `bias_hh_l0`
[G*H] with G = 4 gate blocks (i, f, g, o) for an LSTM, 3 for a GRU; the two directions are summed, so hidden unit
j is one column of the next layer's `weight_ih` (or of the dense `fc.module.weight` [29, H]). There is no
BatchNorm between the RNN layers (only in the convolutions, which pruning leaves alone).
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ds2_helpers.config import ModelConfig, ParameterError, SpectConfig, to_dict

DENSE = "fc.module.weight"
DIRECTIONS = ("l0", "l0_reverse")
_RNN_MATRIX = re.compile(r"^RNN\.lstms\.(\d+)\.weight_(ih|hh)_l0(_reverse)?$")


def prunable(arrays: dict[str, np.ndarray]) -> list[str]:
    """Names of the matrices magnitude pruning touches: every RNN input-hidden and hidden-hidden weight (both
    directions) and the dense layer's weight; no biases, no convolutions, no BatchNorm."""
    return [k for k in arrays if _RNN_MATRIX.match(k) or k == DENSE]


def check_sparsity(sparsity: float, what: str = "--sparsity") -> float:
    """The fraction to remove, 0 <= s < 1, or ParameterError naming the argument."""
    if not 0 <= sparsity < 1:
        raise ParameterError(f"{what} {sparsity:g}: use a fraction from 0 (nothing removed) to below 1 "
                             "(e.g. 0.5 removes half)")
    return float(sparsity)


def magnitude_masks(arrays: dict[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    """Per prunable matrix, a 0/1 mask [same shape] that zeroes its round(sparsity x size) smallest |w|.

    Each matrix loses the same share (per-matrix, not global: the small dense layer is not emptied by the large
    LSTM ones); ties at the threshold are broken by position, so exactly that many go."""
    check_sparsity(sparsity)
    masks = {}
    for name in prunable(arrays):
        w = np.asarray(arrays[name])
        k = int(round(sparsity * w.size))
        mask = np.ones(w.size, np.float32)
        mask[np.argsort(np.abs(w).reshape(-1), kind="stable")[:k]] = 0.0
        masks[name] = mask.reshape(w.shape)
    return masks


def apply_masks(arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of `arrays` with each masked matrix multiplied by its mask."""
    return {k: (v * masks[k]).astype(v.dtype) if k in masks else v for k, v in arrays.items()}


def zero_fraction(arrays: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, float]:
    """Share of exact zeros per matrix (the prunable ones unless `names`)."""
    return {k: float(np.mean(np.asarray(arrays[k]) == 0)) for k in (names or prunable(arrays))}


class MaskKeeper:
    """Keeps pruned weights at zero while training: call `apply()` (or pass the keeper as `Trainer.fit`'s
    `callback`, which runs after every optimizer step) to multiply each masked parameter by its mask again.

    Adam moves a zeroed weight away from zero on the next step (its gradient is not zero), so the mask has to be
    re-applied after every step, not once."""

    def __init__(self, net, masks: dict[str, np.ndarray]) -> None:
        import mindspore as ms

        params = {p.name: p for p in net.get_parameters()}
        missing = [k for k in masks if k not in params]
        if missing:
            raise ParameterError(f"masks for parameters the network does not have: {', '.join(missing[:5])}")
        self.pairs = [(params[k], ms.Tensor(m.astype(np.float32))) for k, m in masks.items()]

    def apply(self) -> None:
        """Multiply every masked parameter by its mask (in place)."""
        for param, mask in self.pairs:
            param.set_data(param.value() * mask.astype(param.dtype))

    def __call__(self, trainer=None, row=None) -> None:
        self.apply()


# ---- structured pruning ----------------------------------------------------------------------------------
def _layer(layer: int, kind: str, direction: str) -> str:
    return f"RNN.lstms.{layer}.{kind}_{direction}"


def _outgoing(cfg: ModelConfig, layer: int) -> list[tuple[str, int]]:
    """(matrix, axis) pairs whose columns read layer `layer`'s hidden units."""
    out = [(_layer(layer, "weight_hh", d), 1) for d in DIRECTIONS]
    if layer + 1 < cfg.hidden_layers:
        return out + [(_layer(layer + 1, "weight_ih", d), 1) for d in DIRECTIONS]
    return out + [(DENSE, 1)]


def _incoming_rows(cfg: ModelConfig, units: np.ndarray) -> np.ndarray:
    """Rows of a [G*H, ...] gate matrix that belong to `units` (the same unit in every gate block)."""
    h = cfg.hidden_size
    return np.concatenate([g * h + np.asarray(units, dtype=np.int64) for g in range(cfg.rnn_gates)])


def unit_norms(arrays: dict[str, np.ndarray], cfg: ModelConfig, layer: int) -> np.ndarray:
    """[H] L2 norm of everything hidden unit j of RNN layer `layer` owns: its rows in all gate blocks of both
    directions (input-hidden, hidden-hidden, biases) and the columns that read it (hidden-hidden, the next
    layer's input or the dense layer). A unit with a small norm changes the output least when removed."""
    h = cfg.hidden_size
    total = np.zeros(h)
    for d in DIRECTIONS:
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            w = np.asarray(arrays[_layer(layer, kind, d)], dtype=np.float64)
            total += (w.reshape(cfg.rnn_gates, h, -1) ** 2).sum(axis=(0, 2))
    for name, axis in _outgoing(cfg, layer):
        total += (np.asarray(arrays[name], dtype=np.float64) ** 2).sum(axis=1 - axis)
    return np.sqrt(total)


def zero_units(arrays: dict[str, np.ndarray], cfg: ModelConfig, layer: int, units) -> dict[str, np.ndarray]:
    """A copy with hidden units `units` of layer `layer` switched off by zeros: their gate rows (weights and
    biases, both directions) and every column that reads them. The unit then outputs 0 at every step
    (LSTM: i = f = o = 1/2, g = 0, so c and h stay 0) and nothing reads it: the network computes what the one
    without those units computes (`structured_prune`)."""
    out = {k: np.array(v, copy=True) for k, v in arrays.items()}
    rows = _incoming_rows(cfg, units)
    for d in DIRECTIONS:
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            out[_layer(layer, kind, d)][rows] = 0.0
    for name, _ in _outgoing(cfg, layer):
        out[name][:, np.asarray(units, dtype=np.int64)] = 0.0
    return out


def check_keep_units(keep_units: int, cfg: ModelConfig) -> int:
    """Hidden units to keep, 1 <= k <= hidden_size, or ParameterError with the model's size."""
    if not 1 <= keep_units <= cfg.hidden_size:
        raise ParameterError(f"--keep-units {keep_units}: the model has {cfg.hidden_size} hidden units per RNN "
                             f"layer; keep from 1 to {cfg.hidden_size}")
    return int(keep_units)


def structured_prune(arrays: dict[str, np.ndarray], cfg: ModelConfig, keep_units: int | None = None, *,
                     keep: list | None = None) -> tuple[dict[str, np.ndarray], ModelConfig]:
    """A narrower network: every RNN layer keeps `keep_units` hidden units (those with the largest
    `unit_norms`), or exactly the units listed per layer in `keep` (a list of index arrays, any order).

    Each layer's gate rows (all gate blocks, both directions, weights and biases) and hidden-hidden columns are
    sliced with its kept units, the next layer's input columns (or the dense layer's) with the same ones.
    Returns the arrays and the ModelConfig with the new `hidden_size`."""
    if keep is None:
        if keep_units is None:
            raise ParameterError("structured pruning needs keep_units or keep")
        check_keep_units(keep_units, cfg)
        keep = [np.sort(np.argsort(-unit_norms(arrays, cfg, layer), kind="stable")[:keep_units])
                for layer in range(cfg.hidden_layers)]
    keep = [np.asarray(k, dtype=np.int64) for k in keep]
    if len(keep) != cfg.hidden_layers or len({len(k) for k in keep}) != 1:
        raise ParameterError(f"keep: one index list per RNN layer ({cfg.hidden_layers}), all of one length "
                             "(ModelConfig has one hidden_size)")
    for k in keep:
        if len(k) == 0 or len(set(k.tolist())) != len(k) or k.min() < 0 or k.max() >= cfg.hidden_size:
            raise ParameterError(f"keep: distinct unit indices from 0 to {cfg.hidden_size - 1}, at least one")
    out = {k: np.asarray(v) for k, v in arrays.items()}
    for layer, units in enumerate(keep):
        rows = _incoming_rows(cfg, units)
        for d in DIRECTIONS:
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                out[_layer(layer, kind, d)] = out[_layer(layer, kind, d)][rows]
        for name, _ in _outgoing(cfg, layer):
            out[name] = out[name][:, units]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}, replace(cfg, hidden_size=len(keep[0]))


# ---- networks and checkpoints -----------------------------------------------------------------------------
def network_arrays(net) -> dict[str, np.ndarray]:
    """Every parameter of a network as NumPy, under its own name (BatchNorm statistics included)."""
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


def build(arrays: dict[str, np.ndarray], cfg: ModelConfig):
    """A DeepSpeech2 of `cfg` holding `arrays` (checked like a checkpoint), in inference mode."""
    import mindspore as ms

    from ds2_helpers.checkpoint import check_compatible
    from ds2_helpers.model import DeepSpeech2

    net = DeepSpeech2(cfg)
    check_compatible(net, arrays, "pruned weights")
    ms.load_param_into_net(net, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in arrays.items()},
                           strict_load=True)
    net.set_train(False)
    return net


def save_pruned(path: str | Path, arrays: dict[str, np.ndarray], cfg: ModelConfig, spect: SpectConfig,
                pruning: dict | None = None) -> Path:
    """A weights-only checkpoint in the normal format (`load_model`, `evaluate`, `train --pretrained` read it):
    metadata records the (new) ModelConfig, the spectrogram config and how it was pruned."""
    import mindspore as ms

    from ds2_helpers import checkpoint as ckpt

    params = [{"name": k, "data": ms.Tensor(np.ascontiguousarray(v))} for k, v in arrays.items()]
    return ckpt.save(path, params, {"model": to_dict(cfg), "spect": to_dict(spect), "pruned": pruning or {}})


def load_arrays(checkpoint: str | Path, preset: str | None = None) -> tuple[dict[str, np.ndarray], ModelConfig,
                                                                               SpectConfig]:
    """A checkpoint's network weights (1.x files converted), its ModelConfig and SpectConfig, as `load_model`
    reads them."""
    from ds2_helpers.checkpoint import load_model

    net, spect = load_model(str(checkpoint), preset)
    return network_arrays(net), net.cfg, spect


def finetune(arrays: dict[str, np.ndarray], cfg: ModelConfig, spect: SpectConfig, manifest, steps: int, *,
             masks: dict[str, np.ndarray] | None = None, lr: float = 3e-4, batch_size: int = 16,
             mode: str = "graph", seed: int = 1234, data=None):
    """Train pruned weights `steps` steps on `manifest` (or the SpeechData `data`; shuffled length buckets), the
    masks re-applied after every step. Returns the fine-tuned arrays and the Trainer (to time its steps)."""
    from ds2_helpers.config import train_preset
    from ds2_helpers.dataset import SpeechData
    from ds2_helpers.train import Trainer

    tcfg = train_preset("mini", learning_rate=lr, batch_size=batch_size, mode=mode, epochs=10_000, save_every=0,
                        sortagrad=False, seed=seed)
    with tempfile.TemporaryDirectory(prefix="ds2-prune-") as tmp:
        start = save_pruned(Path(tmp) / "start.ckpt", arrays, cfg, spect)
        trainer = Trainer(cfg, tcfg, Path(tmp) / "run", spect=spect, pretrained=start, rank=0, world=1)
        if steps:
            data = data if data is not None else SpeechData(manifest, spect)
            trainer.fit(data, max_steps=steps, callback=MaskKeeper(trainer.net, masks) if masks else None,
                        progress=False)
    return network_arrays(trainer.net), trainer


def prune_checkpoint(checkpoint: str | Path, out: str | Path, *, sparsity: float | None = None,
                     keep_units: int | None = None, structured: bool = False, preset: str | None = None,
                     finetune_steps: int = 0, manifest: str | Path | None = None, **finetune_kw) -> dict:
    """Prune a checkpoint and write the result to `out` (a normal checkpoint); returns what was done.

    Unstructured (`sparsity`): each RNN and dense matrix loses that share of its smallest weights. Structured
    (`structured`, `keep_units` or `sparsity` as the share of units removed): a narrower network. With
    `finetune_steps` the pruned model first trains on `manifest` (masks kept)."""
    from ds2_helpers.atomic import check_writable

    if structured:
        if (keep_units is None) == (sparsity is None):
            raise ParameterError("--structured: give either --keep-units (hidden units per layer to keep) or "
                                 "--sparsity (the share of units to remove), not both")
    elif keep_units is not None:
        raise ParameterError("--keep-units is for structured pruning: add --structured")
    elif sparsity is None:
        raise ParameterError("give --sparsity (share of the weights to zero), or --structured with --keep-units")
    if sparsity is not None:
        check_sparsity(sparsity)
    if finetune_steps and not manifest:
        raise ParameterError(f"--finetune-steps {finetune_steps}: give --manifest (the training manifest the "
                             "pruned model fine-tunes on)")
    check_writable(out)  # before the work
    arrays, cfg, spect = load_arrays(checkpoint, preset)
    masks = None
    if structured:
        units = keep_units if keep_units is not None else max(1, int(round(cfg.hidden_size * (1 - sparsity))))
        arrays, new_cfg = structured_prune(arrays, cfg, check_keep_units(units, cfg))
        record = {"kind": "structured", "hidden_size_before": cfg.hidden_size, "hidden_size": units}
    else:
        masks = magnitude_masks(arrays, sparsity)
        arrays, new_cfg = apply_masks(arrays, masks), cfg
        record = {"kind": "unstructured", "sparsity": sparsity}
    if finetune_steps:
        arrays, _ = finetune(arrays, new_cfg, spect, manifest, finetune_steps, masks=masks, **finetune_kw)
        record.update(finetune_steps=finetune_steps, manifest=str(manifest))
    record["from"] = str(checkpoint)
    path = save_pruned(out, arrays, new_cfg, spect, record)
    zeros = zero_fraction(arrays)
    return {**record, "path": str(path), "model": to_dict(new_cfg), "zero_fraction": zeros,
            "parameters": int(sum(np.asarray(v).size for v in arrays.values())),
            "nonzero": int(sum(np.count_nonzero(v) for v in arrays.values()))}


# ---- measurement ------------------------------------------------------------------------------------------
def interleaved_medians(fns: list, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Median wall time of each of `fns` (called without arguments), measured round-robin - one call of each,
    then the next round - so a change in the machine's load (other processes, a shared 2-core host) hits every
    variant alike instead of whichever was measured at the time. `warmup` untimed rounds first."""
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(warmup + repeats):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def middle_batch(data, size: int, pad_multiple: int = 64):
    """One fixed batch of `size` utterances of about the median length (the same for every timed variant)."""
    order = np.argsort(data.durations, kind="stable")
    start = max(0, len(order) // 2 - size // 2)
    return data.batch(sorted(order[start:start + size].tolist()), pad_multiple=pad_multiple)


def forward(net, batch, mode: str = "graph"):
    """A function running one inference pass of `net` over `batch` (results fetched), for timing; `mode` as
    `evaluate` runs it (ds2_helpers.inference.forward: Graph, compiled once, by default)."""
    import mindspore as ms

    from ds2_helpers.inference import forward as compiled

    fn = compiled(net, mode)
    x, x_len = ms.Tensor(batch.x), ms.Tensor(batch.x_len)
    return lambda: fn(x, x_len)[0].asnumpy()


def measure(checkpoint: str | Path, train_manifest, test_manifest, *, sparsities=(0.0, 0.3, 0.5, 0.7, 0.9),
            units=(192, 128, 96), finetune_steps: int = 50, lr: float = 3e-4, batch_size: int = 16,
            eval_limit: int | None = None, repeats: int = 5, warmup: int = 1, mode: str = "graph",
            out: str | Path | None = None, progress: bool = True):
    """CER and speed of unstructured pruning at each of `sparsities` and of structured pruning to each of `units`
    hidden units; one row per variant (a pandas DataFrame).

    Each variant: prune, greedy CER on `test_manifest` (first `eval_limit` utterances), fine-tune
    `finetune_steps` steps (masks kept), save the checkpoint, reload it as `evaluate` does and take the CER again.
    Then the times, round-robin over all variants (`interleaved_medians`, so load from other processes is shared
    out fairly): the median of `repeats` training steps (`mode`) on one fixed training batch and of `repeats`
    forward passes (Graph, as `evaluate` runs them) on one fixed test batch, after `warmup` untimed rounds. The
    checkpoints, prune.csv and prune.json (the table with the machine and the settings: notebook 08's reference)
    are written to `out` (a temporary folder when None: the table then has no checkpoint column)."""
    if out is None:
        with tempfile.TemporaryDirectory(prefix="ds2-prune-") as tmp:
            return measure(checkpoint, train_manifest, test_manifest, sparsities=sparsities, units=units,
                           finetune_steps=finetune_steps, lr=lr, batch_size=batch_size, eval_limit=eval_limit,
                           repeats=repeats, warmup=warmup, mode=mode, out=tmp,
                           progress=progress).drop(columns="checkpoint")
    import mindspore as ms
    import pandas as pd

    from ds2_helpers.atomic import atomic_write_text
    from ds2_helpers.bench import provenance
    from ds2_helpers.checkpoint import load_model
    from ds2_helpers.dataset import SpeechData
    from ds2_helpers.evaluate import evaluate

    base, cfg, spect = load_arrays(checkpoint)
    train = SpeechData(train_manifest, spect)
    test = SpeechData(test_manifest, spect, limit=eval_limit)
    step_batch, infer_batch = middle_batch(train, batch_size), middle_batch(test, batch_size)
    variants = [("unstructured", float(s), cfg.hidden_size) for s in sparsities]
    variants += [("structured", 1 - u / cfg.hidden_size, int(u)) for u in units]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rows, trainers, nets = [], [], []
    for kind, share, hidden in variants:
        if kind == "structured":
            arrays, new_cfg = structured_prune(base, cfg, check_keep_units(hidden, cfg))
            masks = None
        else:
            masks = magnitude_masks(base, share)
            arrays, new_cfg = apply_masks(base, masks), cfg
        ms.set_context(mode=ms.PYNATIVE_MODE)
        _, before = evaluate(build(arrays, new_cfg), test, batch_size=batch_size, on_skip=lambda m: None)
        tuned, trainer = finetune(arrays, new_cfg, spect, train_manifest, finetune_steps, masks=masks, lr=lr,
                                  batch_size=batch_size, mode=mode, data=train)
        path = save_pruned(folder / f"{kind}-{share:.2f}-h{hidden}.ckpt", tuned, new_cfg, spect,
                           {"kind": kind, "share": share, "finetune_steps": finetune_steps, "from": str(checkpoint)})
        net, _ = load_model(str(path))  # the checkpoint as `evaluate` loads it
        _, after = evaluate(net, test, batch_size=batch_size, on_skip=lambda m: None)
        trainers.append(trainer)
        nets.append(net)
        zeros = np.concatenate([tuned[k].reshape(-1) == 0 for k in prunable(tuned)])
        rows.append({"kind": kind, "sparsity": round(share, 4), "hidden_size": hidden,
                     "zero_fraction": round(float(np.mean(zeros)), 4),
                     "parameters": int(sum(v.size for v in tuned.values())),
                     "nonzero": int(sum(np.count_nonzero(v) for v in tuned.values())),
                     "checkpoint_mb": path.stat().st_size / 1e6, "cer_pruned": before["cer"], "cer": after["cer"],
                     "finetune_steps": finetune_steps, "checkpoint": str(path)})
        if progress:
            print(f"{kind:>12} sparsity {share:.2f} hidden {hidden}: CER {before['cer']:.3f} pruned, "
                  f"{after['cer']:.3f} after {finetune_steps} fine-tuning steps", flush=True)
    ms.set_context(mode=ms.GRAPH_MODE if mode.lower() == "graph" else ms.PYNATIVE_MODE)
    steps = interleaved_medians([lambda t=t: t.step(step_batch) for t in trainers], repeats, warmup)
    ms.set_context(mode=ms.PYNATIVE_MODE)  # inference.forward compiles each network with ms.jit from PyNative
    passes = interleaved_medians([forward(n, infer_batch) for n in nets], repeats, warmup)
    for row, step, infer in zip(rows, steps, passes):
        row.update(step_ms=1e3 * step, inference_ms=1e3 * infer)
    table = pd.DataFrame(rows)
    table.attrs.update(step_batch=list(step_batch.x.shape), inference_batch=list(infer_batch.x.shape), mode=mode)
    atomic_write_text(folder / "prune.csv", table.to_csv(index=False))
    atomic_write_text(folder / "prune.json", json.dumps({
        **provenance(), "checkpoint": str(checkpoint),
        "test_manifest": str(test_manifest), "eval_limit": eval_limit, "finetune_steps": finetune_steps, "lr": lr,
        "repeats": repeats, **table.attrs, "rows": table.to_dict("records")}, indent=1))
    return table
