"""Evaluation and transcription survive bad files and keep what they decoded; datasets refuse what CTC cannot use."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ds2_helpers.dataset import SpeechData, ctc_min_frames
from ds2_helpers.features import AudioError
from ds2_helpers.labels import encode
from ds2_helpers.librispeech import ManifestError, read_manifest
from ds2_helpers.paths import data_dir, mini_corpus_dir

CHECKPOINT = data_dir() / "mini_pretrained.ckpt"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "ds2_helpers", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def corpus(request, tmp_path):
    """Six short utterances of the mini corpus copied into tmp_path (free to delete or cut), with a manifest."""
    source = mini_corpus_dir() / "dev.csv"
    if not source.exists():
        source = request.getfixturevalue("tiny_corpus") / "dev.csv"
    frame = read_manifest(source).sort_values("duration").head(6).reset_index(drop=True)
    (tmp_path / "audio").mkdir()
    frame["audio_path"] = [shutil.copy(p, tmp_path / "audio") for p in frame.audio_path]
    frame.to_csv(tmp_path / "dev.csv", index=False)
    return tmp_path / "dev.csv"


@pytest.fixture(scope="module")
def net():
    from ds2_helpers.checkpoint import load_model

    return load_model(str(CHECKPOINT))[0]


def cut(path, seconds):
    """Keep only the first `seconds` of an audio file (as if it had been damaged after the manifest)."""
    audio, rate = sf.read(path)
    sf.write(path, audio[: int(seconds * rate)], rate)


def one_row(transcript, duration):
    return pd.DataFrame([{"audio_path": "x.flac", "transcript": transcript, "duration": duration, "speaker": "1",
                          "chapter": "1", "utterance_id": "1-1-0000"}])


def test_ctc_needs_a_blank_between_repeated_letters():
    assert ctc_min_frames(encode("AA BB")) == 7 and ctc_min_frames(encode("AB")) == 2 and ctc_min_frames([]) == 0
    # 0.1 s gives 6 output frames: enough for 5 characters, not for 5 characters with two repeats
    data = SpeechData(pd.concat([one_row("AA BB", 0.1), one_row("AB CD", 0.1)], ignore_index=True))
    assert list(data.frame.transcript) == ["AB CD"]
    assert len(data.skipped) == 1 and "need 7 output frames" in data.skipped[0] and "repeated" in data.skipped[0]


def test_a_dataset_with_nothing_usable_says_why(corpus):
    with pytest.raises(ManifestError, match=r"dev.csv: no usable utterances \(6 longer than max_duration 0.1 s"):
        SpeechData(corpus, max_duration=0.1)
    with pytest.raises(ManifestError, match="1 with more characters than CTC can fit, e.g. x.flac: 5 characters"):
        SpeechData(one_row("AA BB", 0.1))
    assert len(SpeechData(one_row("AA BB", 0.1), allow_empty=True)) == 0


@pytest.mark.filterwarnings("ignore:.*upsampled")  # the 8 kHz copy below
def test_audio_must_still_match_the_manifest_duration(corpus):
    data = SpeechData(corpus, cache=False)
    assert all(data.features(i).shape[0] == 161 for i in range(len(data)))  # real files pass the check
    path = data.frame.audio_path[0]
    audio, rate = sf.read(path)  # resampled to 8 kHz and back on reading: still within the tolerance
    import librosa

    sf.write(path, librosa.resample(audio, orig_sr=rate, target_sr=8000), 8000)
    data.features(0)
    cut(path, data.frame.duration[0] / 2)
    with pytest.raises(ManifestError, match="manifest records") as err:
        data.features(0)
    assert str(err.value).startswith(path) and "python -m ds2_helpers manifest" in str(err.value)
    Path(data.frame.audio_path[1]).unlink()
    with pytest.raises(AudioError, match="no such audio file"):
        data.features(1)


def test_evaluate_skips_bad_files_and_writes_rows_as_it_goes(corpus, net, tmp_path):
    from ds2_helpers.evaluate import evaluate

    frame = read_manifest(corpus)  # sorted by duration: batches of two are [0, 1], [2, 3], [4, 5]
    gone, damaged = frame.audio_path[1], frame.audio_path[5]
    cut(damaged, 0.2)
    with pytest.raises(ManifestError, match="manifest records"):
        evaluate(net, SpeechData(corpus), batch_size=2, results_csv=tmp_path / "r.csv", strict=True)
    assert len(pd.read_csv(tmp_path / "r.csv")) == 4  # the first batches survive the failure in the last one

    Path(gone).unlink()
    reports = []
    results, summary = evaluate(net, SpeechData(corpus), batch_size=2, results_csv=tmp_path / "r.csv",
                                on_skip=reports.append)
    assert summary["utterances"] == len(results) == 4 and summary["skipped"] == 2  # their batch-mates decoded
    assert reports == summary["skipped_files"] and reports[0].startswith(f"{gone}: no such audio file")
    assert reports[1].startswith(f"{damaged}: the audio lasts 0.20 s but the manifest records")
    written = pd.read_csv(tmp_path / "r.csv", dtype={"speaker": str, "utterance_id": str}, keep_default_na=False)
    pd.testing.assert_frame_equal(written, results)


def test_evaluate_command_checks_out_first_and_reports_skips(corpus, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    run = cli("evaluate", "--checkpoint", CHECKPOINT, "--manifest", corpus, "--out", blocker / "eval")
    assert run.returncode == 2 and "Traceback" not in run.stderr and "decoding" not in run.stderr
    assert run.stderr.strip() == f"error: {blocker / 'eval'}: cannot write results there ({blocker} is a file, " \
                                 "not a folder); choose a folder you can write to"

    gone = read_manifest(corpus).audio_path[2]
    Path(gone).unlink()
    run = cli("evaluate", "--checkpoint", CHECKPOINT, "--manifest", corpus, "--out", tmp_path / "eval")
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"skipped: {gone}: no such audio file" in run.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["skipped"] == 1 and summary["skipped_files"][0].startswith(gone)
    assert summary["utterances"] == len(pd.read_csv(tmp_path / "eval" / "results.csv")) == 5

    run = cli("evaluate", "--checkpoint", CHECKPOINT, "--manifest", corpus, "--strict")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: {gone}: no such audio file")


def test_transcribe_reports_a_bad_file_and_goes_on(corpus, tmp_path):
    a, b, c = read_manifest(corpus).audio_path[:3]
    bad = tmp_path / "bad.wav"
    sf.write(bad, np.zeros(0, np.float32), 16000)
    run = cli("transcribe", "--checkpoint", CHECKPOINT, a, b, bad, c)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert [line.split("\t")[0] for line in run.stdout.splitlines()] == [a, b, c]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad}: the file holds no samples; record or export it again"]
