"""The 29-symbol alphabet of the model zoo's labels.json, text normalisation and encoding."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

from ds2_helpers.paths import data_dir

#: The model zoo's order: apostrophe, A-Z, space, CTC blank last (index 28).
LABELS: tuple[str, ...] = ("'",) + tuple(chr(c) for c in range(ord("A"), ord("Z") + 1)) + (" ", "_")
BLANK = "_"
BLANK_INDEX = LABELS.index(BLANK)
SPACE_INDEX = LABELS.index(" ")
_INDEX = {ch: i for i, ch in enumerate(LABELS)}
_SPEAKABLE = set(LABELS) - {BLANK}


class LabelError(ValueError):
    """A transcript holds characters the alphabet cannot represent."""


def load_labels(path: str | Path | None = None) -> tuple[str, ...]:
    """Read a labels.json and check it matches the pretrained output layer's order."""
    path = Path(path) if path else data_dir() / "labels.json"
    labels = tuple(json.loads(Path(path).read_text(encoding="utf-8")))
    if labels != LABELS:
        raise LabelError(f"{path}: labels differ from the model zoo order {''.join(LABELS)!r}; "
                         "the pretrained output layer would be misaligned. Restore data/labels.json.")
    return labels


def normalise_text(text: str) -> str:
    """Upper-case, fold accents and typographic apostrophes, squeeze spaces: LibriSpeech style."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    text = re.sub(r"[\t\r\n-]+", " ", text.upper())
    return re.sub(" +", " ", text).strip()


def unknown_characters(text: str) -> set[str]:
    """Characters of a normalised transcript the model cannot emit (the model zoo silently drops them)."""
    return set(text) - _SPEAKABLE


def encode(text: str, *, strict: bool = True) -> list[int]:
    """Map a transcript to label indices; unknown characters raise (strict) or are dropped."""
    text = normalise_text(text)
    bad = unknown_characters(text)
    if bad and strict:
        raise LabelError(f"characters outside the alphabet: {''.join(sorted(bad))!r} in {text!r}")
    return [_INDEX[c] for c in text if c in _SPEAKABLE]


def decode(indices) -> str:
    """Map label indices back to text (no CTC collapsing: see ds2_helpers.decode for that)."""
    return "".join(LABELS[int(i)] for i in indices if int(i) != BLANK_INDEX)
