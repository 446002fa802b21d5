"""A training run's folder: one run per folder, what a killed write left cleaned away, a resume checked against
the run it continues, and config.json keeping the history of every start and resume.

A course server is shared and a run takes days: `train --out DIR` into a folder that held another run used to
overwrite its checkpoints, mix both runs in metrics.csv and let pruning delete the new run's checkpoints; a
`--resume` with another batch size silently skipped part of the epoch. These checks make both a refusal that
names the fix."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from ds2_helpers.atomic import atomic_write_text, is_leftover
from ds2_helpers.config import AugmentConfig, to_dict

RUN_PATTERNS = ("ds2-step*.ckpt", "ds2-step*.ckpt.corrupt", "final*.ckpt", "metrics*.csv", "config.json")
"""What `train` writes in its folder (--overwrite removes these and nothing else)."""
IGNORED = ("logs",)  # msrun's --log_dir may sit inside the run folder before the workers start
TRAIN_KEYS = ("batch_size", "batch_seconds", "seed", "sortagrad")
"""TrainConfig fields that decide which utterances make each step: a resume must keep them (and `augment`, what
is done to them, compared field by field as `train.augment.<field>`)."""
UPDATE_KEYS = ("optimizer", "schedule", "warmup_steps", "warmup_fraction", "schedule_steps")
"""TrainConfig fields that decide the update rule and the rate of each step: a resume must keep them too. A
checkpoint written before they existed was trained with their defaults (Adam, the per-epoch anneal)."""
SGD_KEYS = ("momentum", "nesterov")
"""Compared only when both runs use SGD (Adam and LAMB ignore them)."""


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked, with the way out."""


def remove_stale_temps(out: str | Path) -> list[Path]:
    """Delete the hidden temporary files an interrupted checkpoint write left (full size, read-only)."""
    out = Path(out)
    stale = [p for p in out.iterdir() if is_leftover(p)] if out.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def run_files(out: str | Path) -> list[Path]:
    """The files of an earlier run in `out` (checkpoints, metrics, config)."""
    out = Path(out)
    return sorted({p for pattern in RUN_PATTERNS for p in out.glob(pattern)}) if out.is_dir() else []


def check_out(out: str | Path, *, resume: bool, overwrite: bool) -> list[Path]:
    """Refuse a folder that holds an earlier run's checkpoints unless the run continues (--resume) or replaces
    it (--overwrite). Returns the run files to delete before training starts (`remove`, called once every
    other argument has been checked): --overwrite's, or the config and metrics of a start that never reached
    a checkpoint."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out}: is a file, not a folder; choose another --out")
    if not out.is_dir() or resume:
        return []
    files = run_files(out)
    ckpts = [p for p in files if ".ckpt" in p.name]
    if ckpts and not overwrite:
        shown = ", ".join(p.name for p in files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
        raise RunFolderError(f"{out}: holds an earlier run ({len(ckpts)} checkpoint(s); {shown}); continue it with "
                             "--resume, choose another --out, or pass --overwrite to delete its checkpoints and "
                             "metrics and start again")
    return files


def remove(files: list[Path]) -> None:
    """Delete what `check_out` listed."""
    for p in files:
        p.unlink(missing_ok=True)


def manifest_fingerprint(path: str | Path) -> dict[str, Any]:
    """Absolute path and SHA-256 of a manifest: the same file with other rows is another run."""
    path = Path(path).resolve()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "sha256": digest.hexdigest()}


def identity(model: dict, train: dict, spect: dict, data: dict) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (flat `section.field` keys).
    The convolution implementation is left out: both compute the same network from the same weights."""
    ident = {f"model.{k}": v for k, v in model.items() if k != "conv"}
    ident.update({f"spect.{k}": v for k, v in spect.items()})
    ident.update({f"train.{k}": train.get(k) for k in TRAIN_KEYS})
    defaults = _train_defaults()
    keys = UPDATE_KEYS + (SGD_KEYS if train.get("optimizer") == "sgd" else ())
    ident.update({f"train.{k}": train.get(k, defaults[k]) for k in keys})
    # augmentation decides what each step sees; a checkpoint written before it existed trained without it
    augment = {**to_dict(AugmentConfig()), **(train.get("augment") or {})}
    ident.update({f"train.augment.{k}": v for k, v in augment.items()})
    ident.update({f"data.{k}": v for k, v in data.items()})
    return ident


def _train_defaults() -> dict[str, Any]:
    """TrainConfig's defaults: what a checkpoint that lacks a newer field was trained with."""
    from dataclasses import fields

    from ds2_helpers.config import TrainConfig

    return {f.name: f.default for f in fields(TrainConfig)}


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: checkpoint X, now Y` for every shared key that differs (keys older checkpoints lack are skipped)."""
    def norm(v):
        return list(v) if isinstance(v, tuple) else v

    return [f"{k}: checkpoint {saved[k]!r}, now {now[k]!r}" for k in now
            if k in saved and norm(saved[k]) != norm(now[k])]


def check_resume(meta: dict, now: dict[str, Any], checkpoint: Path, *, allow: bool) -> list[str]:
    """Compare a checkpoint's recorded run with this one; refuse (unless `allow`) naming each difference."""
    saved = identity(meta.get("model", {}), meta.get("train", {}), meta.get("spect", {}), meta.get("data", {}))
    diffs = differences(saved, now)
    if diffs and not allow:
        raise RunFolderError(f"{checkpoint}: cannot resume, this run differs from the checkpoint's: "
                             + "; ".join(diffs) + ". Resume with the checkpoint's settings, start a new run "
                             "in another --out, or pass --allow-changes (config.json records them)")
    return diffs


def write_config(out: str | Path, entry: dict[str, Any]) -> Path:
    """config.json: this start's configuration on top, every earlier start or resume kept under "history"."""
    path = Path(out) / "config.json"
    history: list[dict] = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
            history = old.pop("history", [])
            history.append(old)
        except (OSError, ValueError):  # an unreadable config.json is replaced, its history lost with it
            history = []
    entry = {**entry, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "history": history}
    return atomic_write_text(path, json.dumps(entry, indent=2))
