"""The one atomic writer: a temporary file in the target's folder, then a rename, so readers never see half a file.

Manifests, results, cached features and JSON summaries go through `atomic_write` (a file handle); checkpoints
through `atomic_write_path` (a temporary path for MindSpore's own writer, ds2_helpers.checkpoint.save). Either
way a failed or interrupted write removes its temporary file, and the file gets the mode the umask gives."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


TEMP_SUFFIX = ".tmp"


def is_leftover(path: Path) -> bool:
    """A temporary file of this module (`.<name>.<random>.tmp...`) that a kill or a full disk left behind."""
    return path.is_file() and path.name.startswith(".") and TEMP_SUFFIX in path.name


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask  # what a plain open() would give


def atomic_write_path(path: str | Path, write: Callable[[Path], None], *, suffix: str = TEMP_SUFFIX) -> Path:
    """Call `write(tmp_path)` for a temporary path beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600 files, MindSpore read-only ones
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write(path: str | Path, write: Callable, *, binary: bool = False) -> Path:
    """Call `write(fh)` on a temporary file beside `path`, then rename it into place."""
    def to_path(tmp: Path) -> None:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as fh:
            write(fh)

    return atomic_write_path(path, to_path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda fh: fh.write(text))


def atomic_savefig(fig, path: str | Path, *, close: bool = True, **kwargs) -> Path:
    """Save a matplotlib figure atomically (the format from the path's suffix), then close it unless `close` is
    False; `kwargs` go to `savefig` (dpi, bbox_inches)."""
    path = Path(path)
    atomic_write_path(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs),
                      suffix=path.suffix or ".png")
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def write_report(out: str | Path, stem: str, record: dict, frame, fig, *, png: str | None = None, indent: int = 1,
                 **savefig) -> dict[str, Path]:
    """A measurement's three files in `out`, each written atomically: STEM.json (`record`), STEM.csv (`frame`, a
    pandas table) and STEM.png or `png` (`fig`, closed after; `savefig` goes to `atomic_savefig`). Returns their
    paths."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {kind: out / f"{stem}.{kind}" for kind in ("json", "csv", "png")}
    files["png"] = out / (png or files["png"].name)
    atomic_write_text(files["json"], json.dumps(record, indent=indent))
    atomic_write_text(files["csv"], frame.to_csv(index=False))
    atomic_savefig(fig, files["png"], **savefig)
    return files


def check_writable(path: str | Path) -> Path:
    """Before long work whose result goes to `path`: create its folder and write a probe file there, so a
    missing permission or a file in the way fails now (as the OSError naming the path), not hours later."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
    os.close(fd)
    os.unlink(probe)
    return path


def file_in_the_way(path: str | Path) -> Path | None:
    """The file standing where one of `path`'s folders should be (None when there is none)."""
    return next((p for p in Path(path).parents if p.is_file()), None)


class ExistingResultError(FileExistsError):
    """A command's result would replace an earlier one (a measurement, a model): its message names the file
    and the ways out."""


def check_new(path: str | Path, *, overwrite: bool, what: str = "an earlier result") -> Path:
    """Before long work whose result goes to `path`: refuse to replace it unless `overwrite` (hours of
    measurement or training would be lost silently), and refuse a file where a folder should be; then
    `check_writable`. ExistingResultError names the path and the fix."""
    path = Path(path)
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise ExistingResultError(f"{blocker}: is a file, not a folder; choose another --out")
    if path.is_dir():
        raise ExistingResultError(f"{path}: is a folder; give --out a file name (e.g. one inside it)")
    if path.exists() and not overwrite:
        raise ExistingResultError(f"{path}: holds {what}; choose another --out, or pass --overwrite to replace it")
    return check_writable(path)
