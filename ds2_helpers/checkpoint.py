"""Checkpoints: atomic save with training state, keep-last-k, diagnosed loading, and the MindSpore 1.x converter.

The course's pretrained DeepSpeech.ckpt comes from the MindSpore model zoo's 1.x DeepSpeech2
(research/audio/deepspeech2/src/deepspeech2.py in mindspore-ai/models, branches r1.2 to r1.5; master moved it
to official/audio/DeepSpeech2 and to per-layer nn.LSTM in Dec 2021). Its BatchRNN keeps ONE flat weight per
bidirectional LSTM layer, `RNN.weight{N}` of shape (size, 1, 1), and fills it with
`(input + hidden) * hidden * 2 directions * 4` weights plus a bias of `2 directions * hidden * 4 * 2` values when
`device_target == "GPU"`, else `2 * hidden * 4` (one bias per direction). The two packings differ by 4H values per
direction and are told apart by the size alone (H = hidden size, "in" = the layer's input size):

* "gpu" (cuDNN; MindSpore's GPU LSTM kernel hands the flat weight to cuDNN, and MindSpore's own test
  tests/st/ops/gpu/test_lstm_op.py packs it as wih, whh, wih_reverse, whh_reverse, bih, bhh, bih_reverse,
  bhh_reverse): for each direction (forward, then reverse) W_ih [4H, in] then W_hh [4H, H]; then for each
  direction b_ih [4H] then b_hh [4H].
* "cpu" (oneDNN; mindspore/ccsrc/backend/kernel_compiler/cpu/mkldnn/lstm_cpu_kernel.cc of MindSpore 1.x reads
  the flat weight as weights_layer dims {layers, directions, in, 4, H} in format ldgoi, then, at offset
  weight_size_, weights_iter {layers, directions, H, 4, H} in ldgoi, then, at weight_size_ + weight_h_size_,
  the bias {layers, directions, 4, H} in ldgo): W_ih forward, W_ih reverse (each [4H, in]), then W_hh forward,
  W_hh reverse (each [4H, H]), then one bias per direction ([4H] forward, [4H] reverse). oneDNN adds that one
  bias to W_ih x + W_hh h, so it stands for b_ih + b_hh: the converter puts it in bias_ih and zeros in bias_hh,
  the same LSTM; pack_v1 packs b_ih + b_hh into it.

Within every 4H block the gates are i, f, g (cell candidate), o in both (cuDNN's order; oneDNN's
src/cpu/rnn/ref_postgemm_lstm.cpp uses gate 0 = input, 1 = forget, 2 = candidate, 3 = output) - MindSpore 2.x's
order too, so by default the converter only slices; `gate_order` remaps a checkpoint packed with another order.

Caveat: a 1.x nn.LSTM (`RNN.lstms.{N}.weight`, mindspore/nn/layer/lstm.py) allocated two biases per direction
on every device but Ascend, while the CPU kernel reads it in the "cpu" order; such a file trained on CPU has the
GPU size and converts as "gpu", wrongly. The zoo's BatchRNN, which sized its own weights, does not have this problem.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn

from ds2_helpers.atomic import atomic_write_path
from ds2_helpers.config import MODEL_PRESETS
from ds2_helpers.download import download
from ds2_helpers.errors import CheckpointError

#: The course brief's pretrained DeepSpeech2 (MindSpore model zoo, LibriSpeech).
PRETRAINED_URL = ("https://ascend-professional-construction-dataset.obs.cn-north-4.myhuaweicloud.com/"
                  "ASR/DeepSpeech.ckpt")
OPTIMIZER_PREFIXES = ("moment1", "moment2", "beta1_power", "beta2_power", "learning_rate", "global_step", "step",
                      "lamb_m.", "lamb_v.", "accum.", "stat.", "momentum")  # Adam's, then LAMB's and SGD's state
TARGET_GATES = "ifgo"
PACKINGS = ("gpu", "cpu")
_FLAT_NAME = re.compile(r"^(?:RNN\.|rnn\.)?(?:lstms\.(\d+)\.weight|weight(\d+)|lstms\.(\d+)\.rnn\.weight)$")


def check_disk(folder: str | Path, need_bytes: int, what: str = "the checkpoint") -> None:
    """Refuse to start a write that cannot fit: a full disk mid-write costs the write and, on a shared quota,
    the next one too."""
    import shutil

    folder = Path(folder)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        def size(n):
            return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"

        raise CheckpointError(f"{folder}: {size(free)} free, {what} needs {size(need_bytes)}; free disk space "
                              "(older runs, --keep-last smaller) or write to another folder")


def save(path: str | Path, params: list[dict], meta: dict | None = None) -> Path:
    """Write a checkpoint atomically (temp file + rename) with JSON metadata stored inside it, after checking
    that the folder has room for it."""
    append = {"ds2_meta": json.dumps(meta or {})}
    need = sum(int(getattr(p["data"], "nbytes", 0) or np.asarray(p["data"]).nbytes) for p in params)
    check_disk(Path(path).parent, need + len(append["ds2_meta"]) + (16 << 20), f"{Path(path).name}")
    return atomic_write_path(path, lambda tmp: ms.save_checkpoint(params, str(tmp), append_dict=append),
                             suffix=".tmp.ckpt")


def read(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """All arrays in a checkpoint plus our metadata ({} for foreign checkpoints)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; train one or download it "
                              "(`python -m ds2_helpers pretrained download`)")
    if path.is_dir():
        final, steps, others = path / "final.ckpt", checkpoints_in(path), sorted(path.glob("*.ckpt"))
        raise CheckpointError(f"{path}: is a folder; pass a checkpoint file" + (
            f", e.g. the finished run's weights, {final}" if final.is_file() else
            f", e.g. the run's newest, {steps[-1]}" if steps else f", e.g. {others[0]}" if others
            else " (it holds no .ckpt files)"))
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
    """Drop optimizer state (Adam, LAMB or SGD moments, powers, step, learning rate); `rnn.` prefixes become `RNN.`
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
            other, asked = architecture(have), architecture_of_config(getattr(net, "cfg", None))
            if other and asked and other != asked:
                fits = {arch: [n for n, c in MODEL_PRESETS.items() if architecture_of_config(c) == arch]
                        for arch in (other, asked)}
                named = {arch: describe(arch) + (f" (the `{fits[arch][0]}` preset)" if fits[arch] else "")
                         for arch in (other, asked)}
                if fits[other]:  # the usual mistake: the other preset's checkpoint; one line says which
                    raise CheckpointError(f"{source}: its network has {named[other]}, the one asked for "
                                          f"{named[asked]}; pass --preset {fits[other][0]} or leave --preset out "
                                          "(this workbook's checkpoints record their preset)")
                hint = f" (its network has {named[other]}, the one asked for {named[asked]})"
        raise CheckpointError(f"{source} does not fit the network{hint}:\n  " + "\n  ".join(problems[:40])
                              + (f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""))


def architecture(arrays: dict) -> tuple | None:
    """(convolution channels, RNN layers, hidden units) of the network whose arrays (or shapes) these are; None
    when the names are not this network's (flat 1.x weights, another model)."""
    shape = {k: tuple(getattr(v, "shape", v)) for k, v in arrays.items()}
    layers = {int(m.group(1)) for k in shape if (m := re.match(r"RNN\.lstms\.(\d+)\.weight_hh_l0$", k))}
    if "conv.conv1.weight" not in shape or not layers:
        return None
    return shape["conv.conv1.weight"][0], max(layers) + 1, shape["RNN.lstms.0.weight_hh_l0"][1]


def architecture_of_config(cfg) -> tuple | None:
    """`architecture` of a ModelConfig (None for anything else)."""
    return (cfg.conv_channels, cfg.hidden_layers, cfg.hidden_size) if hasattr(cfg, "hidden_size") else None


def describe(arch: tuple) -> str:
    """'8-channel convolutions and 2 RNN layers of 192 units'."""
    return f"{arch[0]}-channel convolutions and {arch[1]} RNN layers of {arch[2]} units"


def load_into(net: nn.Cell, path: str | Path, *, convert: bool = True) -> dict:
    """Load a checkpoint's network weights into `net` after a full check; converts 1.x files in memory."""
    arrays, meta = read(path)
    arrays = network_arrays(arrays)
    if convert and any(_FLAT_NAME.match(n) for n in arrays):
        meta = {**meta, "v1_packing": detect_packing(arrays, net)}
        arrays = convert_v1(arrays, net, packing=meta["v1_packing"])
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


def flat_layout(shapes: dict[str, tuple], layer: int, packing: str) -> list[tuple[str, tuple]]:
    """The (2.x parameter, shape) pieces of LSTM layer `layer`'s flat 1.x weight, in their order in `packing`.
    A "cpu" weight has one bias per direction; it is listed under bias_ih (see the module docstring)."""
    p, dirs = f"RNN.lstms.{layer}.", ("l0", "l0_reverse")
    if packing == "gpu":
        names = [f"{p}{kind}_{d}" for pair in (("weight_ih", "weight_hh"), ("bias_ih", "bias_hh"))
                 for d in dirs for kind in pair]
    elif packing == "cpu":
        names = [f"{p}{kind}_{d}" for kind in ("weight_ih", "weight_hh", "bias_ih") for d in dirs]
    else:
        raise CheckpointError(f"packing {packing!r}: use one of {', '.join(PACKINGS)}")
    return [(n, tuple(shapes[n])) for n in names]


def _flat_weights(arrays: dict[str, np.ndarray]) -> list[str]:
    return sorted((k for k in arrays if _FLAT_NAME.match(k)), key=_flat_layer_index)


def detect_packing(arrays: dict[str, np.ndarray], net: nn.Cell) -> str:
    """"gpu" or "cpu": which packing the 1.x flat LSTM weights are in, from their sizes for this network."""
    shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
    flats = _flat_weights(arrays)
    layers = len({n.split(".")[2] for n in shapes if n.startswith("RNN.lstms.")})
    if not flats:
        raise CheckpointError("no flat MindSpore 1.x LSTM weights (RNN.weight0, ...) in the checkpoint: "
                              "it needs no conversion")
    if len(flats) != layers:
        raise CheckpointError(f"the checkpoint has {len(flats)} flat LSTM weights ({', '.join(flats)}) but the "
                              f"network has {layers} LSTM layers: check --preset (paper or mini)")
    found = set()
    for layer, name in enumerate(flats):
        size = int(np.asarray(arrays[name]).size)
        need = {k: sum(int(np.prod(s)) for _, s in flat_layout(shapes, layer, k)) for k in PACKINGS}
        match = [k for k, n in need.items() if n == size]
        if not match:
            raise CheckpointError(
                f"{name} (LSTM layer {layer}) has {size} values, but this network needs {need['gpu']} "
                f"(GPU/cuDNN packing, two biases per direction) or {need['cpu']} (CPU/oneDNN packing, one bias "
                f"per direction): the hidden or input size differs, check --preset (paper or mini)")
        found.add(match[0])
    if len(found) > 1:
        raise CheckpointError(f"the flat LSTM weights mix the GPU and CPU packings ({', '.join(flats)})")
    return found.pop()


def convert_v1(arrays: dict[str, np.ndarray], net: nn.Cell, *, gate_order: str = "ifgo",
               packing: str | None = None) -> dict[str, np.ndarray]:
    """Split 1.x flat LSTM weights into MindSpore 2.x per-direction parameters (see module docstring);
    the packing is detected from the sizes unless given."""
    packing = packing or detect_packing(arrays, net)
    out = {k: v for k, v in network_arrays(arrays).items() if not _FLAT_NAME.match(k)}
    shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
    for layer, name in enumerate(_flat_weights(arrays)):
        flat = np.asarray(arrays[name], dtype=np.float32).reshape(-1)
        offset = 0
        for n, shape in flat_layout(shapes, layer, packing):
            size = int(np.prod(shape))
            out[n] = _reorder_gates(flat[offset: offset + size].reshape(shape), gate_order)
            offset += size
            if packing == "cpu" and "bias_ih" in n:  # the one bias already holds b_ih + b_hh
                out[n.replace("bias_ih", "bias_hh")] = np.zeros(shape, np.float32)
    return out


def pack_v1(arrays: dict[str, np.ndarray], layers: int, *, gate_order: str = "ifgo",
            packing: str = "gpu") -> dict[str, np.ndarray]:
    """The inverse of convert_v1: build a 1.x-style checkpoint (used to test the converter on known weights).
    The "cpu" packing has one bias per direction: it gets bias_ih + bias_hh, which computes the same LSTM
    (converting it back gives that sum as bias_ih and zeros as bias_hh)."""
    out = {k: v for k, v in arrays.items() if not k.startswith("RNN.lstms.")}
    shapes = {k: np.shape(v) for k, v in arrays.items()}
    for layer in range(layers):
        pieces = []
        for n, _ in flat_layout(shapes, layer, packing):
            value = arrays[n]
            if packing == "cpu" and "bias_ih" in n:
                value = value + arrays[n.replace("bias_ih", "bias_hh")]
            pieces.append(_reorder_gates(value, TARGET_GATES, gate_order).reshape(-1))
        out[f"RNN.weight{layer}"] = np.concatenate(pieces).reshape(-1, 1, 1)
    return out


def convert_file(src: str | Path, dst: str | Path, net: nn.Cell, *, gate_order: str = "ifgo") -> tuple[Path, str]:
    """Convert a 1.x DeepSpeech2 checkpoint file for `net`; Adam moments are dropped.
    Returns the written path and the detected packing ("gpu" or "cpu"), which the metadata records too."""
    arrays, meta = read(src)
    if not _flat_weights(arrays):
        kind = "written by this workbook" if meta else "in MindSpore 2.x format"
        raise CheckpointError(f"{src}: already converted ({kind}: no flat 1.x LSTM weights); use it as it is "
                              "(train --pretrained, evaluate/transcribe/export --checkpoint)")
    packing = detect_packing(arrays, net)
    converted = convert_v1(arrays, net, gate_order=gate_order, packing=packing)
    check_compatible(net, converted, f"{src} (converted)")
    params = [{"name": k, "data": ms.Tensor(v)} for k, v in converted.items()]
    meta = {"converted_from": str(src), "gate_order": gate_order, "packing": packing}
    return save(dst, params, meta), packing


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


def load_model(checkpoint: str, preset: str | None = None):
    """A network in inference mode with a checkpoint's weights; the preset (and convolution) come from the file
    when it records them."""
    from ds2_helpers.config import ModelConfig, SpectConfig, from_dict, model_preset
    from ds2_helpers.model import DeepSpeech2

    ms.set_context(mode=ms.PYNATIVE_MODE)
    _, meta = read(checkpoint)
    cfg = model_preset(preset) if preset else from_dict(ModelConfig, meta["model"]) if "model" in meta else \
        model_preset("paper")
    spect = SpectConfig.from_meta(meta)  # metadata older than `periodic_window` means the periodic window
    net = DeepSpeech2(cfg)
    load_into(net, checkpoint)
    net.set_train(False)
    return net, spect
