"""CTC decoding: greedy (best path) per utterance, respecting each utterance's true output length."""

from __future__ import annotations

import numpy as np

from ds2_helpers.labels import BLANK_INDEX, LABELS


def greedy_indices(logits: np.ndarray, length: int | None = None, blank: int = BLANK_INDEX) -> list[int]:
    """Best path of one utterance [T, C]: argmax per frame, merge repeats, drop blanks."""
    path = np.asarray(logits)[: length if length is not None else len(logits)].argmax(axis=-1)
    keep = np.ones(len(path), dtype=bool)
    keep[1:] = path[1:] != path[:-1]
    return [int(i) for i in path[keep] if i != blank]


def greedy_decode(logits: np.ndarray, lengths=None, labels=LABELS) -> list[str]:
    """Transcripts for a batch of time-major logits [T, N, C] and output lengths [N]."""
    logits = np.asarray(logits)
    n = logits.shape[1]
    lengths = np.full(n, logits.shape[0]) if lengths is None else np.asarray(lengths)
    texts = []
    for k in range(n):
        text = "".join(labels[i] for i in greedy_indices(logits[:, k], int(lengths[k])))
        texts.append(" ".join(text.split()))
    return texts
