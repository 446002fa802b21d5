"""CTC decoding: greedy (best path) per utterance, respecting each utterance's true output length."""

from __future__ import annotations

import numpy as np

from ds2_helpers.errors import DecoderError

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


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax in NumPy (beam search wants log-probabilities)."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def beam_decoder(lm_path: str | None = None, *, alpha: float = 0.5, beta: float = 1.0, labels=LABELS):
    """A pyctcdecode beam-search decoder over our alphabet, optionally with a KenLM/ARPA language model."""
    import logging

    logging.getLogger("pyctcdecode").setLevel(logging.ERROR)  # import-time kenlm hint and upper-case warnings
    try:
        from pyctcdecode import build_ctcdecoder
    except ImportError as exc:
        raise DecoderError("beam search needs pyctcdecode: pip install pyctcdecode (or use --decoder greedy)") from exc
    if lm_path is not None:
        from pathlib import Path

        if not Path(lm_path).exists():
            raise DecoderError(f"{lm_path}: no such language model; download an ARPA/KenLM file "
                               "(e.g. LibriSpeech's 3-gram.pruned.3e-7.arpa) or leave --lm out")
        try:
            import kenlm  # noqa: F401
        except ImportError as exc:
            raise DecoderError("a language model needs the kenlm package: pip install kenlm (it compiles C++; "
                               "needs g++ and cmake), or decode without --lm") from exc
    vocab = ["" if ch == LABELS[BLANK_INDEX] else ch for ch in labels]  # pyctcdecode's blank is ""
    return build_ctcdecoder(vocab, kenlm_model_path=lm_path, alpha=alpha, beta=beta)


def beam_decode(logits: np.ndarray, lengths=None, *, decoder=None, beam_width: int = 32) -> list[str]:
    """Beam-search transcripts for time-major logits [T, N, C], each cut at its true output length."""
    decoder = decoder or beam_decoder()
    logits = np.asarray(logits, dtype=np.float32)
    n = logits.shape[1]
    lengths = np.full(n, logits.shape[0]) if lengths is None else np.asarray(lengths)
    out = []
    for k in range(n):
        text = decoder.decode(log_softmax(logits[: int(lengths[k]), k]), beam_width=beam_width)
        out.append(" ".join(text.split()))
    return out
