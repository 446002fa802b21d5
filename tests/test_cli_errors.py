"""No lost work, one clear line for every bad input (issue 11): each case of the issue through the CLI, asserting
the exit code, the message and that nothing written earlier was lost or overwritten."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ds2_helpers import cli
from ds2_helpers.paths import data_dir

MINI = data_dir() / "mini_pretrained.ckpt"


def run(capsys, *argv) -> tuple[int, str, str]:
    """cli.main in this process (no MindSpore start-up per case); argparse's refusals exit through SystemExit."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, str]:
    """Name -> SHA-256 of every file in a folder: what must survive a refused command unchanged."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def train_args(corpus: Path, out: Path, *extra) -> list:
    return ["train", "--preset", "mini", "--manifest", corpus / "train.csv", "--limit", "8", "--batch-size", "4",
            "--mode", "pynative", "--no-preflight", "--save-every", "0", "--out", out, *extra]


@pytest.fixture(scope="module")
def earlier_run(tiny_corpus, tmp_path_factory) -> Path:
    """A run folder stopped by --max-steps after one step: its checkpoint must be resumable."""
    out = tmp_path_factory.mktemp("earlier") / "run"
    assert cli.main([str(a) for a in train_args(tiny_corpus, out, "--max-steps", "1")]) == 0
    return out


def test_max_steps_leaves_a_resumable_checkpoint(earlier_run):
    from ds2_helpers.checkpoint import read

    _, meta = read(earlier_run / "ds2-step0000001.ckpt")  # --save-every 0: written because --max-steps stopped
    assert meta["state"]["global_step"] == 1 and meta["data"]["limit"] == 8
    assert len(meta["data"]["manifest_sha256"]) == 64
    assert json.loads((earlier_run / "config.json").read_text())["event"] == "start"


REFUSED = [  # (case, extra train arguments, words the one error line must contain)
    ("non-empty --out without --resume", [], ["holds an earlier run", "--resume", "--overwrite"]),
    ("resume with another batch size", ["--resume", "--batch-size", "2"],
     ["cannot resume", "train.batch_size: checkpoint 4, now 2", "--allow-changes"]),
    ("resume with another seed and window", ["--resume", "--seed", "5", "--window", "hann"],
     ["spect.window: checkpoint 'hamming', now 'hann'", "train.seed"]),
    ("resume on another part of the manifest", ["--resume", "--limit", "6"], ["data.limit: checkpoint 8, now 6"]),
    ("resume with another optimizer and schedule", ["--resume", "--optimizer", "lamb", "--schedule", "cosine"],
     ["train.optimizer: checkpoint 'adam', now 'lamb'", "train.schedule: checkpoint 'anneal', now 'cosine'",
      "--allow-changes"]),
    ("resume with augmentation the run did not use", ["--resume", "--augment", "speed"],
     ["train.augment.speeds: checkpoint None, now (0.9, 1.0, 1.1)", "--allow-changes"]),
]


@pytest.mark.parametrize("case,extra,words", REFUSED, ids=[c[0] for c in REFUSED])
def test_train_refuses_to_mix_runs(case, extra, words, earlier_run, tiny_corpus, capsys):
    before = snapshot(earlier_run)
    code, out, err = run(capsys, *train_args(tiny_corpus, earlier_run, *extra))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and all(w in lines[-1] for w in words), err
    assert "Traceback" not in err
    assert snapshot(earlier_run) == before  # nothing of the earlier run touched


def test_resume_with_a_changed_manifest_is_refused(earlier_run, tiny_corpus, tmp_path, capsys):
    folder = shutil.copytree(earlier_run, tmp_path / "run")
    manifest = tmp_path / "train.csv"
    manifest.write_text((tiny_corpus / "train.csv").read_text() + "\n")  # same rows, other bytes
    args = train_args(tiny_corpus, folder, "--resume")
    args[args.index(tiny_corpus / "train.csv")] = manifest
    code, _, err = run(capsys, *args)
    assert code == 2 and "data.manifest_sha256" in err and "data.manifest_path" in err


def test_resume_skips_a_corrupt_newest_checkpoint_and_stale_temps(earlier_run, tiny_corpus, tmp_path, capsys):
    folder = shutil.copytree(earlier_run, tmp_path / "run")
    (folder / "ds2-step0000002.ckpt").write_bytes(b"half a checkpoint")  # a damaged newest checkpoint
    stale = folder / ".ds2-step0000003.ckpt.x1y2.tmp.ckpt"  # what a kill mid-write leaves: full size, read-only
    shutil.copy(folder / "ds2-step0000001.ckpt", stale)
    stale.chmod(0o444)
    code, out, err = run(capsys, *train_args(tiny_corpus, folder, "--resume", "--max-steps", "1"))
    assert code == 0, err
    assert "cannot be read" in err and "resuming at epoch 1, step 1" in out and "from ds2-step0000001.ckpt" in out
    assert not stale.exists() and (folder / "ds2-step0000002.ckpt.corrupt").exists()  # kept, not deleted
    config = json.loads((folder / "config.json").read_text())
    assert config["event"] == "resume" and [h["event"] for h in config["history"]] == ["start"]


def test_overwrite_replaces_only_the_run_files(earlier_run, tiny_corpus, tmp_path, capsys):
    folder = shutil.copytree(earlier_run, tmp_path / "run")
    (folder / "notes.txt").write_text("mine")
    code, out, err = run(capsys, *train_args(tiny_corpus, folder, "--overwrite", "--max-steps", "1", "--seed", "3"))
    assert code == 0, err
    assert "--overwrite: removed" in out and (folder / "notes.txt").read_text() == "mine"
    assert json.loads((folder / "config.json").read_text())["history"] == []


BAD_ARGUMENTS = [  # refused by the argument parser before any work: exit 2, the flag named
    (["--epochs", "0"], "argument --epochs: 0 is too small"),
    (["--batch-size", "0"], "argument --batch-size: 0 is too small"),
    (["--lr", "-0.01"], "argument --lr: -0.01 is not allowed"),
    (["--max-steps", "0"], "argument --max-steps"),
    (["--batch-seconds", "nan"], "argument --batch-seconds"),
    (["--lr", "inf"], "argument --lr: inf is not allowed"),
    (["--seed", "-1"], "argument --seed: -1 is too small"),
    (["--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
    (["--optimizer", "adagrad"], "argument --optimizer: invalid choice: 'adagrad'"),
    (["--schedule", "linear"], "argument --schedule: invalid choice: 'linear'"),
    (["--warmup-steps", "-1"], "argument --warmup-steps: -1 is too small"),
    (["--schedule-steps", "0"], "argument --schedule-steps: 0 is too small"),
    (["--warmup-steps", "5"], "warmup_steps: only the step-based schedules (cosine, onecycle) use them"),
    (["--schedule", "cosine", "--warmup-steps", "9", "--schedule-steps", "9"], "warm-up must end before"),
    (["--augment", "speed,pitch"], "argument --augment: 'pitch': unknown; use a comma-separated list of speed, gain"),
    (["--micro-batch", "0"], "argument --micro-batch: 0 is too small"),
    (["--micro-batch", "5"], "micro batch 5 > batch size 4: every batch would run at once; use 1 to 3"),
]


@pytest.mark.parametrize("extra,words", BAD_ARGUMENTS, ids=[" ".join(c[0]) for c in BAD_ARGUMENTS])
def test_nonsense_arguments_are_refused_before_work(extra, words, tiny_corpus, tmp_path, capsys):
    code, _, err = run(capsys, *train_args(tiny_corpus, tmp_path / "run", *extra))
    assert code == 2 and words in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_export_frames_zero_is_refused_and_no_dumps_land_in_the_cwd(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "export", "--checkpoint", MINI, "--frames", "0", "--out", tmp_path / "m.mindir")
    assert code == 2 and "argument --frames: 0 is too small" in err
    assert list(tmp_path.iterdir()) == []


def test_mindspore_dumps_go_to_the_runs_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("MS_OM_PATH", raising=False)
    monkeypatch.setenv("DS2_RUNS", str(tmp_path / "runs"))
    cli.keep_dumps_out_of_cwd()
    import os

    assert os.environ["MS_OM_PATH"] == str(tmp_path / "runs" / "mindspore-dumps")


def test_output_under_a_file_and_permission_errors_are_one_line(tiny_corpus, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, *train_args(tiny_corpus, tmp_path / "file" / "run"))
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"error: {tmp_path / 'file' / 'run'}: Not a directory; a part of this "
                                            "path is a file, not a folder: choose another path")

    def denied(self, *a, **k):  # root ignores file modes, so the refusal is simulated where it happens
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    code, _, err = run(capsys, *train_args(tiny_corpus, tmp_path / "locked" / "run"))
    assert code == 2 and err.strip() == (f"error: {tmp_path / 'locked' / 'run'}: Permission denied; no permission: "
                                         "choose a folder you can write to (or ask its owner)")


def test_a_full_disk_is_found_before_the_checkpoint_write(tmp_path, monkeypatch):
    import collections

    import numpy as np

    from ds2_helpers import checkpoint as ckpt

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(ckpt.CheckpointError, match=r"1 MB free, big.ckpt needs 2[67] MB; free disk space"):
        ckpt.save(tmp_path / "big.ckpt", [{"name": "w", "data": np.zeros(2_500_000, np.float32)}])
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_converting_a_converted_checkpoint_is_refused(tmp_path, capsys):
    code, _, err = run(capsys, "pretrained", "convert", "--checkpoint", MINI, "--out", tmp_path / "x.ckpt",
                       "--preset", "mini")
    assert code == 2 and "already converted" in err and "use it as it is" in err
    assert not (tmp_path / "x.ckpt").exists()


def test_unexpected_errors_are_one_line_unless_debug(monkeypatch, capsys):
    from ds2_helpers import cli_model

    def boom(args):
        raise RuntimeError("deep inside\nsecond line")

    monkeypatch.setattr(cli_model, "cmd_export", boom)
    argv = ["export", "--checkpoint", MINI, "--out", "x.mindir"]
    parser = cli.build_parser()  # the parser binds the function when it is built
    monkeypatch.setattr(cli, "build_parser", lambda: _rebind(parser, boom))
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.strip() == ("error: RuntimeError: deep inside (unexpected: rerun with --debug for the "
                                         "traceback and report it)")
    with pytest.raises(RuntimeError, match="deep inside"):
        cli.main(["--debug", *map(str, argv)])


def _rebind(parser, func):
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    sub.choices["export"].set_defaults(func=func)
    return parser


def _earlier_results(tmp: Path) -> Path:
    out = tmp / "eval"
    out.mkdir()
    (out / "results.csv").write_text("utterance_id,speaker,duration,reference,hypothesis,cer,wer\n"
                                     "1-2-3,1,2.0,A B,A B,0.0,0.0\n")
    return out


def _header_only(tmp: Path) -> Path:
    path = tmp / "empty.csv"
    path.write_text("audio_path,transcript,duration,speaker,chapter,utterance_id,subset\n")
    return path


def _under_a_file(tmp: Path) -> Path:
    (tmp / "file").write_text("x")
    return tmp / "file" / "m.mindir"


OTHER_COMMANDS = [  # (case, argv from a tmp folder and the tiny corpus, words of the one error line)
    ("evaluate into earlier results without --resume",
     lambda t, c: ["evaluate", "--checkpoint", MINI, "--manifest", c / "test.csv", "--out", _earlier_results(t)],
     ["holds 1 results of an earlier evaluation", "--resume", "--overwrite"]),
    ("evaluate --batch-size 0", lambda t, c: ["evaluate", "--checkpoint", MINI, "--manifest", c / "test.csv",
                                              "--batch-size", "0"], ["argument --batch-size: 0 is too small"]),
    ("evaluate a header-only manifest",
     lambda t, c: ["evaluate", "--checkpoint", MINI, "--manifest", _header_only(t)],
     ["empty.csv: lists no utterances", "python -m ds2_helpers manifest"]),
    ("librispeech download of a subset that does not exist",
     lambda t, c: ["librispeech", "download", "--subset", "train", "--root", t], ["train-clean-100"]),
    ("transcribe a missing file", lambda t, c: ["transcribe", "--checkpoint", MINI, t / "gone.wav"],
     ["gone.wav", "no such audio file"]),
    ("bench --micro-batches without --profile", lambda t, c: ["bench", "--micro-batches", "2", "--out", t / "b"],
     ["--micro-batches, --layerwise and --whole-only go with --profile"]),
    ("export under a regular file",
     lambda t, c: ["export", "--checkpoint", MINI, "--frames", "200", "--out", _under_a_file(t)],
     ["file", "choose another"]),
    # earlier results are never replaced without --overwrite (each checked before any work)
    ("export over an earlier model", lambda t, c: ["export", "--checkpoint", MINI, "--out", _made(t / "m.mindir")],
     ["m.mindir: holds an exported model", "--overwrite"]),
    ("export into a folder", lambda t, c: ["export", "--checkpoint", MINI, "--out", _made(t / "models", folder=True)],
     ["models: is a folder", "models/model.mindir"]),
    ("prune over an earlier checkpoint",
     lambda t, c: ["prune", "--checkpoint", MINI, "--sparsity", "0.5", "--out", _made(t / "p.ckpt")],
     ["p.ckpt: holds a checkpoint", "--overwrite"]),
    ("pretrained convert over an earlier checkpoint",
     lambda t, c: ["pretrained", "convert", "--checkpoint", MINI, "--out", _made(t / "p.ckpt")],
     ["p.ckpt: holds a checkpoint", "--overwrite"]),
    ("bench over an earlier measurement", lambda t, c: ["bench", "--quick", "--out", _made(t / "b" / "results.json").parent],
     ["results.json: holds an earlier measurement", "--overwrite"]),
    ("bench --out a file", lambda t, c: ["bench", "--quick", "--out", _made(t / "b")], ["b: is a file, not a folder"]),
    ("onednn over an earlier measurement", lambda t, c: ["onednn", "--out", _made(t / "o.json")],
     ["o.json: holds an earlier measurement"]),
    ("race over an earlier race", lambda t, c: ["race", "--train", c / "train.csv", "--eval", c / "dev.csv", "--out",
                                                _made(t / "r" / "race.json").parent], ["race.json: holds an earlier race"]),
    ("race --only matching nothing", lambda t, c: ["race", "--train", c / "train.csv", "--eval", c / "dev.csv",
                                                   "--only", "nothing", "--out", t / "r"],
     ["--only nothing: no contestant", "mini: 2 x BiLSTM-192"]),
    ("distill from an unreadable teacher", lambda t, c: ["distill", "--teacher", _made(t / "t.ckpt"), "--train",
                                                         c / "train.csv", "--eval", c / "dev.csv", "--out", t / "d"],
     ["t.ckpt: not a readable MindSpore checkpoint"]),
    ("minicorpus into an earlier build", lambda t, c: ["minicorpus", "--out", _made(t / "c" / "train" / "x").parents[1]],
     ["holds an earlier corpus (train/)", "--overwrite"]),
    ("minicorpus --overwrite with a bad argument keeps the earlier build",
     lambda t, c: ["minicorpus", "--speakers", "2", "--overwrite", "--out", _made(t / "c" / "train" / "x").parents[1]],
     ["--speakers 2: use 3 or more"]),
    ("a folder as onednn's --out file", lambda t, c: ["onednn", "--out", _made(t / "o", folder=True)],
     ["o: is a folder", "file name"]),
    ("race --suite lr-sweep --only", lambda t, c: ["race", "--train", c / "train.csv", "--eval", c / "dev.csv",
                                                   "--suite", "lr-sweep", "--only", "adam", "--out", t / "r"],
     ["--only does not apply to --suite lr-sweep"]),
    ("race --suite optimizers --only matching nothing, before its sweep",
     lambda t, c: ["race", "--train", c / "train.csv", "--eval", c / "dev.csv", "--suite", "optimizers", "--only",
                   "nothing", "--out", t / "r"], ["--only nothing: no contestant", "lamb + cosine;"]),
    ("race --suite optimizers over an earlier sweep",
     lambda t, c: ["race", "--train", c / "train.csv", "--eval", c / "dev.csv", "--suite", "optimizers", "--out",
                   _made(t / "r" / "sweep" / "race.json").parents[1]], ["sweep/race.json: holds an earlier sweep"]),
    ("a finished run's folder as --checkpoint",
     lambda t, c: ["evaluate", "--checkpoint", _made(t / "run" / "final.ckpt").parent, "--manifest", c / "test.csv"],
     ["run: is a folder", "the finished run's weights", "run/final.ckpt"]),
    ("a folder as distill's --teacher", lambda t, c: ["distill", "--teacher", _made(t / "run", folder=True),
                                                      "--train", c / "train.csv", "--eval", c / "dev.csv", "--out",
                                                      t / "d"], ["run: is a folder"]),
    ("a manifest row whose duration is infinite",
     lambda t, c: ["evaluate", "--checkpoint", MINI, "--manifest", _edited(c / "test.csv", t, "duration", "inf")],
     ["edited.csv, row 2", "duration inf is not a finite positive number"]),
    ("rehearse into a used folder", lambda t, c: ["rehearse", "--small", "--out", _made(t / "r" / "plan.json").parent],
     ["not empty", "--overwrite"]),
    # checkpoints and manifests a student gets wrong
    ("a run folder as --checkpoint",
     lambda t, c: ["evaluate", "--checkpoint", _made(t / "run" / "ds2-step0000002.ckpt").parent, "--manifest",
                   c / "test.csv"], ["run: is a folder", "ds2-step0000002.ckpt"]),
    ("a checkpoint of the other preset",
     lambda t, c: ["evaluate", "--checkpoint", MINI, "--preset", "paper", "--manifest", c / "test.csv"],
     ["192 units (the `mini` preset)", "1024 units (the `paper` preset)", "pass --preset mini"]),
    ("evaluate --lm with the greedy decoder",
     lambda t, c: ["evaluate", "--checkpoint", MINI, "--manifest", c / "test.csv", "--lm", _made(t / "lm.arpa")],
     ["only the beam decoder uses a language model", "--decoder beam"]),
    ("a manifest row whose duration is not a number",
     lambda t, c: ["evaluate", "--checkpoint", MINI, "--manifest", _edited(c / "test.csv", t, "duration", "abc")],
     ["edited.csv, row 2", "duration 'abc' is not a finite positive number"]),
    ("a manifest transcript with digits",
     lambda t, c: ["train", "--preset", "mini", "--manifest", _edited(c / "test.csv", t, "transcript", "ROOM 101"),
                   "--out", t / "run"], ["edited.csv, row 2", "(0 1)", "spell numbers out"]),
]


def _made(path: Path, folder: bool = False) -> Path:
    """`path` made as an earlier result would stand there (a folder, or a small file, its folders made)."""
    if folder:
        path.mkdir(parents=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("earlier")
    return path


def _edited(manifest: Path, tmp: Path, column: str, value: str) -> Path:
    """A copy of `manifest` with the first row's `column` set to `value`."""
    import pandas as pd

    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame.loc[0, column] = value
    frame.to_csv(tmp / "edited.csv", index=False)
    return tmp / "edited.csv"


@pytest.mark.parametrize("case,argv,words", OTHER_COMMANDS, ids=[c[0] for c in OTHER_COMMANDS])
def test_other_commands_fail_with_one_line(case, argv, words, tiny_corpus, tmp_path, capsys):
    args = argv(tmp_path, tiny_corpus)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, _, err = run(capsys, *args)
    assert code == 2, err
    errors = [l for l in err.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), err
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in before} == before  # nothing written earlier was changed


def test_an_interrupted_evaluation_resumes_where_it_stopped(tiny_corpus, tmp_path, capsys):
    base = ["evaluate", "--checkpoint", MINI, "--manifest", tiny_corpus / "test.csv"]
    assert run(capsys, *base, "--out", tmp_path / "whole")[0] == 0
    assert run(capsys, *base, "--limit", "2", "--out", tmp_path / "part")[0] == 0  # as if stopped after 2
    code, out, _ = run(capsys, *base, "--resume", "--out", tmp_path / "part")
    assert code == 0 and "resuming: 2 utterances already in" in out
    whole, part = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("whole", "part"))
    assert part["resumed_with"] == 2 and part["utterances"] == whole["utterances"] == 6
    assert part["cer"] == pytest.approx(whole["cer"]) and part["wer"] == pytest.approx(whole["wer"])
    import pandas as pd

    rows = pd.read_csv(tmp_path / "part" / "results.csv", keep_default_na=False)
    assert len(rows) == 6 and rows.utterance_id.is_unique


def test_overwrite_with_a_typo_deletes_nothing(earlier_run, tiny_corpus, tmp_path, capsys):
    folder = shutil.copytree(earlier_run, tmp_path / "run")
    before = snapshot(folder)
    args = train_args(tiny_corpus, folder, "--overwrite")
    args[args.index(tiny_corpus / "train.csv")] = tmp_path / "nosuch.csv"
    code, _, err = run(capsys, *args)
    assert code == 2 and "nosuch.csv" in err and snapshot(folder) == before
    code, _, err = run(capsys, *train_args(tiny_corpus, folder, "--overwrite", "--pretrained", tmp_path / "no.ckpt"))
    assert code == 2 and "no.ckpt: no such checkpoint" in err and snapshot(folder) == before


def test_resume_with_no_readable_checkpoint_is_refused(earlier_run, tiny_corpus, tmp_path, capsys):
    folder = shutil.copytree(earlier_run, tmp_path / "run")
    (folder / "ds2-step0000001.ckpt").write_bytes(b"damaged")
    final = (folder / "final.ckpt").read_bytes()
    code, _, err = run(capsys, *train_args(tiny_corpus, folder, "--resume", "--pretrained", MINI))
    assert code == 2 and "none of its checkpoints can be read" in err.splitlines()[-1]
    assert (folder / "final.ckpt").read_bytes() == final  # not replaced by an untrained network


def test_resuming_an_evaluation_of_another_checkpoint_or_after_a_cut_row(tiny_corpus, tmp_path, capsys):
    base = ["evaluate", "--manifest", tiny_corpus / "test.csv", "--limit", "3", "--out", tmp_path / "ev"]
    assert run(capsys, *base, "--checkpoint", MINI)[0] == 0
    import mindspore as ms

    from ds2_helpers import checkpoint as ckpt

    arrays, meta = ckpt.read(MINI)  # the same weights in another file: still another evaluation
    other = ckpt.save(tmp_path / "other.ckpt", [{"name": k, "data": ms.Tensor(v)} for k, v in arrays.items()],
                      {**meta, "note": "a copy"})
    code, _, err = run(capsys, *base, "--checkpoint", other, "--resume")
    assert code == 2 and "cannot resume, its results are of another evaluation: checkpoint" in err
    results = tmp_path / "ev" / "results.csv"
    results.write_bytes(results.read_bytes()[:-7])  # a kill cut the last row
    code, _, err = run(capsys, *base[:-4], "--limit", "4", "--out", tmp_path / "ev", "--checkpoint", MINI,
                       "--resume")
    assert code == 0 and "last row was cut off" in err
    import pandas as pd

    rows = pd.read_csv(results, keep_default_na=False)
    assert len(rows) == 4 and rows.utterance_id.is_unique and (rows.hypothesis.str.len() > 0).all()


RACE_BAD = [
    (["--suite", "optimizers", "--rates", "adam=0"], "argument --rates: 0 is not allowed"),
    (["--suite", "optimizers", "--rates", "adagrad=1e-3"], "write OPTIMIZER=RATE with OPTIMIZER one of adam, lamb"),
    (["--suite", "speed"], "argument --suite: invalid choice: 'speed'"),
    (["--suite", "optimizers", "--schedules", "linear"], "argument --schedules: invalid choice: 'linear'"),
]


@pytest.mark.parametrize("extra,words", RACE_BAD, ids=[" ".join(c[0]) for c in RACE_BAD])
def test_race_refuses_bad_suites_and_rates(extra, words, tiny_corpus, tmp_path, capsys):
    code, _, err = run(capsys, "race", "--train", tiny_corpus / "train.csv", "--eval", tiny_corpus / "dev.csv",
                       "--out", tmp_path / "race", *extra)
    assert code == 2 and words in err and err.strip().splitlines()[-1].startswith("error: ")


def test_augmented_training_is_recorded_and_unseen_voices_build(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, *train_args(tiny_corpus, out, "--augment", "speed,specaugment", "--max-steps", "1"))
    assert code == 0, err
    assert "augmentation: speed, specaugment" in stdout
    augment = json.loads((out / "config.json").read_text())["train"]["augment"]
    assert augment["speeds"] == [0.9, 1.0, 1.1] and augment["freq_masks"] == 2 and augment["gain_db"] is None
    code, stdout, err = run(capsys, "minicorpus", "--unseen-voices", "--speakers", "2", "--utterances-per-speaker",
                            "2", "--out", tmp_path / "unseen", "--quiet")
    assert code == 0, err
    assert "test (unseen voices): 4 utterances" in stdout and (tmp_path / "unseen" / "test.csv").exists()
    code, _, err = run(capsys, "minicorpus", "--unseen-voices", "--speakers", "17", "--out", tmp_path / "u2")
    assert code == 2 and "between 1 and 16" in err.strip().splitlines()[-1]
    code, _, err = run(capsys, "race", "--train", tiny_corpus / "train.csv", "--eval", tiny_corpus / "dev.csv",
                       "--suite", "augment", "--score", "unseen", "--out", tmp_path / "race")
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: --score 'unseen': give NAME=MANIFEST")
    assert not (tmp_path / "race").exists()
