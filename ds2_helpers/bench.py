"""The step harness: time training steps of named configurations side by side, project epoch hours,
and compare each with the machine's floor (training FLOPs / measured matrix-multiply rate).

Each configuration runs in its own process (`python -m ds2_helpers bench-one`), so threads, compiled
graphs and peak memory of one never leak into the next. Studies beyond one step (data pipeline, data
parallel, drift over a run, scale-out) are in `ds2_helpers.studies`; charts of the results in
`ds2_helpers.charts`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from ds2_helpers import charts
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
    padding_fraction: float = 0.0   # extra padded frames per audio frame (unsorted batches); rows report the share
    recompute: tuple[str, ...] = ()  # Cell.recompute() on these parts: "conv" (the block), "rnn" (each layer)
    micro_batch: int | None = None  # TrainConfig.micro_batch: the batch run in micro-batches, one update
    layerwise: bool = False         # TrainConfig.layerwise: backward one layer at a time, each recomputed
    device: str = "CPU"             # MindSpore's device: "GPU" or "Ascend" need MindSpore's wheel for them
    kind: str = "step"              # baseline | step (same model and data: a recommendation candidate)
                                    # | contrast (what not to do) | other model (changes what is learned)
    steps: int | None = None        # at least this many timed steps for this configuration (else the suite's)

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
    from ds2_helpers.memory import peak_gb, reset_peak, resident_gb
    from ds2_helpers.train import Trainer

    if cfg.device != "CPU":
        ms.set_device(cfg.device)
    if cfg.threads:
        ms.set_context(runtime_num_threads=cfg.threads)
    tcfg = train_preset("paper", batch_size=cfg.batch_size, mode=cfg.mode, save_every=0,
                        freeze_conv=cfg.freeze_conv, freeze_rnn_layers=cfg.freeze_rnn_layers,
                        micro_batch=cfg.micro_batch, layerwise=cfg.layerwise)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg.model_config(), tcfg, tmp, rank=0, world=1, conv_impl=cfg.conv_impl, amp=cfg.amp)
        for cell in recompute_cells(trainer.net, cfg.recompute):
            cell.recompute()
        built, start_peak = resident_gb(), peak_gb()
        reset_peak()  # from here the peak is the steps' (step_peak_rss_mb); peak_rss_mb keeps the whole process's
        batch = synthetic_batch(cfg)
        times, losses = [], []
        for k in range(warmup + steps):
            t0 = time.perf_counter()
            losses.append(trainer.step(batch))
            if k >= warmup:
                times.append(time.perf_counter() - t0)
    step, step_peak = statistics.median(times), peak_gb()
    audio = float(batch.x_len.sum()) / 100
    return {"step_seconds": step, "step_seconds_all": times, "audio_seconds_per_step": audio,
            "onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "audio_seconds_per_second": audio / step, "loss_finite": bool(np.isfinite(losses).all()),
            "peak_rss_mb": max(start_peak, step_peak) * 1024, "built_rss_mb": built * 1024,
            "step_peak_rss_mb": step_peak * 1024,
            "padding_fraction": batch.padding_fraction}


def recompute_cells(net, parts) -> list:
    """The cells of `net` that `BenchConfig.recompute` names: "conv" the convolution block, "rnn" each RNN layer."""
    known = {"conv": lambda: [net.conv], "rnn": lambda: list(net.RNN.lstms)}
    unknown = set(parts) - set(known)
    if unknown:
        raise ValueError(f"recompute {sorted(unknown)}: use 'conv' and/or 'rnn'")
    return [cell for part in parts for cell in known[part]()]


def run_json_process(args: list[str], *, env: dict | None = None, timeout: float = 3600) -> dict:
    """Run `args` (a measurement that prints its result as one JSON line) in a fresh process; a failure comes back
    as {'error': ...}, never an exception: a timeout, a kill (named: on Linux usually the out-of-memory killer) or
    the error line of its output."""
    try:
        run = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                             env=dict(env if env is not None else os.environ, GLOG_v="3"))
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
    reason = next((l for l in lines if "Error" in l or "error" in l),
                  lines[-1] if lines else f"exit status {run.returncode}, no output")
    return {"error": reason.strip()[:300]}


def run_isolated(cfg: BenchConfig, *, steps: int, warmup: int, timeout: float = 3600) -> dict:
    """Run one configuration in a fresh process (`run_json_process`)."""
    env = child_env(onednn_isa=cfg.onednn_isa, threads=cfg.threads)
    args = [sys.executable, "-m", "ds2_helpers", "bench-one", json.dumps(asdict(cfg)), "--steps", str(steps),
            "--warmup", str(warmup)]
    return run_json_process(args, env=env, timeout=timeout)


def matmul_gflops(sizes: tuple[int, ...] = (2048, 4096), repeats: int = 2) -> dict[str, float]:
    """Measured float32 matrix-multiply rate of NumPy (BLAS) and of MindSpore on this machine: the best over the
    square sizes `sizes` and `repeats` products each. MindSpore's oneDNN kernel ran markedly faster at 4096 than at
    2048 on an Intel host where training steps sustained more than the 2048 rate: one size understated the floor."""
    import mindspore as ms
    from mindspore import ops

    rates = {"numpy": 0.0, "mindspore": 0.0}
    for n in sizes:
        a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
        x = ms.Tensor(a)
        ops.matmul(x, x).asnumpy()
        for name, run in (("numpy", lambda: a @ a), ("mindspore", lambda: ops.matmul(x, x).asnumpy())):
            best = np.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - t0)
            rates[name] = max(rates[name], 2.0 * n ** 3 / best / 1e9)
    return rates


def percent_at_mindspore_rate(percent_of_floor: float, floor_gflops: float, mindspore_gflops: float) -> float:
    """A share of the floor re-expressed as if MindSpore's own matrix-multiply rate set it: where NumPy's (say
    OpenBLAS on AVX-512) is faster, what MindSpore's kernels could reach is the nearer target."""
    return percent_of_floor * floor_gflops / mindspore_gflops


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
        """Measure every configuration; the machine's matmul rate is measured before and after them and the
        higher kept (this host type's speed drifts within a run: the floor must not flatter the steps)."""
        before = matmul_gflops()
        measured = []
        for cfg in self.configs:
            t0 = time.perf_counter()
            measured.append((cfg, run_isolated(cfg, steps=max(cfg.steps or 0, self.steps), warmup=self.warmup),
                             time.perf_counter() - t0))
            if progress:
                res = measured[-1][1]
                shown = (f"{res['step_seconds']:.2f} s/step, {res['audio_seconds_per_second']:.2f} audio-s/s"
                         if "error" not in res else "failed: " + res["error"])
                print(f"{cfg.name}: {shown}", flush=True)
        after = matmul_gflops()
        rates = {k: max(before[k], after[k]) for k in before}
        floor = max(rates.values())
        self.results = []
        for cfg, raw, seconds in measured:
            # the configuration, then what was measured: a measured value (the batch's padding share, the oneDNN
            # cap the child ran with) wins over the configuration field of the same name
            res = {**asdict(cfg), **project(raw, cfg, floor)}
            res.update(wall_seconds=seconds, matmul_gflops=floor, numpy_gflops=rates["numpy"],
                       mindspore_gflops=rates["mindspore"])
            self.results.append(res)
        base = self.results[0].get("audio_seconds_per_second")
        for res in self.results:
            if base and "audio_seconds_per_second" in res:
                res["speedup"] = res["audio_seconds_per_second"] / base
        return self.results


def provenance() -> dict:
    """What a measurement file records first: the machine and when ("measured", compared as text by
    `experiments.reference_peaks` to take the later of two references)."""
    return {"machine": machine(), "measured": time.strftime("%Y-%m-%d %H:%M")}


def child_env(*, onednn_isa: str | None = None, threads: int | None = None) -> dict:
    """This process's environment for a measuring child, with its oneDNN cap and thread count when given."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if onednn_isa:
        env["ONEDNN_MAX_CPU_ISA"] = onednn_isa
    return env


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
    import pandas as pd

    from ds2_helpers.atomic import write_report

    payload = {**provenance(), "results": results}
    frame = pd.DataFrame(results)
    return write_report(out, "results", payload, frame.drop(columns=["step_seconds_all"], errors="ignore"),
                        charts.epoch_chart(frame), png="epoch_hours.png", indent=2, dpi=100, bbox_inches="tight")


def results_table(results: list[dict]):
    """The answer as a table: one row per configuration, best projected epoch first."""
    import pandas as pd

    frame = pd.DataFrame(results)
    if "kind" not in frame:
        frame["kind"] = None
    cols = ["name", "kind", "preset", "batch_size", "step_seconds", "audio_seconds_per_second", "epoch_hours",
            "floor_epoch_hours", "speedup", "percent_of_floor", "matmul_gflops", "peak_rss_mb", "error"]
    for col in cols:
        if col not in frame:
            frame[col] = None
    return frame[cols].sort_values("epoch_hours", na_position="last").reset_index(drop=True)


def config_key(row: dict) -> str:
    """What a result row measured (its BenchConfig's fields but the name, kind and steps), as one comparable
    string: rows of two runs are the same configuration when their keys are equal, whatever they are called. A
    field the row lacks (a run older than the field) counts as its default."""
    from ds2_helpers.onednn import DEFAULT

    defaults = {f.name: f.default for f in fields(BenchConfig) if f.name not in ("name", "kind", "steps")}
    key = {n: row.get(n, default) for n, default in defaults.items()}
    # a run overwrites these two with what it measured (a failed row keeps the configured values): compare the
    # instruction set with the package's cap standing for None, and padding as present or not
    key["onednn_isa"] = key["onednn_isa"] or DEFAULT
    key["padding_fraction"] = bool(key["padding_fraction"])
    return json.dumps(key, sort_keys=True, default=list)


def beside_reference(results: list[dict], reference_results: list[dict]):
    """The reference's table (best projected epoch first) with this run's epoch hours and speed-up beside each
    configuration both measured, matched by `config_key`, not by name."""
    mine = {config_key(r): r for r in results}
    key_of = {r["name"]: config_key(r) for r in reference_results}
    table = results_table(reference_results)[["name", "kind", "batch_size", "epoch_hours", "speedup",
                                               "percent_of_floor", "error"]]
    for col in ("epoch_hours", "speedup"):
        table[f"this run: {col}"] = [mine.get(key_of[name], {}).get(col) for name in table.name]
    return table


def load_reference(path: str | Path) -> dict | None:
    """A committed reference run (results.json of `bench`), or None when there is none."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def recommendations(results: list[dict]):
    """Changes that keep model and data (so accuracy) and made training faster, biggest speed-up first."""
    table = results_table(results)
    ok = table[(table.kind == "step") & table.error.isna() & (table.speedup > 1)]
    return ok.sort_values("speedup", ascending=False).reset_index(drop=True)
