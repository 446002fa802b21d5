"""The speed harness: time training steps of named configurations side by side, project epoch hours,
and compare each with the machine's floor (training FLOPs / measured matrix-multiply rate).

Each configuration runs in its own process (`python -m ds2_helpers bench-one`), so threads, compiled
graphs and peak memory of one never leak into the next.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ds2_helpers.environment import usable_cores

#: LibriSpeech train-clean-100: the epoch the course asks about.
EPOCH_UTTERANCES = 28_539
EPOCH_AUDIO_HOURS = 100.6
MEAN_SECONDS = 12.7
CHARS_PER_SECOND = 14.5  # LibriSpeech transcripts: about 14-15 characters per second of speech


@dataclass(frozen=True)
class BenchConfig:
    """One way of running a training step; every field has the course's value unless named otherwise."""

    name: str
    preset: str = "paper"
    mode: str = "graph"
    batch_size: int = 1
    seconds: float = MEAN_SECONDS
    fixed_frames: int | None = None
    conv_impl: str = "native"  # ModelConfig.conv
    threads: int | None = None
    onednn_isa: str | None = None   # ONEDNN_MAX_CPU_ISA of the child (None: the package's cap, ds2_helpers.onednn)
    amp: str | None = None          # "float16" / "bfloat16" through mindspore.amp (O3: whole network)
    freeze_conv: bool = False
    freeze_rnn_layers: int = 0
    hidden_size: int | None = None
    hidden_layers: int | None = None
    rnn_type: str | None = None
    padding_fraction: float = 0.0   # extra padded frames, as a fraction of the batch (unsorted batches)
    kind: str = "step"              # baseline | step (same model and data: a recommendation candidate)
                                    # | contrast (what not to do) | other model (changes what is learned)

    def model_config(self):
        """The ModelConfig this benchmark trains."""
        from ds2_helpers.config import model_preset

        overrides = {k: v for k, v in {"hidden_size": self.hidden_size, "hidden_layers": self.hidden_layers,
                                       "rnn_type": self.rnn_type}.items() if v is not None}
        return model_preset(self.preset, **overrides)


def course_config(**overrides) -> BenchConfig:
    """The course's configuration: model zoo network (Conv2d), Graph mode, batch 1, padded to 1250 frames."""
    base = BenchConfig(name="course: graph, batch 1, 1250-frame padding, Conv2d", conv_impl="native",
                       fixed_frames=1250, kind="baseline")
    return replace(base, **overrides)


def synthetic_batch(cfg: BenchConfig, seed: int = 0):
    """A batch of `batch_size` utterances of `seconds` each (random spectrograms, plausible label lengths)."""
    from ds2_helpers.dataset import Batch
    from ds2_helpers.model import output_lengths

    rng = np.random.default_rng(seed)
    frames = int(cfg.seconds * 100) + 1
    audio_frames = min(frames, cfg.fixed_frames) if cfg.fixed_frames else frames
    total = cfg.fixed_frames or int(np.ceil(audio_frames * (1 + cfg.padding_fraction)))
    n = cfg.batch_size
    x = np.zeros((n, 1, 161, total), np.float32)
    x[:, :, :, :audio_frames] = rng.standard_normal((n, 1, 161, audio_frames)).astype(np.float32)
    chars = min(int(cfg.seconds * CHARS_PER_SECOND), int(output_lengths(audio_frames)) // 2)
    y = rng.integers(0, 28, size=(n, chars)).astype(np.int32)
    return Batch(x, np.full(n, audio_frames, np.int32), y, np.full(n, chars, np.int32), [f"synthetic-{i}" for i in range(n)])


def run_one(cfg: BenchConfig, *, steps: int = 3, warmup: int = 1) -> dict:
    """Time `steps` training steps after `warmup` (compilation); called inside the child process."""
    import mindspore as ms

    from ds2_helpers.config import train_preset
    from ds2_helpers.train import Trainer

    if cfg.threads:
        ms.set_context(runtime_num_threads=cfg.threads)
    tcfg = train_preset("paper", batch_size=cfg.batch_size, mode=cfg.mode, save_every=0,
                        freeze_conv=cfg.freeze_conv, freeze_rnn_layers=cfg.freeze_rnn_layers)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg.model_config(), tcfg, tmp, rank=0, world=1, conv_impl=cfg.conv_impl, amp=cfg.amp)
        batch = synthetic_batch(cfg)
        times, losses = [], []
        for k in range(warmup + steps):
            t0 = time.perf_counter()
            losses.append(trainer.step(batch))
            if k >= warmup:
                times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    audio = float(batch.x_len.sum()) / 100
    return {"step_seconds": step, "step_seconds_all": times, "audio_seconds_per_step": audio,
            "onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "audio_seconds_per_second": audio / step, "loss_finite": bool(np.isfinite(losses).all()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "padding_fraction": batch.padding_fraction}


def run_isolated(cfg: BenchConfig, *, steps: int, warmup: int, timeout: float = 3600) -> dict:
    """Run one configuration in a fresh process; failures come back as {'error': ...}, never an exception."""
    env = dict(os.environ, GLOG_v="3")
    if cfg.threads:
        env["OMP_NUM_THREADS"] = str(cfg.threads)
    if cfg.onednn_isa:
        env["ONEDNN_MAX_CPU_ISA"] = cfg.onednn_isa
    args = [sys.executable, "-m", "ds2_helpers", "bench-one", json.dumps(asdict(cfg)), "--steps", str(steps),
            "--warmup", str(warmup)]
    try:
        run = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(run.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    if run.returncode < 0:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return {"error": f"killed by signal {-run.returncode} (on Linux usually the out-of-memory killer: "
                         f"this machine has {total:.0f} GiB)"}
    lines = [l for l in (run.stderr or run.stdout).splitlines() if l.strip() and "WARNING" not in l]
    reason = next((l for l in lines if "Error" in l or "error" in l), lines[-1] if lines else "no output")
    return {"error": reason.strip()[:300]}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Measured float32 matrix-multiply rate of NumPy (BLAS) and of MindSpore on this machine."""
    import mindspore as ms
    from mindspore import ops

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    flops = 2.0 * n ** 3
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        t.append(time.perf_counter() - t0)
    numpy_rate = flops / min(t) / 1e9
    x = ms.Tensor(a)
    ops.matmul(x, x).asnumpy()
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ops.matmul(x, x).asnumpy()
        t.append(time.perf_counter() - t0)
    return {"numpy": numpy_rate, "mindspore": flops / min(t) / 1e9}


def project(result: dict, cfg: BenchConfig, floor_rate_gflops: float, epoch_hours: float = EPOCH_AUDIO_HOURS) -> dict:
    """Epoch hours, and the share of the machine's floor, from a timed result."""
    from ds2_helpers.model import training_flops_per_audio_second

    if "error" in result:
        return result
    flops = training_flops_per_audio_second(cfg.model_config(), freeze_conv=cfg.freeze_conv,
                                            freeze_rnn_layers=cfg.freeze_rnn_layers)
    floor_seconds = flops / (floor_rate_gflops * 1e9)  # compute seconds per audio second at the floor
    rate = result["audio_seconds_per_second"]
    return {**result, "epoch_hours": epoch_hours / rate, "floor_epoch_hours": epoch_hours * floor_seconds,
            "percent_of_floor": 100.0 * floor_seconds * rate}


@dataclass
class Suite:
    """A list of configurations measured in one run, against the first (the baseline)."""

    configs: list[BenchConfig]
    steps: int = 3
    warmup: int = 1
    results: list[dict] = field(default_factory=list)

    def run(self, progress: bool = True) -> list[dict]:
        """Measure every configuration; the machine's matmul rate is measured once, first."""
        rates = matmul_gflops()
        floor = max(rates.values())
        self.results = []
        for cfg in self.configs:
            t0 = time.perf_counter()
            res = project(run_isolated(cfg, steps=self.steps, warmup=self.warmup), cfg, floor)
            res.update(asdict(cfg), wall_seconds=time.perf_counter() - t0, matmul_gflops=floor,
                       numpy_gflops=rates["numpy"], mindspore_gflops=rates["mindspore"])
            self.results.append(res)
            if progress:
                shown = (f"{res['step_seconds']:.2f} s/step, {res['audio_seconds_per_second']:.2f} audio-s/s, "
                         f"epoch {res['epoch_hours']:.1f} h" if "error" not in res else "failed: " + res["error"])
                print(f"{cfg.name}: {shown}", flush=True)
        base = self.results[0].get("audio_seconds_per_second")
        for res in self.results:
            if base and "audio_seconds_per_second" in res:
                res["speedup"] = res["audio_seconds_per_second"] / base
        return self.results


def machine() -> dict:
    """What the numbers were measured on."""
    import platform

    cpu = "unknown"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = usable_cores()
    return {"cpu": cpu, "cores": cores, "python": platform.python_version(), "platform": platform.platform()}


def write_results(results: list[dict], out: str | Path) -> dict[str, Path]:
    """results.json (with the machine), results.csv and a bar chart of projected epoch hours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from ds2_helpers.atomic import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "measured": time.strftime("%Y-%m-%d %H:%M"), "results": results}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2))
    frame = pd.DataFrame(results)
    atomic_write_text(out / "results.csv", frame.drop(columns=["step_seconds_all"], errors="ignore").to_csv(index=False))
    fig = epoch_chart(frame)
    fig.savefig(out / "epoch_hours.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return {"json": out / "results.json", "csv": out / "results.csv", "png": out / "epoch_hours.png"}


def epoch_chart(frame, title: str = "Projected hours for one epoch of train-clean-100"):
    """Horizontal bars of epoch hours per configuration, with the machine's floor as a line."""
    import matplotlib.pyplot as plt

    ok = frame[frame.get("epoch_hours").notna()] if "epoch_hours" in frame else frame.iloc[0:0]
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(ok), 2) + 1.2))
    ax.barh(ok.name, ok.epoch_hours, color="tab:blue")
    if len(ok) and "floor_epoch_hours" in ok:
        paper = ok[ok.preset == "paper"] if "preset" in ok else ok
        if len(paper):
            ax.axvline(paper.floor_epoch_hours.iloc[0], color="tab:red", ls="--", label="machine floor (paper model)")
            ax.legend(loc="lower right")
    ax.invert_yaxis()
    ax.set(xscale="log", xlabel="hours (log scale)", title=title)
    fig.tight_layout()
    return fig


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


def drift_chart(frame, *, every: int = 10, title: str = "Step time during one training run"):
    """Median step time per block of `every` steps, one line per convolution."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for conv, group in frame.groupby("conv", sort=False):
        blocks = group.groupby((group.step - 1) // every).step_seconds.median()
        ax.plot((blocks.index + 1) * every, blocks.values, marker="o", markersize=3, label=conv)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"median seconds per step (blocks of {every})")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


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


def results_table(results: list[dict]):
    """The answer as a table: one row per configuration, best projected epoch first."""
    import pandas as pd

    frame = pd.DataFrame(results)
    if "kind" not in frame:
        frame["kind"] = None
    cols = ["name", "kind", "preset", "batch_size", "step_seconds", "audio_seconds_per_second", "epoch_hours", "speedup",
            "percent_of_floor", "peak_rss_mb", "error"]
    for col in cols:
        if col not in frame:
            frame[col] = None
    return frame[cols].sort_values("epoch_hours", na_position="last").reset_index(drop=True)


def load_reference(path: str | Path) -> dict | None:
    """A committed reference run (results.json of `bench`), or None when there is none."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def recommendations(results: list[dict]):
    """Changes that keep model and data (so accuracy) and made training faster, biggest speed-up first."""
    table = results_table(results)
    ok = table[(table.kind == "step") & table.error.isna() & (table.speedup > 1)]
    return ok.sort_values("speedup", ascending=False).reset_index(drop=True)
