"""What notebook 00 checks: Python, pinned packages, cores and threads, a MindSpore run, espeak-ng."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
import sys
import time

from ds2_helpers.paths import repo_path


def pinned_requirements(python: str | None = None) -> dict[str, str]:
    """name -> version from pyproject.toml's `name==version` dependencies, for one Python ("3.10"; default:
    the running one). A pin with an environment marker counts only where its marker holds."""
    from packaging.requirements import Requirement

    python = python or "{}.{}".format(*sys.version_info[:2])
    text = repo_path("pyproject.toml").read_text()
    block = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    pins = {}
    for spec in re.findall(r'^\s*"([^"]+)"', block, flags=re.M):
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"python_version": python}):
            (clause,) = req.specifier  # every dependency is one exact pin
            pins[req.name] = clause.version
    return pins


def pip_fix(name: str, *more: str) -> str:
    """The one-line fix for a missing or wrong package: its pinned version (plus any `more` specs), or make venv."""
    pin = pinned_requirements().get(name)
    specs = [f"'{name}=={pin}'" if pin else f"'{name}'", *(f"'{m}'" for m in more)]
    return f"pip install {' '.join(specs)} (or: make venv)"


def package_report():
    """A table of each pinned package: wanted, installed, and the fix when they differ."""
    import pandas as pd

    rows = []
    for name, wanted in pinned_requirements().items():
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            have = None
        ok = have == wanted
        rows.append({"package": name, "pinned": wanted, "installed": have or "missing", "ok": ok,
                     "fix": "" if ok else pip_fix(name)})
    return pd.DataFrame(rows)


CGROUP = "/sys/fs/cgroup"  # where Linux mounts the control groups that can limit a container


def cpu_quota(cgroup: str = CGROUP) -> float | None:
    """Cores' worth of CPU time a container's control group allows, or None without a limit: cgroup v2's
    `cpu.max` ("quota period" in microseconds, "max" = none) or v1's `cpu/cpu.cfs_quota_us` over
    `cpu.cfs_period_us` (-1 = none). A quota does not hide cores: `nproc` and the affinity mask still show all."""
    try:
        quota, period = open(os.path.join(cgroup, "cpu.max")).read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open(os.path.join(cgroup, "cpu", "cpu.cfs_quota_us")).read())
        period = int(open(os.path.join(cgroup, "cpu", "cpu.cfs_period_us")).read())
        return None if quota < 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores(cgroup: str = CGROUP) -> int:
    """Cores this process may run on: the affinity mask (what a taskset allows), fewer where a container's CPU
    quota allows less time than that (rounded up: 1.5 cores' worth keeps 2 threads busy part of the time)."""
    import math

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota(cgroup)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def machine_report() -> dict[str, object]:
    """Python, OS, cores usable by this process, thread settings that change speed."""
    cores = usable_cores()
    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
            "cores (usable)": cores, "CPU quota (cores)": cpu_quota() or "(none)",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
            "memory (GiB)": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def mindspore_check() -> dict[str, object]:
    """Compile and run a tiny gradient step on the CPU, in Graph and PyNative mode; report the time."""
    import numpy as np

    out = {"numpy": np.__version__}
    try:
        import mindspore as ms
        from mindspore import nn, ops
    except Exception as exc:  # not installed, or a binary that cannot load (NumPy 2 breaks MindSpore 2.10's)
        out["problem"] = (f"MindSpore does not import ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}): "
                          f"{pip_fix('mindspore', 'numpy<2')}, then restart the kernel")
        return out
    out = {"mindspore": ms.__version__, **out}
    if int(np.__version__.split(".")[0]) >= 2:
        out["problem"] = "NumPy 2 breaks MindSpore 2.10 ('compiled using NumPy 1.x'): pip install 'numpy<2'"
        return out
    for mode, name in ((ms.PYNATIVE_MODE, "pynative"), (ms.GRAPH_MODE, "graph")):
        ms.set_context(mode=mode)
        net = nn.Dense(8, 2)

        def loss_fn(x):
            return ops.sum(net(x) ** 2)

        grad = ms.value_and_grad(loss_fn, None, net.trainable_params())
        step = ms.jit(grad) if name == "graph" else grad
        x = ms.Tensor(np.ones((4, 8), np.float32))
        t0 = time.perf_counter()
        loss, grads = step(x)
        out[f"{name} step (s)"] = round(time.perf_counter() - t0, 3)
        out[f"{name} ok"] = bool(np.isfinite(loss.asnumpy())) and len(grads) == 2
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return out


def espeak_check() -> dict[str, object]:
    """Synthesise one word to prove the mini corpus can be built here."""
    from ds2_helpers.espeak import Espeak, SynthesisError, Voice

    try:
        engine = Espeak.get()
        audio = engine.synthesize("hello", Voice("en+f2"))
    except (ImportError, OSError, SynthesisError) as exc:
        return {"problem": f"espeak-ng cannot speak ({exc}): {pip_fix('espeakng-loader')}"}
    return {"espeak sample rate": engine.sample_rate, "seconds for 'hello'": round(len(audio) / engine.sample_rate, 2)}
