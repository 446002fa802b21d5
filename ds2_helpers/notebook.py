"""The first call of every notebook: seeds, plot style, and a line saying which mode this run is in."""

from __future__ import annotations

import os
import random

import numpy as np

from ds2_helpers.paths import quick_mode


def setup(seed: int = 1234) -> bool:
    """Seed Python, NumPy (and MindSpore when it is loaded), quiet logs, print the mode; returns quick mode."""
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
    quick = quick_mode()
    print("QUICK mode (DS2_QUICK=1): small runs so CI stays fast" if quick else
          "FULL mode: the sizes in the parameters cell")
    return quick
