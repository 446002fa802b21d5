"""The real job at scale: batches by audio seconds, bounded memory over an epoch of long utterances, the plan,
the preflight, the on-disk feature cache and the LibriSpeech-shaped rehearsal corpus."""

import json

import numpy as np
import pandas as pd
import pytest

from ds2_helpers.dataset import SpeechData, cut_batches, make_batches
from ds2_helpers.plan import (MemoryFit, PreflightError, format_plan, largest_batch, make_plan, padded_seconds,
                               preflight)


def test_batches_by_padded_seconds_keep_the_budget_and_the_upper_bound():
    rng = np.random.default_rng(0)
    durations = rng.uniform(1, 25, 300)
    batches = make_batches(durations, 64, batch_seconds=100, padded=padded_seconds, order="sorted")
    assert sorted(i for b in batches for i in b) == list(range(300))
    for b in batches:
        assert len(b) * max(padded_seconds(durations[i]) for i in b) <= 100 or len(b) == 1
    sizes = [len(b) for b in batches]
    assert sizes[0] > max(sizes[-3:]) and min(sizes[:-1]) >= 3  # short ones in large batches, long in small
    assert max(len(b) for b in make_batches(durations, 5, batch_seconds=1000, order="sorted")) == 5
    assert cut_batches([0, 1], np.array([50.0, 60.0]), 8, 40) == [[0], [1]]  # too long: alone in its batch
    later = make_batches(durations, 64, batch_seconds=100, padded=padded_seconds, epoch=1, seed=3)
    assert sorted(map(tuple, later)) == sorted(map(tuple, batches))  # same batches, shuffled order


def test_plan_arithmetic():
    fit = MemoryFit(base_gb=2.0, gb_per_second=0.05, step_seconds_per_second=0.5)
    durations = np.array([2.0, 5.0, 10.0, 12.0, 15.0, 24.0, 200.0])
    plan = make_plan(durations, fit, memory_gb=12.0, headroom=0.25, batch_size=64, parameters=1000, slack=0.0)
    assert plan["memory_budget_gb"] == pytest.approx(9.0)
    assert make_plan(durations, fit, memory_gb=12.0, headroom=0.25, slack=0.5)["memory_budget_gb"] == \
        pytest.approx(6.0)
    assert plan["max_batch_seconds"] == pytest.approx(140.0) and plan["batch_seconds"] == 140
    assert plan["cannot_fit"] == [6]  # 200 s alone needs 12 GB
    assert plan["checkpoint_disk_gb"] == pytest.approx(1000 * 40 / 1e9)
    padded = sum(len(b) * max(padded_seconds(durations[i]) for i in b)
                 for b in cut_batches(list(range(7)), durations, 64, 140, padded_seconds))
    assert plan["epoch_hours"] == pytest.approx(padded * 0.5 / 3600)
    assert largest_batch([[0, 1], [2]], [100, 300, 1000], 64) == (1, 1024)
    # fixed batches of 64 in micro-batches: 140 padded seconds fit (less the accumulators: 1000 parameters),
    # the longest utterance that fits (24 s) pads to 24.32 s -> 5 at a time
    assert plan["micro_batch"] == 5 and "--batch-size 64 --micro-batch 5" in format_plan(plan)
    small = make_plan(durations, fit, memory_gb=12.0, headroom=0.25, batch_size=64, fixed_batch=4, slack=0.0)
    assert small["micro_batch"] == 4 and "batches of 4 utterances fit whole" in format_plan(small)
    # six 3-second utterances outweigh two 7-second ones, but not when only 2 run at once
    assert largest_batch([list(range(6)), [6, 7]], [300] * 6 + [700] * 2, 64) == (6, 320)
    assert largest_batch([list(range(6)), [6, 7]], [300] * 6 + [700] * 2, 64, micro_batch=2) == (2, 704)


def test_feature_cache_on_disk_is_keyed_by_file_and_config(tiny_corpus, tmp_path):
    from ds2_helpers.config import SpectConfig

    folder = tmp_path / "features"
    data = SpeechData(tiny_corpus / "dev.csv", cache=folder)
    first = [data.features(i) for i in range(3)]
    assert data.disk.misses == 3 and not data.cache and not data._features  # nothing kept in RAM
    again = SpeechData(tiny_corpus / "dev.csv", cache=folder)
    np.testing.assert_array_equal(again.features(1), first[1])
    assert again.disk.hits == 1
    files = list(folder.rglob("*"))
    assert not [f for f in files if f.name.startswith(".")]  # no temp files left behind
    other = SpeechData(tiny_corpus / "dev.csv", SpectConfig(window="hann"), cache=folder)
    other.features(1)
    assert other.disk.misses == 1  # another window is another key
    corrupt = again.disk.path(again.frame.audio_path[2])
    corrupt.write_bytes(b"not numpy")
    np.testing.assert_array_equal(SpeechData(tiny_corpus / "dev.csv", cache=folder).features(2), first[2])


def test_librispeech_shaped_durations():
    from ds2_helpers.minicorpus import librispeech_durations

    d = librispeech_durations(20_000, np.random.default_rng(0))
    assert 1.0 <= d.min() and d.max() <= 24.5 and 12.0 < d.mean() < 13.5
    t = librispeech_durations(50, np.random.default_rng(1), longest=(30.0, 35.0))
    assert 30.0 <= t[-1] <= 35.0


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    """Utterances of about 20 s (sentences of one voice joined), LibriSpeech layout, with a manifest."""
    from ds2_helpers.espeak import Espeak
    from ds2_helpers.librispeech import read_manifest
    import random
    import soundfile as sf
    from ds2_helpers.minicorpus import join_sentences, make_speakers

    root = tmp_path_factory.mktemp("long")
    rng = random.Random(5)
    speakers = make_speakers(4, rng)
    rows = []
    for k in range(16):
        spk = speakers[k % 4]
        audio, text = join_sentences(Espeak.get(), spk.voice, 19.0 + (k % 4) * 0.7, rng)
        path = root / f"{k}.flac"
        sf.write(str(path), audio, 16000, subtype="PCM_16")
        rows.append({"utterance_id": f"long-{k}", "speaker": spk.speaker_id, "chapter": spk.chapter_id,
                     "audio_path": str(path),
                     "duration": audio.size / 16000, "transcript": text})
    frame = pd.DataFrame(rows).sort_values("duration")
    frame.iloc[3::4].to_csv(root / "n.csv", index=False)  # a quarter, the longest included: same largest batch
    frame.to_csv(root / "4n.csv", index=False)
    assert len(read_manifest(root / "4n.csv")) == 16
    return root


def test_memory_stays_flat_over_an_epoch_of_long_utterances(long_corpus, tmp_path):
    """One epoch on N and on 4N utterances of ~20 s with the same largest batch: the longer epoch's peak stays
    within 80 MB per extra hour of audio plus 150 MB of measurement noise (the four extra minutes of audio here
    cannot resolve 80 MB/h alone; a spectrogram cache in RAM would add about 150 MB)."""
    from ds2_helpers.rehearse import run_step

    peaks, hours = {}, {}
    for name in ("n", "4n"):
        manifest = long_corpus / f"{name}.csv"
        hours[name] = pd.read_csv(manifest).duration.sum() / 3600
        result = run_step(name, ["train", "--preset", "mini", "--manifest", str(manifest), "--epochs", "1",
                                 "--batch-seconds", "45", "--conv", "matmul", "--save-every", "0", "--no-preflight",
                                 "--out", str(tmp_path / name)], tmp_path / f"{name}.log")
        peaks[name] = result["peak_rss_gb"] * 1024
        assert len(pd.read_csv(tmp_path / name / "metrics.csv")) == {"n": 2, "4n": 8}[name]
    allowed = 150 + 80 * (hours["4n"] - hours["n"])
    print(f"peak {peaks['n']:.0f} MB -> {peaks['4n']:.0f} MB (allowed growth {allowed:.0f} MB)")
    assert peaks["4n"] - peaks["n"] <= allowed, peaks


def test_rehearsal_step_peak_is_the_childs_own(tmp_path):
    """A child's wait4 peak would start from what this process holds (2 GiB here); run_step reports the child's
    own VmHWM, and a failing step raises with the error line."""
    import numpy as np

    from ds2_helpers.rehearse import run_step

    ballast = np.ones(2 * 2**30 // 8)
    result = run_step("help", ["plan", "--help"], tmp_path / "help.log")
    assert result["exit_code"] == 0 and 0 < result["peak_rss_gb"] < 0.5, result
    assert "--manifest" in (tmp_path / "help.log").read_text()
    with pytest.raises(RuntimeError, match="invalid choice: 'nope'"):
        run_step("bad", ["plan", "--preset", "nope"], tmp_path / "bad.log")
    del ballast
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.log", "help.log"]  # no peak files left


def test_a_commands_peak_includes_the_processes_it_starts(tmp_path):
    """`plan` measures in child processes: a command's peak counts a child that holds 1 GiB for 2 s while the
    command itself stays small; a command killed on request reports its own peak as last read."""
    import sys

    from ds2_helpers.rehearse import run_measured

    child = "import numpy, time; a = numpy.ones(2**30 // 8); time.sleep(2)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    result = run_measured([sys.executable, "-c", parent], tmp_path / "tree.log", interval=0.2)
    assert result["exit_code"] == 0 and 1.0 <= result["peak_rss_gb"] < 1.3, result
    flag = tmp_path / "allocated"
    holder = f"import numpy, time; a = numpy.ones(2**30 // 8); open({str(flag)!r}, 'w').close(); time.sleep(30)"
    killed = run_measured([sys.executable, "-c", holder], tmp_path / "kill.log", interval=0.2,
                          kill_when=flag.exists)
    assert killed["killed"] and killed["exit_code"] == -9 and 1.0 <= killed["peak_rss_gb"] < 1.3, killed
    assert killed["seconds"] < 20


def test_an_interrupted_rehearsal_kills_its_command(tmp_path):
    """Interrupting the driver (a notebook's stop button) kills the command it runs and leaves no peak file."""
    import os
    import sys

    from ds2_helpers.rehearse import run_measured

    pid_file, peak_file = tmp_path / "pid", tmp_path / "cmd.log.peak"
    holder = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"

    def interrupt():
        if pid_file.exists() and pid_file.read_text():
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        run_measured([sys.executable, "-c", holder], tmp_path / "cmd.log", kill_when=interrupt, peak_file=peak_file,
                     interval=0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
    assert not peak_file.exists()


def test_preflight_fails_early_with_the_fix():
    with pytest.raises(PreflightError, match="--batch-seconds"):
        preflight("mini", 2, 300, conv="matmul", memory_gb=0.3)


def test_preflight_measures_a_step_after_a_warm_up(monkeypatch):
    """A shape's first step holds less than training later does: the preflight measures the second."""
    from ds2_helpers import plan

    calls = []

    def fake_run(cfg, *, steps, warmup, **kw):
        calls.append((cfg.batch_size, round(cfg.seconds, 2), steps, warmup))
        return {"peak_rss_mb": 1024.0, "step_seconds": 1.0}

    monkeypatch.setattr(plan, "run_isolated", fake_run)
    result = plan.preflight("mini", 3, 400, conv="matmul", memory_gb=100.0)
    assert calls == [(3, 4.0, 1, 1)] and result["peak_gb"] == 1.0
    with pytest.raises(PreflightError, match="needs 1.0 GB"):  # peak x (1 + slack) against the memory left
        plan.preflight("mini", 3, 400, conv="matmul", memory_gb=1.2)


def test_rehearsal_small(tmp_path):
    """The real job's steps in miniature: plan, preflight, train killed after a checkpoint, resume, evaluation
    of the longest (30-35 s) test utterances, export."""
    from ds2_helpers.rehearse import RehearsalConfig, rehearse

    summary = rehearse(tmp_path, RehearsalConfig.small(), progress=False)
    assert summary["killed_after_checkpoints"] and summary["resumed_at_global_step"] == \
        summary["killed_after_checkpoints"][-1]
    assert summary["trained_steps"] == RehearsalConfig.small().steps
    assert max(summary["evaluated_seconds"]) >= 30 and summary["evaluation"]["utterances"] == 2
    assert summary["export_ok"] and summary["preflight"].startswith("preflight: fits")
    sidecar = json.loads((tmp_path / "model.mindir.json").read_text())
    assert summary["export_frames"] == sidecar["frames"] and summary["measured"] and summary["machine"]["cores"]
    assert json.loads((tmp_path / "rehearsal.json").read_text())["steps"][0]["step"] == "corpus"
    longest = pd.read_csv(tmp_path / "longest.csv").iloc[-1]
    from ds2_helpers.checkpoint import load_model
    from ds2_helpers.evaluate import transcribe
    from ds2_helpers.paths import data_dir

    net, spect = load_model(str(data_dir() / "mini_pretrained.ckpt"))
    text = transcribe(net, [longest.audio_path], spect)[0]
    import jiwer

    assert longest.duration >= 30 and jiwer.cer(longest.transcript, text) < 0.3  # 30-35 s, transcribed whole
