"""The inference harness: real-time factor of each way of running a trained network, against the roofline.

Configurations (each in its own process, like the training harness `bench`): batch 1 in Graph mode (what
`transcribe` runs), batch 1 op by op (PyNative), the exported MindIR (batch 1, any length; timed utterance by
utterance beside the checkpoint's compiled network in the same process, so `time_vs_checkpoint` is a ratio that
minute-to-minute drift of a shared host cannot fake - separate processes differed by 15% either way), and
`evaluate`'s batches (length-sorted, up to `batch_seconds` of padded audio each) over utterance lengths drawn like
test-clean's (1-35 s). The network's time only: spectrograms are random (features cost the same in every
configuration, `studies.feature_seconds_per_audio_second` measures them) and greedy decoding is included.
Evaluate's rows run their largest batch once before timing (`warm_seconds`): the first batch of a process pays
for growing MindSpore's memory pool, once per evaluation of test-clean's 2,620 utterances, not per batch.

The bound of each row comes from `inference.bounds` with the machine's rates measured in the same run.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

#: Utterance length of the batch-1 rows: train-clean-100's mean (test-clean's is 7.4 s).
BATCH1_SECONDS = 12.7


@dataclass(frozen=True)
class InferenceConfig:
    """One way of running the network for inference."""

    name: str
    preset: str = "paper"
    runner: str = "graph"           # graph | pynative | mindir
    batch_seconds: float = 0.0      # 0: one utterance at a time; else evaluate's batches of this much padded audio
    seconds: float = BATCH1_SECONDS  # batch 1: the utterance's length
    utterances: int = 3             # batch 1: timed repeats; batches: utterances drawn like test-clean's
    seed: int = 0
    conv: str = "native"            # ModelConfig.conv: MindSpore's Conv2d or our matrix-product convolution
    onednn_isa: str | None = None   # ONEDNN_MAX_CPU_ISA of the child (None: the package's cap, ds2_helpers.onednn)


def suite(presets=("paper", "mini"), *, quick: bool = False) -> list[InferenceConfig]:
    """The rows of notebook 06 and `bench --inference`: per preset, batch 1 three ways and evaluate's batches."""
    configs = []
    for preset in presets:
        seconds = 2.0 if quick else BATCH1_SECONDS
        configs += [InferenceConfig(f"{preset}: batch 1, graph", preset, "graph", seconds=seconds),
                    InferenceConfig(f"{preset}: batch 1, pynative", preset, "pynative", seconds=seconds),
                    InferenceConfig(f"{preset}: batch 1, MindIR", preset, "mindir", seconds=seconds),
                    InferenceConfig(f"{preset}: evaluate, 160 s batches, graph", preset, "graph", batch_seconds=160.0,
                                    utterances=8 if quick else 48)]
    return configs


def test_clean_like(n: int, seed: int = 0) -> np.ndarray:
    """`n` utterance lengths (s) drawn like LibriSpeech's, the two longest in test-clean's 30-35 s tail."""
    from ds2_helpers.minicorpus import TEST_TAIL_SECONDS, librispeech_durations

    return librispeech_durations(n, np.random.default_rng(seed), longest=TEST_TAIL_SECONDS if n >= 8 else None)


def _batches(cfg: InferenceConfig) -> list[np.ndarray]:
    """Frame counts per batch: one utterance repeated, or evaluate's batches over test-clean-like lengths."""
    from ds2_helpers.dataset import make_batches

    if not cfg.batch_seconds:
        return [np.array([int(cfg.seconds * 100) + 1])] * cfg.utterances
    frames = (test_clean_like(cfg.utterances, cfg.seed) * 100).astype(int) + 1
    return [frames[idx] for idx in make_batches(frames / 100, 10_000, batch_seconds=cfg.batch_seconds,
                                                order="sorted")]


def run_one(cfg: InferenceConfig) -> dict:
    """Time `cfg` (inside the child process): compile first, then every batch; RTF over the timed audio."""
    import tempfile

    import mindspore as ms

    from ds2_helpers.config import model_preset
    from ds2_helpers.decode import greedy_decode
    from ds2_helpers.export import ExportedModel, export_mindir
    from ds2_helpers.inference import forward, warm_up
    from ds2_helpers.model import DeepSpeech2
    from ds2_helpers.memory import peak_gb

    ms.set_context(mode=ms.PYNATIVE_MODE)
    model_cfg = model_preset(cfg.preset, conv=cfg.conv)
    net = DeepSpeech2(model_cfg)
    net.set_train(False)
    rng = np.random.default_rng(cfg.seed)
    batches = _batches(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        runner = "graph" if cfg.runner == "mindir" else cfg.runner
        warm_up(net, runner)
        fn = forward(net, runner)

        def checkpoint(x, lengths):
            logits, out_len = fn(ms.Tensor(x), ms.Tensor(lengths))
            return greedy_decode(logits.asnumpy(), out_len.asnumpy())

        run = checkpoint
        if cfg.runner == "mindir":
            t0 = time.perf_counter()  # its own load and first shapes, not the checkpoint's compilation
            exported = ExportedModel(export_mindir(net, Path(tmp) / "model.mindir"))
            exported(np.zeros((model_cfg.n_bins, 64), np.float32))
            exported(np.zeros((model_cfg.n_bins, 96), np.float32))

            def run_exported(x, lengths):
                return [exported(x[k, 0, :, : lengths[k]]) for k in range(len(x))]
            run = run_exported
        compile_seconds = time.perf_counter() - t0
        warm_seconds = 0.0
        if cfg.batch_seconds:  # MindSpore's memory pool grows to the largest batch once per process (page faults:
            # 7 s of a 17 s first batch measured for paper at 160 s): paid once by a whole evaluation, kept apart
            largest = max(batches, key=lambda f: len(f) * int(f.max()))
            t0 = time.perf_counter()
            run(np.zeros((len(largest), 1, model_cfg.n_bins, int(largest.max())), np.float32),
                largest.astype(np.int32))
            warm_seconds = time.perf_counter() - t0
        times, beside = [], []
        for i, frames in enumerate(batches):
            x = np.zeros((len(frames), 1, model_cfg.n_bins, int(frames.max())), np.float32)
            for k, f in enumerate(frames):
                x[k, 0, :, :f] = rng.standard_normal((model_cfg.n_bins, f))
            pair = [(run, times)] + ([(checkpoint, beside)] if run is not checkpoint else [])
            for fn_, out in pair[:: 1 if i % 2 == 0 else -1]:  # alternate who goes first: drift hits both alike
                t0 = time.perf_counter()
                fn_(x, frames.astype(np.int32))
                out.append(time.perf_counter() - t0)
    audio = float(sum(f.sum() for f in batches)) / 100
    seconds = float(sum(times)) if cfg.batch_seconds else statistics.median(times) * len(times)
    row = {"seconds": seconds, "audio_seconds": audio, "rtf": seconds / audio, "batches": len(batches),
           "mean_batch": float(np.mean([len(f) for f in batches])), "compile_seconds": compile_seconds,
           "warm_seconds": warm_seconds, "peak_rss_mb": peak_gb() * 1024,  # VmHWM: ru_maxrss keeps the parent's
           "onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "conv": cfg.conv}
    if beside:  # the MindIR beside the checkpoint's compiled network, utterance by utterance in this process
        row["time_vs_checkpoint"] = statistics.median(t / c for t, c in zip(times, beside))
        row["checkpoint_rtf"] = statistics.median(beside) * len(beside) / audio
    return row


def run_isolated(cfg: InferenceConfig, timeout: float = 3600) -> dict:
    """`run_one` in a fresh process (`bench.run_json_process`: a failure comes back as {'error': ...})."""
    from ds2_helpers.bench import child_env, run_json_process

    return run_json_process([sys.executable, "-m", "ds2_helpers.inference_bench", json.dumps(asdict(cfg))],
                            env=child_env(onednn_isa=cfg.onednn_isa), timeout=timeout)


def machine_rates(presets) -> dict:
    """The roofline's two rates, measured now: sgemm GFLOP/s (the better of NumPy and MindSpore) and, per preset,
    the fastest GB/s at which W_hh streams through the batch-1 recurrence (`inference.weight_read_gbytes`)."""
    from ds2_helpers.bench import matmul_gflops
    from ds2_helpers.config import model_preset
    from ds2_helpers.inference import weight_read_gbytes

    rates = matmul_gflops()
    reads = {p: weight_read_gbytes(model_preset(p)) for p in presets}
    return {"sgemm_gflops": max(rates.values()), "sgemm_by_library": rates,
            "read_gbps": {p: max(r.values()) for p, r in reads.items()}, "read_by_method": reads}


def with_bounds(result: dict, cfg: InferenceConfig, rates: dict) -> dict:
    """A timed row with its roofline: the bound RTF and the share of it reached (100% = at the bound)."""
    from ds2_helpers.bench import percent_at_mindspore_rate
    from ds2_helpers.config import model_preset
    from ds2_helpers.inference import bounds

    row = {**asdict(cfg), **result}
    if "error" in result:
        return row
    b = bounds(model_preset(cfg.preset), max(1, round(result["mean_batch"])), rates["sgemm_gflops"],
               rates["read_gbps"][cfg.preset])
    out = {**row, **b, "percent_of_bound": 100 * b["bound_rtf"] / result["rtf"],
           "percent_of_flop_floor": 100 * b["flop_rtf"] / result["rtf"]}
    if rates.get("mindspore_gflops"):  # the floor at MindSpore's own matmul rate: what its kernels could reach
        out["percent_of_mindspore_floor"] = percent_at_mindspore_rate(out["percent_of_flop_floor"],
                                                                      rates["sgemm_gflops"], rates["mindspore_gflops"])
    return out


def run_suite(configs: list[InferenceConfig], progress: bool = True) -> dict:
    """Every configuration in its own process, the machine's rates measured before and after (the higher kept:
    the strictest bound, so a busy moment while measuring a rate cannot flatter the rows)."""
    from ds2_helpers.bench import provenance

    presets = sorted({c.preset for c in configs})
    before = machine_rates(presets)
    results = []
    for cfg in configs:
        t0 = time.perf_counter()
        res = run_isolated(cfg)
        results.append(res)
        if progress:
            shown = f"RTF {res['rtf']:.3f}" if "rtf" in res else res["error"]
            print(f"{cfg.name}: {shown} ({time.perf_counter() - t0:.0f} s)", flush=True)
    after = machine_rates(presets)
    rates = strictest(before, after)
    return {**provenance(), "rates": rates,
            "results": [with_bounds(r, c, rates) for r, c in zip(results, configs)]}


def strictest(before: dict, after: dict) -> dict:
    """The higher of two measurements of each rate (the lower bound on time that is hardest to beat)."""
    return {"sgemm_gflops": max(before["sgemm_gflops"], after["sgemm_gflops"]),
            "mindspore_gflops": max(r["sgemm_by_library"]["mindspore"] for r in (before, after)),
            "read_gbps": {p: max(before["read_gbps"][p], after["read_gbps"][p]) for p in before["read_gbps"]},
            "before": before, "after": after}


def table(run: dict):
    """One row per configuration: RTF, the FLOP floor, the W_hh traffic, the roofline (`inference.bounds`) and the
    share of it reached."""
    import pandas as pd

    frame = pd.DataFrame(run["results"])
    cols = [c for c in ["name", "rtf", "flop_rtf", "memory_rtf", "bound_rtf", "bound", "percent_of_bound",
                        "percent_of_flop_floor", "percent_of_mindspore_floor", "time_vs_checkpoint", "mean_batch",
                        "compile_seconds", "peak_rss_mb", "error"]
            if c in frame]
    return frame[cols]


def styled(frame):
    """`table`'s frame for display: three significant digits, whole megabytes for the peak."""
    floats = [c for c in frame.select_dtypes("float").columns if c != "peak_rss_mb"]
    whole = [c for c in ["peak_rss_mb"] if c in frame]  # absent when every row failed
    return frame.style.format("{:.3g}", subset=floats, na_rep="").format("{:,.0f}", subset=whole, na_rep="")


def write(run: dict, out: str | Path) -> dict[str, Path]:
    """inference.json, inference.csv and inference.png in `out` (`atomic.write_report`)."""
    from ds2_helpers.atomic import write_report
    from ds2_helpers.charts import inference_chart

    return write_report(out, "inference", run, table(run), inference_chart(run), dpi=110, bbox_inches="tight")

if __name__ == "__main__":
    print(json.dumps(run_one(InferenceConfig(**json.loads(sys.argv[1])))))
