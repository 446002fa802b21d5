"""Charts of measured speed: projected epoch hours per configuration (the `bench` suite) and step times
along a training run (`studies.step_drift`). Each function takes a table and returns a matplotlib figure;
plots of data, spectrograms and losses live in `ds2_helpers.plots`.
"""

from __future__ import annotations


def epoch_chart(frame, title: str = "Projected hours for one epoch of train-clean-100"):
    """Horizontal bars of epoch hours per configuration, with the machine's floor as a line."""
    import matplotlib.pyplot as plt

    if "epoch_hours" not in frame:  # every configuration failed: an empty chart, not an error
        frame = frame.assign(epoch_hours=float("nan"))
    ok = frame[frame.epoch_hours.notna()]
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(ok), 2) + 1.2))
    ax.barh(ok.name, ok.epoch_hours, color="tab:blue")
    if len(ok) and "floor_epoch_hours" in ok:
        paper = ok[ok.preset == "paper"] if "preset" in ok else ok
        if len(paper):
            ax.axvline(paper.floor_epoch_hours.iloc[0], color="tab:red", ls="--", label="machine floor (paper model)")
            ax.legend(loc="lower right")
    ax.invert_yaxis()
    if len(ok):  # a log axis of no bars has no range
        ax.set(xscale="log", xlabel="hours (log scale)")
    else:
        ax.text(0.5, 0.5, "no configuration was measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    fig.tight_layout()
    return fig


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


def inference_chart(run: dict, title: str = "Inference: real-time factor against the machine's bound"):
    """Horizontal bars of measured RTF per configuration (log scale), each with its roofline bound as a red tick:
    the closer the bar ends to its tick, the nearer that configuration runs to what the machine allows."""
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in run["results"] if "rtf" in r]
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(rows), 2) + 1.2))
    if not rows:
        ax.text(0.5, 0.5, "no configuration was measured", ha="center", va="center", transform=ax.transAxes)
    else:
        y = np.arange(len(rows))
        ax.barh(y, [r["rtf"] for r in rows], color="tab:blue", label="measured RTF")
        ax.scatter([r["bound_rtf"] for r in rows], y, marker="|", s=400, color="tab:red", zorder=3,
                   label="bound (roofline)")
        ax.set_yticks(y, [r["name"] for r in rows])
        ax.invert_yaxis()
        ax.set(xscale="log", xlabel="seconds of computing per second of audio (log scale)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig
