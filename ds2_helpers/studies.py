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


#: The model zoo's published training speed (official/audio/DeepSpeech2/README.md, "Training Performance"):
#: 2 x NV SMX2 V100-32G, MindSpore 1.0.0, batch_size 20 per device, 2.139 s per step.
ZOO_GPU = {"devices": 2, "device": "V100-32G", "batch_per_device": 20, "step_seconds": 2.139,
           "source": "model zoo README, official/audio/DeepSpeech2, Training Performance (MindSpore 1.0.0)"}


def hardware_projection(epoch_hours: float, floor_hours: float, cores: int, per_doubling: float, *,
                        core_counts=(4, 8, 16, 32), utterances: int | None = None):
    """Epoch hours on other hardware, each row a projection labelled with what it rests on - none measured here.

    - more cores, best case: this machine's floor divided by the core ratio (the arithmetic divides perfectly);
    - more cores at a measured thread scaling: this machine's best epoch, each doubling of the cores giving the
      speed-up `per_doubling` (notebook 07 takes it from the reference run's 1-thread row; none where it is
      below 1, since a run can use fewer threads than cores);
    - GPUs: the model zoo's published step time on 2 x V100 at batch 20 per device, times the steps of one
      epoch of `utterances` (its padding and utterance lengths are the zoo's own, not ours)."""
    import math

    import pandas as pd

    from ds2_helpers.bench import EPOCH_UTTERANCES

    utterances = utterances or EPOCH_UTTERANCES
    rows = [{"hardware": f"this machine ({cores} cores)", "epoch_hours": epoch_hours,
             "rests_on": "measured in this notebook (best full-architecture configuration)"}]
    # a run can always use fewer threads than cores: where more threads were slower, more cores gain nothing
    gain = max(per_doubling, 1.0)
    measured = (f"{per_doubling:.2f}x per doubling of the threads (the reference run's)" if per_doubling > 1 else
                f"no gain: more threads ran {per_doubling:.2f}x as fast in the reference run")
    for n in core_counts:
        rows.append({"hardware": f"{n} cores, perfect scaling", "epoch_hours": floor_hours * cores / n,
                     "rests_on": "this machine's floor x cores / n: a bound, not an estimate"})
        rows.append({"hardware": f"{n} cores, scaling as measured", "epoch_hours":
                     epoch_hours / gain ** math.log2(n / cores), "rests_on": measured})
    steps = math.ceil(utterances / (ZOO_GPU["devices"] * ZOO_GPU["batch_per_device"]))
    rows.append({"hardware": f"{ZOO_GPU['devices']} x {ZOO_GPU['device']} (GPU)",
                 "epoch_hours": steps * ZOO_GPU["step_seconds"] / 3600,
                 "rests_on": f"{steps} steps x {ZOO_GPU['step_seconds']} s ({ZOO_GPU['source']})"})
    return pd.DataFrame(rows)
