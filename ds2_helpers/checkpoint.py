"""Checkpoints: atomic save with training state, keep-last-k, diagnosed loading, and the MindSpore 1.x converter.

MindSpore 1.x (< 1.5) kept one flat `weight` per nn.LSTM, in the cuDNN layout the model zoo trained
with on GPU: for each direction (forward, then reverse) W_ih [4H, in] then W_hh [4H, H], row-major;
after all weights, for each direction b_ih [4H] then b_hh [4H]. The gates inside each 4H block are
in cuDNN's order i, f, g (cell candidate), o - the order MindSpore 2.x uses too, so by default the
converter only slices; `gate_order` remaps a checkpoint packed with another order.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn

from ds2_helpers.download import download
from ds2_helpers.errors import CheckpointError

#: The course brief's pretrained DeepSpeech2 (MindSpore model zoo, LibriSpeech).
PRETRAINED_URL = ("https://ascend-professional-construction-dataset.obs.cn-north-4.myhuaweicloud.com/"
                  "ASR/DeepSpeech.ckpt")
OPTIMIZER_PREFIXES = ("moment1", "moment2", "beta1_power", "beta2_power", "learning_rate", "global_step", "step")
TARGET_GATES = "ifgo"
_FLAT_NAME = re.compile(r"^(?:RNN\.|rnn\.)?(?:lstms\.(\d+)\.weight|weight(\d+)|lstms\.(\d+)\.rnn\.weight)$")


def save(path: str | Path, params: list[dict], meta: dict | None = None) -> Path:
    """Write a checkpoint atomically (temp file + rename) with JSON metadata stored inside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.ckpt")
    append = {"ds2_meta": json.dumps(meta or {})}
    ms.save_checkpoint(params, str(tmp), append_dict=append)
    os.chmod(tmp, 0o644)  # MindSpore writes owner-read-only files; keep them replaceable and shareable
    os.replace(tmp, path)
    return path


def read(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """All arrays in a checkpoint plus our metadata ({} for foreign checkpoints)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; train one or download it "
                              "(`python -m ds2_helpers pretrained download`)")
    try:
        raw = ms.load_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - MindSpore raises ValueError/RuntimeError for corrupt files
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({exc}); download or train it again") \
            from exc
    meta = {}
    arrays = {}
    for name, value in raw.items():
        if name == "ds2_meta":
            meta = json.loads(str(value.asnumpy().item() if hasattr(value, "asnumpy") else value))
            continue
        arrays[name] = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
    return arrays, meta


def network_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop optimizer state (Adam moments, powers, step, learning rate); `rnn.` prefixes become `RNN.`
    (the model zoo's eval.py renames them the same way)."""
    return {("RNN." + k[4:] if k.startswith("rnn.") else k): v for k, v in arrays.items()
            if not k.startswith(OPTIMIZER_PREFIXES)}


def check_compatible(net: nn.Cell, arrays: dict[str, np.ndarray], source: str = "checkpoint") -> None:
    """Raise CheckpointError naming every missing, unexpected or wrongly shaped parameter."""
    want = {p.name: tuple(p.shape) for p in net.get_parameters()}
    have = {k: tuple(v.shape) for k, v in arrays.items()}
    problems = [f"missing {n} {s}" for n, s in want.items() if n not in have]
    problems += [f"unexpected {n} {s}" for n, s in have.items() if n not in want]
    problems += [f"shape of {n}: checkpoint {have[n]} vs network {s}" for n, s in want.items()
                 if n in have and have[n] != s]
    if problems:
        hint = ""
        if any(_FLAT_NAME.match(n) for n in have):
            hint = " (flat MindSpore 1.x LSTM weights: convert with `python -m ds2_helpers pretrained convert`)"
        elif any("shape of" in p for p in problems):
            hint = " (is the --preset right? paper and mini differ in size)"
        raise CheckpointError(f"{source} does not fit the network{hint}:\n  " + "\n  ".join(problems[:40])
                              + (f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""))


def load_into(net: nn.Cell, path: str | Path, *, convert: bool = True) -> dict:
    """Load a checkpoint's network weights into `net` after a full check; converts 1.x files in memory."""
    arrays, meta = read(path)
    arrays = network_arrays(arrays)
    if convert and any(_FLAT_NAME.match(n) for n in arrays):
        arrays = convert_v1(arrays, net)
    check_compatible(net, arrays, str(path))
    ms.load_param_into_net(net, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in arrays.items()},
                           strict_load=True)
    return meta


def _reorder_gates(block: np.ndarray, source: str, target: str = TARGET_GATES) -> np.ndarray:
    """Permute the four gate blocks along axis 0 from `source` order to `target` order."""
    if sorted(source) != sorted(TARGET_GATES):
        raise CheckpointError(f"gate order {source!r} must be a permutation of 'ifgo'")
    parts = np.split(block, 4, axis=0)
    return np.concatenate([parts[source.index(g)] for g in target], axis=0)


def _flat_layer_index(name: str) -> int:
    match = _FLAT_NAME.match(name)
    return int(next(g for g in match.groups() if g is not None))


def convert_v1(arrays: dict[str, np.ndarray], net: nn.Cell, *, gate_order: str = "ifgo") -> dict[str, np.ndarray]:
    """Split 1.x flat LSTM weights into MindSpore 2.x per-direction parameters (see module docstring)."""
    out = {k: v for k, v in network_arrays(arrays).items() if not _FLAT_NAME.match(k)}
    shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
    flats = sorted((k for k in arrays if _FLAT_NAME.match(k)), key=_flat_layer_index)
    for layer, name in enumerate(flats):
        flat = np.asarray(arrays[name], dtype=np.float32).reshape(-1)
        prefix = f"RNN.lstms.{layer}."
        order = [f"{prefix}weight_ih_l0", f"{prefix}weight_hh_l0", f"{prefix}weight_ih_l0_reverse",
                 f"{prefix}weight_hh_l0_reverse", f"{prefix}bias_ih_l0", f"{prefix}bias_hh_l0",
                 f"{prefix}bias_ih_l0_reverse", f"{prefix}bias_hh_l0_reverse"]
        missing = [n for n in order if n not in shapes]
        if missing:
            raise CheckpointError(f"{name}: the network has no {missing[0]}; "
                                  f"the checkpoint has {len(flats)} LSTM layers, is the preset right?")
        need = sum(int(np.prod(shapes[n])) for n in order)
        if flat.size != need:
            raise CheckpointError(f"{name}: {flat.size} values, but layer {layer} of the network needs {need} "
                                  f"(hidden size or input size differ: check --preset)")
        offset = 0
        for n in order:
            size = int(np.prod(shapes[n]))
            out[n] = _reorder_gates(flat[offset: offset + size].reshape(shapes[n]), gate_order)
            offset += size
    return out


def pack_v1(arrays: dict[str, np.ndarray], layers: int, *, gate_order: str = "ifgo") -> dict[str, np.ndarray]:
    """The inverse of convert_v1: build a 1.x-style checkpoint (used to test the converter on known weights)."""
    out = {k: v for k, v in arrays.items() if not k.startswith("RNN.lstms.")}
    for layer in range(layers):
        p = f"RNN.lstms.{layer}."
        order = ["weight_ih_l0", "weight_hh_l0", "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0",
                 "bias_hh_l0", "bias_ih_l0_reverse", "bias_hh_l0_reverse"]
        pieces = [_reorder_gates(arrays[p + n], TARGET_GATES, gate_order).reshape(-1) for n in order]
        flat = np.concatenate(pieces)
        out[f"RNN.weight{layer}"] = flat.reshape(-1, 1, 1)
    return out


def convert_file(src: str | Path, dst: str | Path, net: nn.Cell, *, gate_order: str = "ifgo") -> Path:
    """Convert a 1.x DeepSpeech2 checkpoint file for `net`; Adam moments are dropped."""
    arrays, _ = read(src)
    converted = convert_v1(arrays, net, gate_order=gate_order)
    check_compatible(net, converted, f"{src} (converted)")
    params = [{"name": k, "data": ms.Tensor(v)} for k, v in converted.items()]
    return save(dst, params, {"converted_from": str(src), "gate_order": gate_order})


def download_pretrained(dest: str | Path, *, progress: bool = True, url: str = PRETRAINED_URL,
                        expected_size: int | None = None) -> Path:
    """Fetch the course's DeepSpeech.ckpt (resumable, progress bar, size check)."""
    return download(url, dest, expected_size=expected_size, progress=progress)


def checkpoints_in(folder: str | Path) -> list[Path]:
    """Training checkpoints in a run folder, oldest step first."""
    found = []
    for p in Path(folder).glob("ds2-step*.ckpt"):
        m = re.match(r"ds2-step(\d+)\.ckpt$", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def prune(folder: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints."""
    for old in checkpoints_in(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
