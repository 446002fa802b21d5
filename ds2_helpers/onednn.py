"""oneDNN's instruction-set cap: the package sets ONEDNN_MAX_CPU_ISA=AVX2 unless you set it yourself.

MindSpore's CPU kernels for Conv2d, MatMul and LSTM are oneDNN primitives, and oneDNN picks an implementation
for the instruction sets it is allowed. On an AVX-512 host it picked `jit_uni_ncsp:conv+ref:any` for the
DeepSpeech2 convolutions' forward and backward-data passes, many times slower than the `x64:gemm:jit` it picks
when capped at AVX2; the cap costs the matrix products some speed. `python -m ds2_helpers onednn` measures both
on this machine (training steps of both presets and convolutions, evaluate's batches of the paper model, and
oneDNN's own per-primitive times);
data/onednn_isa_reference_2core.json holds the reference run and notebook 07 reads it.

oneDNN reads the variable when MindSpore creates its first primitive, so setting it when ds2_helpers is
imported works even after `import mindspore`. `ONEDNN_MAX_CPU_ISA=ALL` lifts the cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
DEFAULT = "AVX2"


def configure(environ: dict | None = None) -> str:
    """Cap oneDNN at AVX2 unless the user chose a value; returns the value in force."""
    environ = os.environ if environ is None else environ
    for name in VARIABLES:
        if environ.get(name):
            return environ[name]
    environ["ONEDNN_MAX_CPU_ISA"] = DEFAULT
    return DEFAULT


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((set(l.split(":", 1)[1].split()) for l in fh if l.startswith("flags")), set())
    except OSError:
        return set()


_PROBE = """
import mindspore as ms, numpy as np
from ds2_helpers.config import model_preset
from ds2_helpers.model import DeepSpeech2
from ds2_helpers.train import CTCLossNet
net = DeepSpeech2(model_preset({preset!r}), conv_impl="native"); net.set_train(True)
n, t = {batch}, {frames}
x = ms.Tensor(np.random.default_rng(0).standard_normal((n, 1, net.cfg.n_bins, t)).astype(np.float32))
grad = ms.value_and_grad(CTCLossNet(net), None, net.trainable_params())
grad(x, ms.Tensor(np.full(n, t, np.int32)), ms.Tensor(np.ones((n, 20), np.int32)), ms.Tensor(np.full(n, 20, np.int32)))
"""


def primitive_times(isa: str, *, preset: str = "mini", batch: int = 16, frames: int = 192,
                    timeout: float = 900) -> list[dict]:
    """oneDNN's own account of one PyNative training step (ONEDNN_VERBOSE): milliseconds per primitive kind,
    pass and implementation, slowest first."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa, ONEDNN_VERBOSE="1", GLOG_v="3")
    run = subprocess.run([sys.executable, "-c", _PROBE.format(preset=preset, batch=batch, frames=frames)],
                         capture_output=True, text=True, env=env, timeout=timeout)
    total, count = Counter(), Counter()
    for line in (run.stdout + run.stderr).splitlines():
        if ",primitive,exec," in line:
            p = line.split(",")
            key = (p[5], p[7], p[6])  # primitive, pass, implementation
            total[key] += float(p[-1])
            count[key] += 1
    return [{"isa": isa, "primitive": k[0], "pass": k[1], "implementation": k[2], "calls": count[k],
             "milliseconds": round(ms, 1)} for k, ms in total.most_common()]


def step_times(isas=("ALL", DEFAULT), *, convs=("native", "matmul"), shapes=(("mini", 16, 1.9), ("paper", 2, 4.0)),
               steps: int = 2, timeout: float = 1800) -> list[dict]:
    """Median Graph-mode training step per (preset, convolution, cap), each in a fresh `bench-one` process."""
    from ds2_helpers.bench import BenchConfig, run_isolated

    rows = []
    for preset, batch, seconds in shapes:
        for conv in convs:
            for isa in isas:
                cfg = BenchConfig(name=f"{preset} {conv} {isa}", preset=preset, batch_size=batch, seconds=seconds,
                                  conv_impl=conv, onednn_isa=isa)
                result = run_isolated(cfg, steps=steps, warmup=1, timeout=timeout)
                rows.append({"preset": preset, "batch_size": batch, "seconds": seconds, "conv": conv, "isa": isa,
                             "step_seconds": result.get("step_seconds"), "error": result.get("error")})
    return rows


def inference_times(isas=("ALL", DEFAULT), *, convs=("native", "matmul"), preset: str = "paper",
                    batch_seconds: float = 40.0, utterances: int = 6, timeout: float = 1800) -> list[dict]:
    """Real-time factor of `evaluate`'s batches (Graph mode, length-sorted, up to `batch_seconds` of padded audio,
    test-clean-like lengths) per (convolution, cap), each in a fresh `inference_bench` process: inference has no
    backward pass, so the cap is measured for it on its own."""
    from ds2_helpers.inference_bench import InferenceConfig, run_isolated

    rows = []
    for conv in convs:
        for isa in isas:
            cfg = InferenceConfig(name=f"{preset} evaluate {conv} {isa}", preset=preset, batch_seconds=batch_seconds,
                                  utterances=utterances, conv=conv, onednn_isa=isa)
            result = run_isolated(cfg, timeout=timeout)
            rows.append({"preset": preset, "batch_seconds": batch_seconds, "conv": conv, "isa": isa,
                         "audio_seconds": result.get("audio_seconds"), "rtf": result.get("rtf"),
                         "child_isa": result.get("onednn_isa"), "error": result.get("error")})
    return rows


def measure(out: str | Path | None = None) -> dict:
    """Step times, evaluate's real-time factors and oneDNN's per-primitive times under both caps; written as JSON
    to `out`."""
    from ds2_helpers.atomic import atomic_write_text
    from ds2_helpers.bench import provenance

    result = {**provenance(), "avx512": "avx512f" in cpu_flags(), "steps": step_times(), "inference": inference_times(),
              "primitives": primitive_times("ALL") + primitive_times(DEFAULT)}
    if out:
        atomic_write_text(out, json.dumps(result, indent=2))
    return result


def summary(result: dict) -> str:
    """What a measurement (`measure`) says, in one paragraph of numbers read from it (README, notebook 07)."""
    steps = {(r["preset"], r["conv"], r["isa"]): r for r in result["steps"] if r.get("step_seconds")}
    parts = []
    for preset in dict.fromkeys(r["preset"] for r in result["steps"]):
        capped, free = steps.get((preset, "native", DEFAULT)), steps.get((preset, "native", "ALL"))
        if capped and free:
            parts.append(f"{preset} (batch {capped['batch_size']} x {capped['seconds']:g} s) "
                         f"{free['step_seconds']:.1f} s per step with every instruction set allowed, "
                         f"{capped['step_seconds']:.1f} s capped at {DEFAULT} "
                         f"({free['step_seconds'] / capped['step_seconds']:.0f}x)")
    slow = [p for p in result["primitives"] if p["isa"] == "ALL" and p["primitive"] == "convolution"]
    worst = max(slow, key=lambda p: p["milliseconds"]) if slow else None
    cost = []
    for preset in dict.fromkeys(r["preset"] for r in result["steps"]):
        if (preset, "matmul", DEFAULT) in steps and (preset, "matmul", "ALL") in steps:
            capped, free = steps[(preset, "matmul", DEFAULT)], steps[(preset, "matmul", "ALL")]
            change = capped["step_seconds"] / free["step_seconds"]
            cost.append(f"{preset} {100 * abs(change - 1):.0f}% {'slower' if change > 1 else 'faster'}")
    text = (f"Graph-mode training steps with MindSpore's Conv2d on a {result['machine']['cores']}-core "
            f"{result['machine']['cpu']} host ({'with' if result.get('avx512') else 'without'} AVX-512): "
            + "; ".join(parts) + ".")
    if worst:
        text += (f" Uncapped, oneDNN ran the convolutions' {worst['pass'].replace('_', ' ')} pass with "
                 f"`{worst['implementation']}` ({worst['milliseconds'] / 1000:.1f} s of one PyNative mini step).")
    if cost:
        text += f" Capped, our matrix-product convolution's steps run {', '.join(cost)}."
    return text + _inference_summary(result.get("inference", []))


def _inference_summary(rows: list[dict]) -> str:
    """The inference sentence of `summary`: evaluate's real-time factor per cap and convolution."""
    rtf = {(r["conv"], r["isa"]): r["rtf"] for r in rows if r.get("rtf")}
    capped, free = rtf.get(("native", DEFAULT)), rtf.get(("native", "ALL"))
    if not (capped and free):
        return ""
    row = next(r for r in rows if r.get("rtf"))
    text = (f" Inference too (`{row['preset']}`, evaluate's batches of up to {row['batch_seconds']:g} s, "
            f"{row['audio_seconds']:.0f} s of audio): RTF {free:.3f} with every instruction set allowed, "
            f"{capped:.3f} capped ({free / capped:.1f}x)")
    if ("matmul", "ALL") in rtf:
        text += f"; with our matrix-product convolution {rtf[('matmul', 'ALL')]:.3f} uncapped"
        if ("matmul", DEFAULT) in rtf:
            text += f", {rtf[('matmul', DEFAULT)]:.3f} capped"
    return text + "."
