"""The command line runs each long job and prints errors with the fix, not a traceback."""

import json
import subprocess
import sys

import pandas as pd
import pytest


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ds2_helpers", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=900)


def test_minicorpus_and_manifest_commands(tmp_path):
    run = cli("minicorpus", "--out", tmp_path / "c", "--speakers", "3", "--utterances-per-speaker", "2", "--quiet")
    assert run.returncode == 0, run.stderr
    assert "train: 2 utterances" in run.stdout and (tmp_path / "c" / "test.csv").exists()
    run = cli("manifest", "--root", tmp_path / "c", "--subset", "dev", "--out", tmp_path / "dev.csv",
              "--zoo-csv", tmp_path / "zoo.csv", "--quiet")
    assert run.returncode == 0, run.stderr
    assert len(pd.read_csv(tmp_path / "dev.csv")) == 2 and len((tmp_path / "zoo.csv").read_text().splitlines()) == 2
    # built again with other sizes: --overwrite replaces the build instead of mixing the two, keeping other files
    (tmp_path / "c" / "notes.txt").write_text("mine")
    run = cli("minicorpus", "--out", tmp_path / "c", "--speakers", "4", "--utterances-per-speaker", "1", "--quiet",
              "--overwrite")
    assert run.returncode == 0, run.stderr
    flacs = {split: len(list((tmp_path / "c" / split).rglob("*.flac"))) for split in ("train", "dev", "test")}
    assert flacs == {"train": 2, "dev": 1, "test": 1}, flacs  # the earlier 2-per-speaker files are gone
    assert len(pd.read_csv(tmp_path / "c" / "train.csv")) == 2 and (tmp_path / "c" / "notes.txt").read_text() == "mine"


def test_errors_name_the_fix_without_a_traceback(tmp_path):
    run = cli("manifest", "--root", tmp_path, "--subset", "dev-clean", "--out", tmp_path / "x.csv")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "librispeech download --subset dev-clean" in run.stderr
    run = cli("evaluate", "--checkpoint", tmp_path / "none.ckpt", "--manifest", tmp_path / "x.csv")
    assert run.returncode == 2 and "no such checkpoint" in run.stderr and "Traceback" not in run.stderr


def test_train_resume_and_evaluate(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--preset", "mini", "--manifest", tiny_corpus / "train.csv", "--batch-size", "4",
            "--mode", "pynative", "--save-every", "2", "--out", out]
    run = cli(*args, "--max-steps", "2")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "step 2/9 (global 2) loss" in run.stdout and (out / "ds2-step0000002.ckpt").exists()
    run = cli(*args, "--max-steps", "3", "--resume")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "resuming at epoch 1, step 2" in run.stdout and "(global 3)" in run.stdout
    assert json.loads((out / "config.json").read_text())["model"]["hidden_size"] == 192
    run = cli("evaluate", "--checkpoint", out / "final.ckpt", "--manifest", tiny_corpus / "test.csv",
              "--out", tmp_path / "eval")
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    results = pd.read_csv(tmp_path / "eval" / "results.csv", keep_default_na=False)
    assert summary["utterances"] == len(results) == 6 and summary["rtf"] > 0
    import jiwer

    from ds2_helpers.checkpoint import load_model
    from ds2_helpers.evaluate import transcribe

    # the hypotheses are what the checkpoint transcribes, and the scores are jiwer's over them
    from ds2_helpers.librispeech import read_manifest

    net, spect = load_model(str(out / "final.ckpt"))
    audio = read_manifest(tiny_corpus / "test.csv").set_index("utterance_id").audio_path[results.utterance_id]
    assert results.hypothesis.tolist() == transcribe(net, audio.tolist(), spect)
    assert summary["cer"] == pytest.approx(jiwer.cer(results.reference.tolist(), results.hypothesis.tolist()))
    assert summary["wer"] == pytest.approx(jiwer.wer(results.reference.tolist(), results.hypothesis.tolist()))


def test_transcribe_any_sample_rate_and_clear_errors(tiny_corpus, tmp_path):
    import numpy as np
    import soundfile as sf

    from ds2_helpers.librispeech import read_manifest
    from ds2_helpers.paths import data_dir

    row = read_manifest(tiny_corpus / "test.csv").iloc[0]
    audio, rate = sf.read(row.audio_path)
    import librosa

    sf.write(tmp_path / "at8k.wav", librosa.resample(audio, orig_sr=rate, target_sr=8000), 8000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    ckpt = data_dir() / "mini_pretrained.ckpt"
    run = cli("transcribe", "--checkpoint", ckpt, tmp_path / "at8k.wav")
    assert run.returncode == 0, run.stderr[-2000:]
    text = run.stdout.strip().split("\t")[1]
    assert len(text) > 5 and set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")
    run = cli("transcribe", "--checkpoint", ckpt, tmp_path / "empty.wav")
    assert run.returncode == 2 and "empty.wav" in run.stderr and "Traceback" not in run.stderr
