"""The first call of every notebook: seeds, plot style, and a line saying which mode this run is in."""

from __future__ import annotations

import os
import random

import numpy as np

from ds2_helpers.paths import quick_mode


def setup(namespace: dict | None = None, *, quick: dict | None = None, seed: int = 1234) -> bool:
    """Seed Python, NumPy (and MindSpore when it is loaded), quiet logs; returns True in quick mode.

    `quick`: the parameters this notebook shrinks under DS2_QUICK=1 (as `make test` sets it), applied to
    `namespace` (the notebook's `globals()`) in quick mode. One printed line says which mode runs and, from the
    values themselves, what that changes."""
    os.environ.setdefault("GLOG_v", "3")
    random.seed(seed)
    np.random.seed(seed)
    try:
        import mindspore as ms

        ms.set_seed(seed)
    except ImportError:
        pass
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 90, "axes.grid": True, "grid.alpha": 0.3})
    is_quick = quick_mode()
    print(mode_line(is_quick, namespace or {}, quick or {}))
    if is_quick and quick:
        namespace.update(quick)
    return is_quick


def mode_line(is_quick: bool, namespace: dict, quick: dict) -> str:
    """What this run of the notebook does, in one line."""
    if not quick:
        return ("QUICK mode (DS2_QUICK=1)" if is_quick else "DS2_QUICK unset") + \
            ": this notebook runs the same in both modes"
    if is_quick:
        changes = ", ".join(f"{k} {namespace.get(k)!r} -> {v!r}" for k, v in quick.items())
        return (f"QUICK mode (DS2_QUICK=1, as `make test` sets it): {changes}; CI-sized runs, so the numbers "
                "below are a smoke test, not results")
    values = ", ".join(f"{k} = {namespace.get(k)!r}" for k in quick)
    return f"DS2_QUICK unset: the parameters cell runs as written ({values})"


def with_source_file(obj):
    """Save the code of the cell that defines `obj` (a function, or a Cell class: its `construct`) where Python
    says it lives, as Jupyter's debugger does; returns `obj` (a decorator).

    MindSpore's compiler reads the source *file* of every function it compiles, to tie graph nodes to code
    lines. A notebook cell has no file, only a name (/tmp/ipykernel_<pid>/<hash>.py), and every failed read
    logs an error from C++ ("Get realpath failed") while the compiler holds Python's lock: in long cells
    enough lines to fill the notebook's output pipe, and the kernel hangs. Code in .py files (the package's)
    never hits this."""
    import linecache
    from pathlib import Path

    code = (obj.construct if isinstance(obj, type) else obj).__code__
    path = Path(code.co_filename)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(linecache.getlines(str(path))))
    return obj
