"""Run a model over a manifest: transcripts, per-utterance errors and corpus WER/CER."""

from __future__ import annotations

import time

import mindspore as ms
import numpy as np
import pandas as pd

from ds2_helpers import metrics
from ds2_helpers.dataset import SpeechData, make_batches
from ds2_helpers.decode import greedy_decode
from ds2_helpers.model import DeepSpeech2


def predict(net: DeepSpeech2, data: SpeechData, batch_size: int = 16, progress: bool = False) -> pd.DataFrame:
    """Greedy transcripts for every utterance of `data` (inference mode, length-sorted batches)."""
    from tqdm.auto import tqdm

    net.set_train(False)
    rows = []
    for idx in tqdm(make_batches(data.durations, batch_size, order="sorted"), desc="decoding", disable=not progress):
        batch = data.batch(idx)
        logits, out_len = net(ms.Tensor(batch.x), ms.Tensor(batch.x_len))
        for k, text in zip(idx, greedy_decode(logits.asnumpy(), out_len.asnumpy())):
            rows.append({"utterance_id": data.frame.utterance_id[k], "speaker": data.frame.speaker[k],
                         "duration": float(data.frame.duration[k]), "reference": data.frame.transcript[k],
                         "hypothesis": text})
    return pd.DataFrame(rows)


def score(results: pd.DataFrame) -> dict[str, float]:
    """Corpus WER, CER (jiwer) and the model zoo's space-free CER."""
    refs, hyps = list(results.reference), list(results.hypothesis)
    return {"wer": metrics.wer(refs, hyps), "cer": metrics.cer(refs, hyps), "cer_zoo": metrics.cer_zoo(refs, hyps),
            "utterances": int(len(results)), "audio_seconds": float(results.duration.sum())}


def evaluate(net: DeepSpeech2, data: SpeechData, batch_size: int = 16, progress: bool = False
             ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Transcribe and score; the summary carries the real-time factor of the whole pass."""
    t0 = time.perf_counter()
    results = predict(net, data, batch_size, progress)
    elapsed = time.perf_counter() - t0
    summary = score(results)
    summary["seconds"] = elapsed
    summary["rtf"] = elapsed / max(summary["audio_seconds"], 1e-9)
    import jiwer

    results["cer"] = [jiwer.cer(r, h) for r, h in zip(results.reference, results.hypothesis)]
    results["wer"] = [jiwer.wer(r, h) for r, h in zip(results.reference, results.hypothesis)]
    return results, summary
