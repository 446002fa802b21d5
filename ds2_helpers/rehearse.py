"""The course's real job, rehearsed end to end on a LibriSpeech-shaped corpus, as a student would run it.

Every step is the real command in its own process (`python -m ds2_helpers ...`, started through `_PEAK_WRAPPER`,
which records the process's peak memory as it exits), timed, with its peak memory: plan, train (preflight, then
steps, killed once a checkpoint exists), train --resume to the end, evaluation of the longest test utterances,
export. The summary is JSON (data/rehearsal_reference_2core.json holds the full run on the reference machine)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ds2_helpers.atomic import atomic_write_text
from ds2_helpers.bench import provenance
from ds2_helpers.config import ParameterError
from ds2_helpers.memory import descendants, status_gb


@dataclass(frozen=True)
class RehearsalConfig:
    """Sizes of one rehearsal; `small()` is the version `make test` runs."""

    preset: str = "paper"
    hours: float = 0.5
    steps: int = 8
    save_every: int = 2
    probe_seconds: float = 10.0
    batch_seconds: float | None = None   # None: what `plan` says fits
    longest: int = 4                     # test utterances evaluated (the longest ones)
    conv: str = "native"                 # train's default; the small version uses ours (Conv2d is slow at 8 channels)
    seed: int = 0

    @classmethod
    def small(cls) -> "RehearsalConfig":
        return cls(preset="mini", hours=0.04, steps=4, save_every=2, probe_seconds=4.0, batch_seconds=40.0,
                   longest=2, conv="matmul")


#: Runs `python -m ds2_helpers ...` and, as it exits, writes its own peak resident memory (GB) to the file named by
#: its first argument (`run_measured`'s `peak_file`).
_PEAK_WRAPPER = """import atexit, runpy, sys
from ds2_helpers.memory import peak_gb
out = sys.argv.pop(1)


def write_peak():
    with open(out, "w") as fh:
        fh.write(repr(peak_gb()))


atexit.register(write_peak)
runpy.run_module("ds2_helpers", run_name="__main__", alter_sys=True)
"""


def run_measured(argv: list[str], log: Path, *, kill_when=None, peak_file: Path | None = None,
                 interval: float = 0.5) -> dict:
    """Run `argv` with its output in `log`: exit status, wall time and peak resident memory (GB) of its process
    tree. The peak is the larger of the process's own (`peak_file`, which it writes as it exits, else its VmHWM
    as last sampled) and, sampled every `interval` seconds, its resident memory plus each descendant's peak so
    far (the probes `plan` and `train`'s preflight run in their own processes; a descendant's last `interval`
    before it exits is not seen). Not `wait4`'s ru_maxrss: a child's starts from what its parent held when it
    was started, so it would count this process's memory too. `kill_when()` is polled as often; when true the
    process is sampled once more and killed with SIGKILL (a crash rehearsal). If this process is interrupted,
    the command is killed too."""
    t0 = time.perf_counter()
    own = tree = 0.0

    def sample(pid):
        nonlocal own, tree
        own = max(own, status_gb("VmHWM", pid))
        tree = max(tree, status_gb("VmRSS", pid) + sum(status_gb("VmHWM", d) for d in descendants(pid)))

    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                env=dict(os.environ, GLOG_v="3", PYTHONWARNINGS="ignore"))
        killed = False
        try:
            while True:
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
                if pid:
                    break
                sample(proc.pid)
                if kill_when is not None and not killed and kill_when():
                    sample(proc.pid)  # what it grew to since the sample above counts
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = True
                time.sleep(interval)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if peak_file is not None:
                try:
                    own = max(own, float(peak_file.read_text()))
                except (OSError, ValueError):  # not written (killed), or cut short
                    pass
                peak_file.unlink(missing_ok=True)
    return {"exit_code": os.waitstatus_to_exitcode(status), "killed": killed,
            "seconds": round(time.perf_counter() - t0, 1), "peak_rss_gb": round(max(own, tree), 2)}


def run_step(name: str, args: list[str], log: Path, *, kill_when=None) -> dict:
    """Run `python -m ds2_helpers <args>` (`run_measured`); a failure raises with the last lines of its log."""
    peak_file = log.with_name(log.name + ".peak")
    peak_file.unlink(missing_ok=True)
    measured = run_measured([sys.executable, "-c", _PEAK_WRAPPER, str(peak_file), *args], log,
                            kill_when=kill_when, peak_file=peak_file)
    result = {"step": name, "command": "python -m ds2_helpers " + " ".join(args), **measured, "log": str(log)}
    if measured["exit_code"] != 0 and not measured["killed"]:
        tail = [l for l in log.read_text().splitlines() if l.strip()][-3:]
        raise RuntimeError(f"rehearsal step {name!r} failed (exit {measured['exit_code']}): " + " | ".join(tail))
    return result


def rehearse(out: str | Path, cfg: RehearsalConfig = RehearsalConfig(), *, progress: bool = True,
             overwrite: bool = False) -> dict:
    """Build the corpus, then plan, train, kill, resume, evaluate the longest utterances and export. A folder
    that holds anything (an earlier rehearsal) is refused unless `overwrite`: each step then replaces its part."""
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ParameterError(f"{out}: not empty (an earlier rehearsal?); choose another --out, or pass --overwrite "
                             "to replace what the rehearsal writes there")
    out.mkdir(parents=True, exist_ok=True)
    corpus, run = out / "corpus", out / "run"
    if overwrite:  # the first training is killed once a checkpoint exists: an earlier run's must not count
        import shutil

        shutil.rmtree(run, ignore_errors=True)
    steps: list[dict] = []

    def step(name, args, **kw):
        if progress:
            print(f"== {name}: python -m ds2_helpers {' '.join(args)}", flush=True)
        steps.append(run_step(name, args, out / f"{name}.log", **kw))
        if progress:
            s = steps[-1]
            print(f"   {s['seconds']:.0f} s, peak {s['peak_rss_gb']:.2f} GB{' (killed)' if s['killed'] else ''}",
                  flush=True)
        return steps[-1]

    step("corpus", ["minicorpus", "--profile", "librispeech", "--hours", str(cfg.hours), "--speakers", "16",
                    "--seed", str(cfg.seed), "--out", str(corpus), "--quiet", "--overwrite"])
    train_csv, test_csv = corpus / "train.csv", corpus / "test.csv"
    step("plan", ["plan", "--preset", cfg.preset, "--manifest", str(train_csv), "--probe-seconds",
                  str(cfg.probe_seconds), "--conv", cfg.conv, "--out", str(out / "plan.json")])
    plan = json.loads((out / "plan.json").read_text())
    batch_seconds = cfg.batch_seconds or max(plan["batch_seconds"], 1)
    train = ["train", "--preset", cfg.preset, "--manifest", str(train_csv), "--out", str(run), "--batch-seconds",
             str(batch_seconds), "--save-every", str(cfg.save_every), "--max-steps", str(cfg.steps), "--conv", cfg.conv]
    first = step("train (killed)", train + ["--overwrite"], kill_when=lambda: any(run.glob("ds2-step*.ckpt")))
    killed_at = _checkpoint_steps(run)
    second = step("train --resume", train + ["--resume", "--no-preflight"])
    resumed = re.search(r"global step (\d+)", Path(second["log"]).read_text())
    frame = pd.read_csv(test_csv).sort_values("duration").tail(cfg.longest)
    frame.to_csv(out / "longest.csv", index=False)
    ev = step("evaluate longest", ["evaluate", "--checkpoint", str(run / "final.ckpt"), "--manifest",
                                   str(out / "longest.csv"), "--out", str(out / "eval"), "--overwrite"])
    ex = step("export", ["export", "--checkpoint", str(run / "final.ckpt"), "--out", str(out / "model.mindir"),
                         "--overwrite"])
    metrics = pd.read_csv(run / "metrics.csv")
    summary = {
        "config": asdict(cfg), "batch_seconds": batch_seconds, "plan": {k: plan[k] for k in (
            "memory_available_gb", "base_gb", "gb_per_padded_second", "max_batch_seconds", "steps_per_epoch",
            "epoch_hours", "peak_gb", "checkpoint_disk_gb", "cannot_fit", "largest_batch")},
        "corpus": {s: _durations(corpus / f"{s}.csv") for s in ("train", "dev", "test")},
        "killed_after_checkpoints": killed_at, "resumed_at_global_step": int(resumed.group(1)) if resumed else None,
        "trained_steps": int(metrics.step.max()), "step_seconds_median": float(metrics.step_seconds.median()),
        "loss_first_last": [float(metrics.loss.iloc[0]), float(metrics.loss.iloc[-1])],
        "evaluated_seconds": [float(d) for d in frame.duration], "evaluation": json.loads(
            (out / "eval" / "summary.json").read_text()),
        "export_ok": ex["exit_code"] == 0, "peak_rss_gb": max(s["peak_rss_gb"] for s in steps), "steps": steps,
        "preflight": _preflight_line(Path(first["log"])), "evaluate_peak_rss_gb": ev["peak_rss_gb"],
        "export_frames": _exported_frames(out / "model.mindir.json"),  # None: a dynamic time axis
        **provenance(),
    }
    atomic_write_text(out / "rehearsal.json", json.dumps(summary, indent=2))
    return summary


def _checkpoint_steps(run: Path) -> list[int]:
    return sorted(int(re.search(r"(\d+)", p.name).group(1)) for p in run.glob("ds2-step*.ckpt"))


def _durations(manifest: Path) -> dict:
    d = pd.read_csv(manifest).duration
    return {"utterances": int(len(d)), "hours": float(d.sum() / 3600), "min": float(d.min()),
            "mean": float(d.mean()), "max": float(d.max())}


def _exported_frames(sidecar: Path) -> int | None:
    """The time axis the export was fixed to, from its sidecar (None: dynamic, any length; or no sidecar)."""
    return json.loads(sidecar.read_text()).get("frames") if sidecar.exists() else None


def _preflight_line(log: Path) -> str | None:
    lines = [l for l in log.read_text().splitlines() if l.startswith("preflight: fits")]
    return lines[0] if lines else None
