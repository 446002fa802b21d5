"""Charts of measured speed draw what their tables hold: one bar per measured configuration, the machine's
floor when the table has it, one line per convolution with block medians."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ds2_helpers import charts  # noqa: E402


def bar_widths(ax):
    return [patch.get_width() for patch in ax.patches]


def test_epoch_chart_draws_one_bar_per_measured_configuration_and_the_paper_floor():
    frame = pd.DataFrame({"name": ["mini run", "course", "failed", "batch 4"],
                          "preset": ["mini", "paper", "paper", "paper"],
                          "epoch_hours": [2.0, 150.0, np.nan, 60.0],
                          "floor_epoch_hours": [0.5, 40.0, np.nan, 40.0]})
    fig = charts.epoch_chart(frame, title="t")
    ax = fig.axes[0]
    assert bar_widths(ax) == [2.0, 150.0, 60.0]  # the failed row has no bar
    assert [t.get_text() for t in ax.get_yticklabels()] == ["mini run", "course", "batch 4"]
    floors = [line for line in ax.lines if line.get_label().startswith("machine floor")]
    assert len(floors) == 1 and list(floors[0].get_xdata()) == [40.0, 40.0]  # the paper model's, not the mini's
    assert ax.get_title() == "t" and ax.get_xscale() == "log"
    plt.close(fig)


def test_epoch_chart_without_a_floor_draws_no_floor_line():
    fig = charts.epoch_chart(pd.DataFrame({"name": ["a", "b"], "epoch_hours": [3.0, 1.0]}))
    assert bar_widths(fig.axes[0]) == [3.0, 1.0] and not fig.axes[0].lines
    plt.close(fig)


def test_epoch_chart_of_failed_configurations_only_is_empty(tmp_path):
    """`bench` in which every configuration failed (no epoch_hours column) still writes its files."""
    from dataclasses import asdict

    from ds2_helpers import bench

    fig = charts.epoch_chart(pd.DataFrame({"name": ["a"], "error": ["out of memory"]}))
    assert bar_widths(fig.axes[0]) == [] and not fig.axes[0].lines
    plt.close(fig)
    failed = [{"error": "killed by signal 9", **asdict(bench.BenchConfig(name="a", preset="mini"))}]
    assert bench.write_results(failed, tmp_path)["png"].stat().st_size > 1000


def test_drift_chart_draws_block_medians_per_convolution():
    steps = np.arange(1, 7)
    frame = pd.concat([pd.DataFrame({"conv": "native", "step": steps, "step_seconds": [5.0, 1.0, 1.2, 1.4, 2.0, 3.0]}),
                       pd.DataFrame({"conv": "matmul", "step": steps, "step_seconds": [4.0, 2.0, 2.0, 2.0, 9.0, 8.0]})],
                      ignore_index=True)
    fig = charts.drift_chart(frame, every=3)
    lines = fig.axes[0].lines
    assert [line.get_label() for line in lines] == ["native", "matmul"]  # in the table's order
    assert list(lines[0].get_xdata()) == [3, 6] and list(lines[0].get_ydata()) == pytest.approx([1.2, 2.0])
    assert list(lines[1].get_ydata()) == pytest.approx([2.0, 8.0])
    assert fig.axes[0].get_ylim()[0] == 0
    plt.close(fig)
