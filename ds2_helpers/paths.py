"""Where things live: one place, relative to the repository, overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def repo_path(*parts: str) -> Path:
    """Paths inside the repository, so notebooks never hold absolute personal paths."""
    return REPO.joinpath(*parts)


def data_dir() -> Path:
    """Committed small data (labels, mini checkpoint)."""
    return repo_path("data")


def corpora_dir() -> Path:
    """Generated corpora (ignored by git); DS2_CORPORA overrides."""
    return Path(os.environ.get("DS2_CORPORA", repo_path("corpora")))


def runs_dir() -> Path:
    """Training runs and benchmark outputs (ignored by git); DS2_RUNS overrides."""
    return Path(os.environ.get("DS2_RUNS", repo_path("runs")))


def mini_corpus_dir() -> Path:
    """The embedded mini corpus that `make workbook` builds."""
    return corpora_dir() / "mini"


def quick_mode() -> bool:
    """True under CI/tests (DS2_QUICK=1): notebooks shrink their runs to stay fast."""
    return os.environ.get("DS2_QUICK", "0").lower() not in ("", "0", "false", "no")
