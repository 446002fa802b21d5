"""The one atomic writer: a temporary file in the target's folder, then a rename, so readers never see half a file.

Manifests, results, cached features and JSON summaries go through `atomic_write`; checkpoints use the same
temp-and-rename scheme around MindSpore's own writer (ds2_helpers.checkpoint.save)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable, *, binary: bool = False) -> Path:
    """Call `write(fh)` on a temporary file beside `path`, then rename it into place (the umask decides the mode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files; give what a plain open() would
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda fh: fh.write(text))
