"""Run a model over a manifest: transcripts, per-utterance errors and corpus WER/CER."""

from __future__ import annotations

import time

import mindspore as ms
import numpy as np
import pandas as pd

from ds2_helpers import metrics
from ds2_helpers.dataset import SpeechData, make_batches
from ds2_helpers.decode import beam_decode, beam_decoder, greedy_decode
from ds2_helpers.model import DeepSpeech2


def predict(net: DeepSpeech2, data: SpeechData, batch_size: int = 16, progress: bool = False, *,
            decoder: str = "greedy", beam_width: int = 32, lm_path: str | None = None, pad_multiple: int = 1,
            batch_seconds: float | None = None) -> pd.DataFrame:
    """Transcripts for every utterance of `data` (inference mode, length-sorted batches, greedy or beam;
    `pad_multiple` > 1 gives fewer shapes, so fewer graph compilations; `batch_seconds` sizes batches by
    padded audio, so test-clean's 35-second utterances come in small batches and short ones in large)."""
    from tqdm.auto import tqdm

    net.set_train(False)
    beam = beam_decoder(lm_path) if decoder == "beam" else None
    rows = []
    batches = make_batches(data.durations, batch_size, batch_seconds=batch_seconds or None, order="sorted")
    for idx in tqdm(batches, desc="decoding", disable=not progress):
        batch = data.batch(idx, pad_multiple=pad_multiple)
        logits, out_len = net(ms.Tensor(batch.x), ms.Tensor(batch.x_len))
        texts = (beam_decode(logits.asnumpy(), out_len.asnumpy(), decoder=beam, beam_width=beam_width) if beam
                 else greedy_decode(logits.asnumpy(), out_len.asnumpy()))
        for k, text in zip(idx, texts):
            rows.append({"utterance_id": data.frame.utterance_id[k], "speaker": data.frame.speaker[k],
                         "duration": float(data.frame.duration[k]), "reference": data.frame.transcript[k],
                         "hypothesis": text})
    return pd.DataFrame(rows)


def score(results: pd.DataFrame) -> dict[str, float]:
    """Corpus WER, CER (jiwer) and the model zoo's space-free CER."""
    refs, hyps = list(results.reference), list(results.hypothesis)
    return {"wer": metrics.wer(refs, hyps), "cer": metrics.cer(refs, hyps), "cer_zoo": metrics.cer_zoo(refs, hyps),
            "utterances": int(len(results)), "audio_seconds": float(results.duration.sum())}


def evaluate(net: DeepSpeech2, data: SpeechData, batch_size: int = 16, progress: bool = False, **decoding
             ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Transcribe and score; the summary carries the real-time factor of the whole pass."""
    t0 = time.perf_counter()
    results = predict(net, data, batch_size, progress, **decoding)
    elapsed = time.perf_counter() - t0
    summary = score(results)
    summary["seconds"] = elapsed
    summary["rtf"] = elapsed / max(summary["audio_seconds"], 1e-9)
    import jiwer

    results["cer"] = [jiwer.cer(r, h) for r, h in zip(results.reference, results.hypothesis)]
    results["wer"] = [jiwer.wer(r, h) for r, h in zip(results.reference, results.hypothesis)]
    return results, summary


def worst(results: pd.DataFrame, n: int = 5, by: str = "cer") -> pd.DataFrame:
    """The n utterances with the highest error, with a character alignment to read where it went wrong."""
    import jiwer

    rows = results.sort_values([by, "duration"], ascending=[False, False]).head(n).copy()
    rows["alignment"] = [jiwer.visualize_alignment(jiwer.process_characters(r, h), show_measures=False)
                         .split("\n", 1)[-1].strip() for r, h in zip(rows.reference, rows.hypothesis)]
    return rows[["utterance_id", "speaker", "duration", by, "reference", "hypothesis", "alignment"]]


def transcribe(net: DeepSpeech2, paths: list, spect=None, *, decoder: str = "greedy") -> list[str]:
    """Transcripts of audio files (any soundfile format and rate; resampled to 16 kHz)."""
    from ds2_helpers.config import SpectConfig
    from ds2_helpers.features import load_audio, spectrogram

    spect = spect or SpectConfig()
    beam = beam_decoder() if decoder == "beam" else None
    net.set_train(False)
    texts = []
    for path in paths:
        feats = spectrogram(load_audio(path, spect.sample_rate, min_seconds=0.1), spect)
        logits, out_len = net(ms.Tensor(feats[None, None]), ms.Tensor(np.array([feats.shape[1]], np.int32)))
        logits, out_len = logits.asnumpy(), out_len.asnumpy()
        texts += beam_decode(logits, out_len, decoder=beam) if beam else greedy_decode(logits, out_len)
    return texts
