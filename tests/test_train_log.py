"""The training run's report: metrics.csv appended and flushed row by row, plain progress lines under nohup."""

from types import SimpleNamespace

import numpy as np
import pandas as pd

from ds2_helpers.train_log import METRIC_FIELDS, EpochProgress, MetricsLog, metrics_row


def fake_batch(frames=(300, 200)):
    return SimpleNamespace(x_len=np.array(frames), ids=["a", "b"], padding_fraction=0.25,
                           x=np.zeros((2, 1, 161, max(frames))))


def row(step):
    return metrics_row(step=step, epoch=0, loss=1.5, lr=1e-3, batch=fake_batch(), step_seconds=2.0,
                       window_stride=0.01, rss_gb=1.23456, released=False, rank=0)


def test_metrics_row_measures_the_batch():
    r = row(1)
    assert list(r) == METRIC_FIELDS
    assert r["audio_seconds"] == 5.0 and r["audio_seconds_per_second"] == 2.5 and r["frames"] == 300
    assert r["utterance_ids"] == "a b" and r["rss_gb"] == 1.235


def test_metrics_log_is_flushed_each_row_and_a_resumed_run_appends(tmp_path):
    path = tmp_path / "metrics.csv"
    log = MetricsLog(path)
    log.write(row(1))
    assert len(pd.read_csv(path)) == 1  # readable while the run goes on
    log.close()
    with MetricsLog(path) as again:  # resume: same file, no second header
        again.write(row(2))
    table = pd.read_csv(path)
    assert table.step.tolist() == [1, 2] and list(table.columns) == METRIC_FIELDS


def test_plain_lines_every_log_every_steps_when_nobody_watches(capsys, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    shown = EpochProgress(0, 2, 4, 0, enabled=True, log_every=2)
    for step in range(1, 5):
        shown.update(row(step), step)
    shown.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" loss")[0] for line in lines] == ["epoch 1/2 step 2/4 (global 2)", "epoch 1/2 step 4/4 (global 4)"]
    quiet = EpochProgress(0, 1, 4, 0, enabled=False, log_every=1)
    quiet.update(row(1), 1)
    assert capsys.readouterr().out == ""
