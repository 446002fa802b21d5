"""Export to MindIR, reload with nn.GraphCell, and check parity; ONNX attempted.

With MindSpore 2.10 a free time axis exports, and a free batch axis too (notebook 06 runs one on batches of 1
and 3; `tests/test_export.py` checks it against each utterance alone). A deployment's `transcribe` sends one
utterance per call, so `export_mindir` writes a batch-1 graph for inputs of any length by default (each
utterance runs at its own length), or, with `frames`, a graph for exactly that many spectrogram frames that the
caller pads to (what runtimes without dynamic shapes need; padding never changes the result because the network
masks everything past the true length, but a 2 s utterance then costs as much as a `frames` one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn, ops


from ds2_helpers.atomic import atomic_write_path, atomic_write_text
from ds2_helpers.errors import ExportError
from ds2_helpers.model import DeepSpeech2


class InferenceNet(nn.Cell):
    """What gets exported: spectrogram [1, 1, bins, frames] + length [1] -> log-probs [T', 1, 29], length [1]."""

    def __init__(self, net: DeepSpeech2) -> None:
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, x, lengths):
        logits, out_len = self.net(x, lengths)
        return ops.log_softmax(logits, -1), out_len


def sidecar(path: str | Path) -> Path:
    """`model.mindir.json`: what a deployment needs besides the graph (input frames, spectrogram, labels)."""
    return Path(str(path) + ".json")


def export_path(out: str | Path, file_format: str = "MINDIR") -> Path:
    """The file an export to `out` writes: `out` with .mindir (.onnx) added unless it ends so. A folder (one that
    exists, or a path ending in a slash) is refused with ExportError: the model needs a file name."""
    ext = "." + file_format.lower()
    if str(out).endswith(("/", os.sep)) or Path(out).is_dir():
        raise ExportError(f"{out}: is a folder; give the model a file name, e.g. --out {Path(out) / ('model' + ext)}")
    out = Path(out)
    return out if out.suffix == ext else Path(str(out) + ext)


def export_mindir(net: DeepSpeech2, out: str | Path, *, frames: int | None = None, spect: dict | None = None) -> Path:
    """Write `out` (.mindir) for batch-1 inputs of any length (`frames` None) or of exactly `frames` frames, plus
    its JSON sidecar; returns the path."""
    path = export_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    infer = InferenceNet(net)
    infer.set_train(False)
    if frames is None:
        x = ms.Tensor(shape=[1, 1, net.cfg.n_bins, None], dtype=ms.float32)
        lengths = ms.Tensor(shape=[1], dtype=ms.int32)
    else:
        x = ms.Tensor(np.zeros((1, 1, net.cfg.n_bins, frames), np.float32))
        lengths = ms.Tensor(np.array([frames], np.int32))

    def write(tmp: Path) -> None:  # a full disk or a kill leaves no half-written model under the real name
        ms.export(infer, x, lengths, file_name=str(tmp), file_format="MINDIR")
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise ExportError(f"{path}: MindSpore wrote no model (is the disk full?)")

    atomic_write_path(path, write, suffix=".mindir")
    from ds2_helpers.labels import LABELS

    atomic_write_text(sidecar(path), json.dumps({"frames": frames, "n_bins": net.cfg.n_bins, "spect": spect or {},
                                                 "labels": list(LABELS),
                                                 "outputs": "log_probs [T', 1, 29], lengths [1]"}, indent=2))
    return path


def _attempt_export(net: DeepSpeech2, out: str | Path, x, lengths, file_format: str) -> tuple[bool, str]:
    """Export, reporting instead of raising: (True, path) or (False, MindSpore's first line of refusal)."""
    infer = InferenceNet(net)
    infer.set_train(False)
    path = export_path(out, file_format)
    stem = path.with_suffix("")  # MindSpore adds the extension
    try:
        ms.export(infer, x, lengths, file_name=str(stem), file_format=file_format)
    except Exception as exc:  # noqa: BLE001 - we report whatever MindSpore says
        return False, str(exc).strip().splitlines()[0]
    return True, str(path)


def export_onnx(net: DeepSpeech2, out: str | Path, *, frames: int = 3600) -> tuple[bool, str]:
    """Try ONNX export; returns (True, path) or (False, MindSpore's own first line of refusal)."""
    x = ms.Tensor(np.zeros((1, 1, net.cfg.n_bins, frames), np.float32))
    return _attempt_export(net, out, x, ms.Tensor(np.array([frames], np.int32)), "ONNX")


class ExportedModel:
    """A reloaded MindIR (nn.GraphCell), with the padding a fixed input length needs (`frames`: from the sidecar;
    None for a model exported with a free time axis).

    A free-length graph pays once for every new input length it meets (MindSpore infers its shapes then; for the
    mini model that first call took several times as long as the later ones), so inputs are padded up to a
    multiple of `bucket` frames: a few lengths, each paid once."""

    def __init__(self, path: str | Path, frames: int | None = None, bucket: int = 64) -> None:
        path = Path(path)
        if not path.exists():
            raise ExportError(f"{path}: no such MindIR; create it with `python -m ds2_helpers export`")
        self.path = path
        if not sidecar(path).exists() and frames is None:
            raise ExportError(f"{path}: no {sidecar(path).name} beside it; pass the exported input frames")
        self.meta = json.loads(sidecar(path).read_text()) if sidecar(path).exists() else {}
        self.frames = frames or self.meta.get("frames")
        self.bucket = bucket
        self.graph = nn.GraphCell(ms.load(str(path)))

    def __call__(self, spect: np.ndarray) -> np.ndarray:
        """Log-probs [T', 29] for one spectrogram [bins, T] (T at most the exported frames, if fixed)."""
        frames = self.frames or -(-spect.shape[1] // self.bucket) * self.bucket
        if spect.shape[1] > frames:
            raise ExportError(f"{spect.shape[1]} frames ({spect.shape[1] / 100:.1f} s) exceed the {frames} frames "
                              f"{self.path.name} was exported for: export again with --frames {spect.shape[1]}")
        x = np.zeros((1, 1, spect.shape[0], frames), np.float32)
        x[0, 0, :, : spect.shape[1]] = spect
        log_probs, out_len = self.graph(ms.Tensor(x), ms.Tensor(np.array([spect.shape[1]], np.int32)))
        return log_probs.asnumpy()[: int(out_len.asnumpy()[0]), 0]


def checkpoint_log_probs(net: DeepSpeech2, spect: np.ndarray) -> np.ndarray:
    """The same computation from the checkpoint network, unpadded, in PyNative mode: the parity reference."""
    net.set_train(False)
    logits, out_len = net(ms.Tensor(spect[None, None]), ms.Tensor(np.array([spect.shape[1]], np.int32)))
    return ops.log_softmax(logits, -1).asnumpy()[: int(out_len.asnumpy()[0]), 0]


def file_sizes(*paths: str | Path) -> dict[str, float]:
    """MB per file, for the notebook's size table."""
    return {Path(p).name: round(Path(p).stat().st_size / 1e6, 2) for p in paths}
