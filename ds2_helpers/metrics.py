"""WER and CER with jiwer, plus the model zoo's CER convention (spaces removed) for comparison."""

from __future__ import annotations

import jiwer


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus word error rate: total word edits / total reference words."""
    return float(jiwer.wer(references, hypotheses))


def cer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus character error rate as jiwer computes it (spaces count as characters)."""
    return float(jiwer.cer(references, hypotheses))


def cer_zoo(references: list[str], hypotheses: list[str]) -> float:
    """CER as the model zoo's eval.py reports it: spaces removed, total edits / total reference characters."""
    return float(jiwer.cer([r.replace(" ", "") for r in references], [h.replace(" ", "") for h in hypotheses]))
