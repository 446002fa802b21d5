"""Run a model over a manifest: transcripts, per-utterance errors and corpus WER/CER."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import mindspore as ms
import numpy as np
import pandas as pd

from ds2_helpers import metrics
from ds2_helpers.config import ParameterError
from ds2_helpers.dataset import SpeechData, make_batches
from ds2_helpers.decode import beam_decode, beam_decoder, greedy_decode
from ds2_helpers.features import AudioError
from ds2_helpers.librispeech import ManifestError
from ds2_helpers.model import DeepSpeech2

RESULT_COLUMNS = ["utterance_id", "speaker", "duration", "reference", "hypothesis", "cer", "wer"]


def decode_batches(net: DeepSpeech2, data: SpeechData, batch_size: int = 16, progress: bool = False, *,
                   decoder: str = "greedy", beam_width: int = 32, lm_path: str | None = None, pad_multiple: int = 1,
                   batch_seconds: float | None = None, strict: bool = True, mode: str = "graph"):
    """Yield (rows, skipped) per batch: a result row per decoded utterance and a message naming each file that
    could not be used (missing, unreadable, not the manifest's length). Its batch still decodes the others;
    `strict` raises the first such error instead. Batches as in `predict`; `mode` as in `inference.forward`."""
    from tqdm.auto import tqdm

    from ds2_helpers.inference import forward

    run = forward(net, mode)
    beam = beam_decoder(lm_path) if decoder == "beam" else None
    batches = make_batches(data.durations, batch_size, batch_seconds=batch_seconds or None, order="sorted")
    for idx in tqdm(batches, desc="decoding", disable=not progress):
        good, feats, skipped = [], [], []
        for i in idx:
            try:
                feats.append(data.features(i))
                good.append(i)
            except (AudioError, ManifestError) as exc:
                if strict:
                    raise
                skipped.append(_naming(data.frame.audio_path[i], exc))
        rows = []
        if good:
            batch = data.batch(good, pad_multiple=pad_multiple, feats=feats)
            logits, out_len = run(ms.Tensor(batch.x), ms.Tensor(batch.x_len))
            texts = (beam_decode(logits.asnumpy(), out_len.asnumpy(), decoder=beam, beam_width=beam_width) if beam
                     else greedy_decode(logits.asnumpy(), out_len.asnumpy()))
            for k, text in zip(good, texts):
                rows.append({"utterance_id": data.frame.utterance_id[k], "speaker": data.frame.speaker[k],
                             "duration": float(data.frame.duration[k]), "reference": data.frame.transcript[k],
                             "hypothesis": text})
        yield rows, skipped


def _naming(path, exc: Exception) -> str:
    """The error's message, starting with the file it is about."""
    return str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"


def predict(net: DeepSpeech2, data: SpeechData, batch_size: int = 16, progress: bool = False, *,
            decoder: str = "greedy", beam_width: int = 32, lm_path: str | None = None, pad_multiple: int = 1,
            batch_seconds: float | None = None, mode: str = "graph") -> pd.DataFrame:
    """Transcripts for every utterance of `data` (inference mode, length-sorted batches, greedy or beam;
    `pad_multiple` > 1 gives fewer shapes, so fewer graph compilations; `batch_seconds` sizes batches by
    padded audio, so test-clean's 35-second utterances come in small batches and short ones in large)."""
    rows = []
    for batch_rows, _ in decode_batches(net, data, batch_size, progress, decoder=decoder, beam_width=beam_width,
                                        lm_path=lm_path, pad_multiple=pad_multiple, batch_seconds=batch_seconds,
                                        mode=mode):
        rows += batch_rows
    return pd.DataFrame(rows)


def score(results: pd.DataFrame) -> dict[str, float]:
    """Corpus WER, CER (jiwer) and the model zoo's space-free CER."""
    refs, hyps = list(results.reference), list(results.hypothesis)
    return {"wer": metrics.wer(refs, hyps), "cer": metrics.cer(refs, hyps), "cer_zoo": metrics.cer_zoo(refs, hyps),
            "utterances": int(len(results)), "audio_seconds": float(results.duration.sum())}


def evaluate(net: DeepSpeech2, data: SpeechData, batch_size: int = 16, progress: bool = False, *,
             strict: bool = False, results_csv: str | Path | None = None, on_skip=None,
             earlier: pd.DataFrame | None = None, **decoding) -> tuple[pd.DataFrame, dict]:
    """Transcribe and score; the summary carries the real-time factor of the whole pass.

    A file that cannot be used is skipped: reported to `on_skip(message)` (default: a `skipped: ...` line on
    stderr) and listed in summary["skipped_files"] (summary["skipped"] counts them); `strict` raises instead.
    `results_csv` receives each batch's rows as soon as they are decoded, so an interrupted pass keeps them.
    `earlier`: the rows an interrupted pass wrote (`data` then holds the rest): new rows are appended after them
    and the scores cover both; the real-time factor is this pass's."""
    import jiwer

    report = on_skip or (lambda msg: print(f"skipped: {msg}", file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    rows, skipped = [], []
    open_mode = "a" if earlier is not None and len(earlier) else "w"
    sink = open(results_csv, open_mode, newline="", encoding="utf-8") if results_csv else None  # noqa: SIM115
    try:
        for batch_rows, batch_skipped in decode_batches(net, data, batch_size, progress, strict=strict, **decoding):
            for row in batch_rows:
                row.update(cer=jiwer.cer(row["reference"], row["hypothesis"]),
                           wer=jiwer.wer(row["reference"], row["hypothesis"]))
            for msg in batch_skipped:
                report(msg)
            rows += batch_rows
            skipped += batch_skipped
            if sink:
                pd.DataFrame(batch_rows, columns=RESULT_COLUMNS).to_csv(sink, header=sink.tell() == 0, index=False)
                sink.flush()
    finally:
        if sink:
            sink.close()
    elapsed = time.perf_counter() - t0
    before = 0 if earlier is None else len(earlier)
    if not rows and not before:
        raise AudioError(f"none of the {len(data)} utterances could be used ({len(skipped)} skipped), e.g. "
                         + "; ".join(skipped[:3]))
    new = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    results = pd.concat([earlier[RESULT_COLUMNS], new], ignore_index=True) if before else new
    summary = score(results)
    decoded = float(new.duration.sum())
    summary.update(seconds=elapsed, rtf=elapsed / decoded if decoded else None, skipped=len(skipped),
                   skipped_files=skipped, resumed_with=before)
    return results, summary


def earlier_results(out: Path, *, resume: bool, overwrite: bool) -> pd.DataFrame | None:
    """The rows an earlier evaluation left in `out`/results.csv: kept and continued (`resume`), replaced
    (`overwrite`), else a refusal - an evaluation of a full dev set is hours of CPU time."""
    path = Path(out) / "results.csv"
    if not path.exists() or path.stat().st_size == 0:
        return None
    if overwrite:
        return None
    raw = path.read_bytes()
    if resume and not raw.endswith(b"\n"):  # a kill or a full disk cut the last row: decode it again
        from ds2_helpers.atomic import atomic_write

        atomic_write(path, lambda fh: fh.write(raw[: raw.rfind(b"\n") + 1]), binary=True)
        print(f"{path}: its last row was cut off; it is decoded again", file=sys.stderr)
    try:
        rows = pd.read_csv(path, keep_default_na=False, dtype={"utterance_id": str, "speaker": str})
    except (ValueError, OSError) as exc:
        raise ParameterError(f"{path}: unreadable earlier results ({exc}); pass --overwrite to start again") from exc
    if not resume:
        raise ParameterError(f"{path}: holds {len(rows)} results of an earlier evaluation; continue it with "
                             "--resume (decodes only the rest), choose another --out, or pass --overwrite")
    missing = [c for c in RESULT_COLUMNS if c not in rows]
    if missing:
        raise ParameterError(f"{path}: not a results file of `evaluate` (no {', '.join(missing)}); pass "
                             "--overwrite or choose another --out")
    return rows


def check_same_evaluation(out: Path, now: dict, *, resume: bool) -> None:
    """evaluation.json in `out` records what the results are of (checkpoint, manifest, decoder); a resume with
    anything else would mix two evaluations in one results.csv."""
    import json

    from ds2_helpers.atomic import atomic_write_text
    from ds2_helpers.run_folder import differences

    path = Path(out) / "evaluation.json"
    if resume and path.exists():
        diffs = differences(json.loads(path.read_text()), now)
        if diffs:
            raise ParameterError(f"{out}: cannot resume, its results are of another evaluation: " + "; ".join(diffs)
                                 + "; use the same arguments, another --out, or --overwrite")
    atomic_write_text(path, json.dumps(now, indent=2))


def writable_folder(folder: str | Path, files: tuple[str, ...] = ("results.csv", "summary.json")) -> Path:
    """`folder`, created if needed, after a probe file showed it takes `files`: checked before hours of
    decoding depend on it. ParameterError naming the folder otherwise."""
    from ds2_helpers.atomic import check_writable, file_in_the_way

    folder = Path(folder)
    try:
        for name in files:
            check_writable(folder / name)  # creates the folder, probes it, refuses a folder in the file's place
            if (folder / name).exists() and not os.access(folder / name, os.W_OK):
                raise PermissionError(f"{folder / name} cannot be overwritten")
    except OSError as exc:
        blocker = file_in_the_way(folder / files[0])  # the folder itself or one above it
        reason = f"{blocker} is a file, not a folder" if blocker else exc.strerror or str(exc)
        raise ParameterError(f"{folder}: cannot write results there ({reason}); choose a folder you can "
                             "write to") from exc
    return folder


def worst(results: pd.DataFrame, n: int = 5, by: str = "cer") -> pd.DataFrame:
    """The n utterances with the highest error, with a character alignment to read where it went wrong."""
    import jiwer

    rows = results.sort_values([by, "duration"], ascending=[False, False]).head(n).copy()
    rows["alignment"] = [jiwer.visualize_alignment(jiwer.process_characters(r, h), show_measures=False)
                         .split("\n", 1)[-1].strip() for r, h in zip(rows.reference, rows.hypothesis)]
    return rows[["utterance_id", "speaker", "duration", by, "reference", "hypothesis", "alignment"]]


def transcribe_each(net: DeepSpeech2, paths: list, spect=None, *, decoder: str = "greedy", mode: str = "graph"):
    """Yield (path, transcript) per audio file as soon as it is decoded, or (path, AudioError) for a file that
    cannot be read, then go on with the next one. `mode` as in `inference.forward`."""
    from ds2_helpers.config import SpectConfig
    from ds2_helpers.features import load_audio, spectrogram
    from ds2_helpers.inference import forward

    spect = spect or SpectConfig()
    beam = beam_decoder() if decoder == "beam" else None
    run = forward(net, mode)
    for path in paths:
        try:
            feats = spectrogram(load_audio(path, spect.sample_rate, min_seconds=0.1), spect)
        except AudioError as exc:
            yield path, exc
            continue
        logits, out_len = run(ms.Tensor(feats[None, None]), ms.Tensor(np.array([feats.shape[1]], np.int32)))
        logits, out_len = logits.asnumpy(), out_len.asnumpy()
        yield path, (beam_decode(logits, out_len, decoder=beam) if beam else greedy_decode(logits, out_len))[0]


def transcribe(net: DeepSpeech2, paths: list, spect=None, *, decoder: str = "greedy", mode: str = "graph") -> list[str]:
    """Transcripts of audio files (any soundfile format and rate; resampled to 16 kHz); a bad file raises its
    AudioError."""
    texts = []
    for _, text in transcribe_each(net, paths, spect, decoder=decoder, mode=mode):
        if isinstance(text, Exception):
            raise text
        texts.append(text)
    return texts
