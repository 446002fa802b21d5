"""Scaling studies: where an epoch's time goes beyond one training step, and how it changes with more
processes or machines - the data pipeline's cost and feeding rates, data-parallel workers (`msrun`) on
this machine, step times over a long run, and a projection onto k machines.

The measuring studies read real audio or train in child processes, so each takes seconds to minutes;
`scale_out_hours` is a model, not a measurement. The timing of single training steps is
`ds2_helpers.bench`; charts of the numbers are in `ds2_helpers.charts`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ds2_helpers.environment import usable_cores


def feature_seconds_per_audio_second(audio_paths: list, spect=None) -> float:
    """Seconds to read and turn audio into spectrograms, per second of audio: the data pipeline's cost."""
    import soundfile as sf

    from ds2_helpers.config import SpectConfig
    from ds2_helpers.features import load_audio, spectrogram

    spect = spect or SpectConfig()
    audio_seconds = sum(sf.info(str(p)).duration for p in audio_paths)
    t0 = time.perf_counter()
    for path in audio_paths:
        spectrogram(load_audio(path, spect.sample_rate), spect)
    return (time.perf_counter() - t0) / audio_seconds


def pipeline_rates(manifest, *, batch_size: int = 8, batches: int = 12, workers: tuple[int, ...] = (1, 2),
                   prefetch: int = 2):
    """Audio seconds of ready batches per wall second: in the loop (on the fly, then cached) and through
    mindspore.dataset with worker processes. Compare with training's audio-s/s to see the pipeline's share."""
    import pandas as pd

    from ds2_helpers.dataset import SpeechData, make_batches, ms_pipeline

    def timed(label: str, data: SpeechData, make) -> dict:
        t0 = time.perf_counter()
        make()
        seconds = time.perf_counter() - t0
        return {"pipeline": label, "seconds": seconds, "audio_seconds_per_second": audio / seconds}

    data = SpeechData(manifest, cache=True)
    SpeechData(manifest, cache=False).features(len(data) - 1)  # one-time import and FFT set-up, not timed
    chosen = make_batches(data.durations, batch_size, order="bucketed")[:batches]
    audio = float(sum(data.durations[i] for b in chosen for i in b))
    rows = [timed("in the loop, features computed on the fly", data, lambda: [data.batch(b) for b in chosen]),
            timed("in the loop, features cached in RAM (epoch 2 onwards)", data,
                  lambda: [data.batch(b) for b in chosen])]
    import tempfile

    with tempfile.TemporaryDirectory() as folder:  # --feature-cache DIR: written in epoch 1, read after
        disk = SpeechData(manifest, cache=folder)
        rows.append(timed("in the loop, on-disk cache, first epoch (compute + write)", disk,
                          lambda: [disk.batch(b) for b in chosen]))
        disk = SpeechData(manifest, cache=folder)
        rows.append(timed("in the loop, on-disk cache (--feature-cache), epoch 2 onwards", disk,
                          lambda: [disk.batch(b) for b in chosen]))
    for w in workers:
        fresh = SpeechData(manifest, cache=False)
        pipe = ms_pipeline(fresh, chosen, workers=w, prefetch=prefetch)
        rows.append(timed(f"mindspore.dataset, {w} worker{'s' if w > 1 else ''}, prefetch {prefetch}", fresh,
                          lambda: sum(1 for _ in pipe.create_tuple_iterator(num_epochs=1, output_numpy=True))))
    return pd.DataFrame(rows)


def data_parallel_rates(manifest, out_dir, *, preset: str = "mini", batch_size: int = 8, steps: int = 12,
                        workers: tuple[int, ...] = (1, 2), mode: str = "graph", timeout: float = 1800):
    """Train `steps` steps with 1 process and with `msrun` workers on 127.0.0.1 (batch_size per worker);
    audio seconds trained per wall second, from each rank's metrics (the first third of steps, which
    compile graphs, left out)."""
    import shutil
    import socket

    import pandas as pd

    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", GLOG_v="3")
    cores = usable_cores()
    rows = []
    for w in workers:
        out = Path(out_dir) / f"workers{w}"
        shutil.rmtree(out, ignore_errors=True)
        threads = max(1, cores // w)  # the workers share this machine's cores
        train = ["train", "--preset", preset, "--manifest", str(manifest), "--batch-size", str(batch_size),
                 "--max-steps", str(steps), "--mode", mode, "--save-every", "0", "--out", str(out),
                 "--threads", str(threads)]
        if w == 1:
            cmd = [sys.executable, "-m", "ds2_helpers", *train]
        else:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            cmd = [str(bindir / "msrun"), "--worker_num", str(w), "--local_worker_num", str(w), "--master_addr",
                   "127.0.0.1", "--master_port", str(port), "--log_dir", str(out / "logs"), "--join", "True",
                   str(Path(__file__).with_name("__main__.py")), *train]
        run = subprocess.run(cmd, env=dict(env, OMP_NUM_THREADS=str(threads)), capture_output=True, text=True,
                             timeout=timeout)
        logs = sorted(out.glob("metrics*.csv"))
        if run.returncode != 0 or not logs:
            rows.append({"workers": w, "error": (run.stderr or run.stdout).strip().splitlines()[-1:] or "failed"})
            continue
        frames = [pd.read_csv(p) for p in logs]
        timed = [f.iloc[len(f) // 3:] for f in frames]
        step = statistics.median(max(col) for col in zip(*(t.step_seconds for t in timed)))  # ranks wait for each other
        audio = sum(t.audio_seconds.mean() for t in timed)
        rows.append({"workers": w, "threads_each": threads, "global_batch": w * batch_size, "step_seconds": step,
                     "audio_seconds_per_second": audio / step})
    table = pd.DataFrame(rows)
    if "audio_seconds_per_second" in table and len(table):
        table["speedup"] = table.audio_seconds_per_second / table.audio_seconds_per_second.iloc[0]
    return table


def step_drift(manifest, out_dir, *, convs: tuple[str, ...] = ("native", "matmul"), steps: int = 80,
               preset: str = "mini", batch_size: int = 16, timeout: float = 3600):
    """Step times of one real training run per convolution, `steps` long: does a configuration stay as fast
    as its first steps (which is all the suite times)? Long format: conv, step, step_seconds."""
    import shutil

    import pandas as pd

    frames = []
    for conv in convs:
        out = Path(out_dir) / conv
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "ds2_helpers", "train", "--preset", preset, "--manifest", str(manifest),
               "--batch-size", str(batch_size), "--max-steps", str(steps), "--epochs", "100", "--save-every", "0",
               "--conv", conv, "--out", str(out)]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, GLOG_v="3"))
        if run.returncode != 0:
            raise RuntimeError(f"training with --conv {conv} failed: {(run.stderr or run.stdout).strip()[-300:]}")
        log = pd.read_csv(out / "metrics.csv")
        frames.append(pd.DataFrame({"conv": conv, "step": log.step, "step_seconds": log.step_seconds}))
    return pd.concat(frames, ignore_index=True)


def scale_out_hours(epoch_hours: float, step_seconds: float, machines: list[int], *, params: int = 86_608_096,
                    network_gbit: float = 10.0):
    """Projected epoch hours on k machines like this one: compute divided by k, plus a ring all-reduce of
    the float32 gradients each step (2 (k-1)/k x their size over the network). A model, not a measurement."""
    import pandas as pd

    grad_bytes = 4 * params
    rows = []
    for k in machines:
        comm = 2 * (k - 1) / k * grad_bytes * 8 / (network_gbit * 1e9)
        hours = epoch_hours / k * (step_seconds + comm) / step_seconds
        rows.append({"machines": k, "allreduce_seconds_per_step": comm, "epoch_hours": hours,
                     "efficiency": epoch_hours / k / hours})
    return pd.DataFrame(rows)
