"""Scaling studies: the data pipeline's feeding rates, a scale-out projection, data parallel with msrun and
step times along a real training run."""

import pytest

from ds2_helpers import charts, studies


def test_pipeline_rates_time_each_way_of_feeding_the_model(tiny_corpus):
    table = studies.pipeline_rates(tiny_corpus / "train.csv", batch_size=4, batches=3, workers=(1, 2))
    assert len(table) == 6 and (table.audio_seconds_per_second > 0).all()
    on_the_fly, cached, disk_first, disk = table.audio_seconds_per_second.iloc[:4]
    assert cached > on_the_fly  # the second pass only pads arrays; the first reads FLAC and runs an STFT
    assert disk > on_the_fly and disk > disk_first  # reading a .npy beats decoding FLAC and an STFT
    assert table.pipeline.str.contains("2 workers").any()


def test_scale_out_projection():
    table = studies.scale_out_hours(100.0, 10.0, [1, 2, 8], params=1_000_000, network_gbit=1.0)
    assert table.epoch_hours.iloc[0] == pytest.approx(100.0) and table.allreduce_seconds_per_step.iloc[0] == 0
    # k=2: one all-reduce of 4 MB sends 2*(1/2)*32 Mbit over 1 Gbit/s = 0.032 s per 10 s step
    assert table.epoch_hours.iloc[1] == pytest.approx(50.0 * 10.032 / 10.0)
    assert table.efficiency.is_monotonic_decreasing


@pytest.mark.slow
def test_data_parallel_rates_with_msrun(tiny_corpus, tmp_path):
    table = studies.data_parallel_rates(tiny_corpus / "train.csv", tmp_path, batch_size=2, steps=3, mode="pynative")
    assert "error" not in table or table.error.isna().all(), table.to_dict()
    assert list(table.workers) == [1, 2] and list(table.global_batch) == [2, 4]
    assert (table.audio_seconds_per_second > 0).all() and table.speedup.iloc[0] == pytest.approx(1.0)
    assert (tmp_path / "workers2" / "metrics.rank1.csv").exists()


@pytest.mark.slow
def test_step_drift_logs_every_step_of_each_convolution(tiny_corpus, tmp_path):
    frame = studies.step_drift(tiny_corpus / "train.csv", tmp_path, steps=4, batch_size=4)
    assert sorted(frame.conv.unique()) == ["matmul", "native"]
    for _, group in frame.groupby("conv"):
        assert list(group.step) == [1, 2, 3, 4] and (group.step_seconds > 0).all()
    fig = charts.drift_chart(frame, every=2)
    assert len(fig.axes[0].lines) == 2 and list(fig.axes[0].lines[0].get_xdata()) == [2, 4]


def test_hardware_projection_rows_rest_on_their_sources():
    from ds2_helpers import studies

    table = studies.hardware_projection(40.0, 10.0, 2, per_doubling=1.5, core_counts=(4, 8), utterances=4000)
    rows = table.set_index("hardware").epoch_hours
    assert rows["this machine (2 cores)"] == 40.0
    assert rows["4 cores, perfect scaling"] == pytest.approx(5.0) and rows["8 cores, perfect scaling"] == pytest.approx(2.5)
    assert rows["4 cores, scaling as measured"] == pytest.approx(40.0 / 1.5)     # one doubling at the measured 1.5x
    assert rows["8 cores, scaling as measured"] == pytest.approx(40.0 / 1.5 ** 2)
    assert rows["2 x V100-32G (GPU)"] == pytest.approx(100 * 2.139 / 3600)      # 4000 / (2 x 20) = 100 steps
    assert table.rests_on.str.len().min() > 10  # every row says what it rests on
    slower = studies.hardware_projection(40.0, 10.0, 2, per_doubling=0.9, core_counts=(4,), utterances=4000)
    row = slower.set_index("hardware").loc["4 cores, scaling as measured"]
    assert row.epoch_hours == 40.0 and "no gain" in row.rests_on  # more threads were slower: use fewer
