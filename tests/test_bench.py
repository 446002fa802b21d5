"""The speed harness measures real steps in child processes and projects epochs from them."""

import json

import pytest

from ds2_helpers import bench
from ds2_helpers.dataset import padding_waste
from ds2_helpers.experiments import experiments


def test_projection_arithmetic():
    cfg = bench.BenchConfig(name="x", preset="paper")
    res = bench.project({"audio_seconds_per_second": 2.0}, cfg, floor_rate_gflops=100.0)
    assert res["epoch_hours"] == pytest.approx(bench.EPOCH_AUDIO_HOURS / 2)
    # paper: ~29.1 GFLOP per audio second -> 0.291 s per audio second at 100 GFLOP/s
    assert res["floor_epoch_hours"] == pytest.approx(bench.EPOCH_AUDIO_HOURS * 0.2914, rel=1e-3)
    assert res["percent_of_floor"] == pytest.approx(100 * 0.2914 * 2.0, rel=1e-3)


def test_course_configuration_and_synthetic_batch():
    course = bench.course_config(preset="mini", seconds=3.0)
    assert (course.mode, course.batch_size, course.fixed_frames, course.conv_impl) == ("graph", 1, 1250, "native")
    batch = bench.synthetic_batch(course)
    assert batch.x.shape == (1, 1, 161, 1250) and batch.x_len[0] == 301
    assert batch.padding_fraction == pytest.approx(1 - 301 / 1250)
    assert batch.y_len[0] == int(3.0 * bench.CHARS_PER_SECOND)


def test_padding_waste_of_random_versus_sorted_batches():
    durations = [1.0, 10.0] * 8
    assert padding_waste(durations, 2, "sorted") == pytest.approx(0.0)
    assert padding_waste(durations, 2, "random") > 0.1


def test_quick_experiments_cover_every_axis():
    names = " | ".join(c.name for c in experiments(quick=True))
    for word in ("course", "pynative", "batch 4", "random batches", "thread", "float16", "bfloat16", "transfer",
                 "smaller", "combined"):
        assert word in names, word
    assert "GRU" in " | ".join(c.name for c in experiments(quick=False))


def test_suite_measures_side_by_side_and_writes_results(tmp_path):
    configs = [bench.course_config(preset="mini", seconds=1.0, fixed_frames=200),
               bench.BenchConfig(name="batch 2", preset="mini", seconds=1.0, batch_size=2),
               bench.BenchConfig(name="bad", preset="mini", seconds=1.0, amp="bfloat16")]
    results = bench.Suite(configs, steps=1, warmup=1).run(progress=False)
    assert results[0]["speedup"] == pytest.approx(1.0)
    assert results[1]["audio_seconds_per_second"] > 0 and results[1]["epoch_hours"] > 0
    assert results[1]["peak_rss_mb"] > 100 and 0 < results[1]["percent_of_floor"] < 100
    assert "error" in results[2] and "ReverseSequence" in results[2]["error"]  # README: refused (ReverseSequence)
    files = bench.write_results(results, tmp_path)
    payload = json.loads(files["json"].read_text())
    assert payload["machine"]["cores"] >= 1 and len(payload["results"]) == 3
    assert files["png"].stat().st_size > 1000 and files["csv"].read_text().startswith("step_seconds")


def test_frozen_layers_count_forward_only_flops():
    from ds2_helpers.config import model_preset
    from ds2_helpers.model import architecture_table, training_flops_per_audio_second

    cfg = model_preset("paper")
    fwd = architecture_table(cfg)["forward GFLOP/s-audio"].to_numpy() * 1e9
    assert training_flops_per_audio_second(cfg) == pytest.approx(3 * fwd.sum())
    # conv + 3 lower RNN layers frozen: forward only for them, full training for RNN 4, 5 and the dense layer
    assert training_flops_per_audio_second(cfg, freeze_conv=True, freeze_rnn_layers=3) == pytest.approx(
        fwd[:6].sum() + 3 * fwd[6:].sum())
    # frozen RNN layers above trainable convolutions still pass gradients down: 2x forward
    assert training_flops_per_audio_second(cfg, freeze_rnn_layers=2) == pytest.approx(
        3 * fwd[:3].sum() + 2 * fwd[3:5].sum() + 3 * fwd[5:].sum())
    frozen = bench.BenchConfig(name="f", freeze_conv=True, freeze_rnn_layers=3)
    full = bench.BenchConfig(name="x")
    rate = {"audio_seconds_per_second": 1.0}
    assert bench.project(rate, frozen, 100.0)["floor_epoch_hours"] < bench.project(rate, full, 100.0)["floor_epoch_hours"]


def test_pipeline_rates_time_each_way_of_feeding_the_model(tiny_corpus):
    table = bench.pipeline_rates(tiny_corpus / "train.csv", batch_size=4, batches=3, workers=(1, 2))
    assert len(table) == 6 and (table.audio_seconds_per_second > 0).all()
    on_the_fly, cached, disk_first, disk = table.audio_seconds_per_second.iloc[:4]
    assert cached > on_the_fly  # the second pass only pads arrays; the first reads FLAC and runs an STFT
    assert disk > on_the_fly and disk > disk_first  # reading a .npy beats decoding FLAC and an STFT
    assert table.pipeline.str.contains("2 workers").any()


def test_scale_out_projection():
    table = bench.scale_out_hours(100.0, 10.0, [1, 2, 8], params=1_000_000, network_gbit=1.0)
    assert table.epoch_hours.iloc[0] == pytest.approx(100.0) and table.allreduce_seconds_per_step.iloc[0] == 0
    # k=2: one all-reduce of 4 MB sends 2*(1/2)*32 Mbit over 1 Gbit/s = 0.032 s per 10 s step
    assert table.epoch_hours.iloc[1] == pytest.approx(50.0 * 10.032 / 10.0)
    assert table.efficiency.is_monotonic_decreasing


@pytest.mark.slow
def test_data_parallel_rates_with_msrun(tiny_corpus, tmp_path):
    table = bench.data_parallel_rates(tiny_corpus / "train.csv", tmp_path, batch_size=2, steps=3, mode="pynative")
    assert "error" not in table or table.error.isna().all(), table.to_dict()
    assert list(table.workers) == [1, 2] and list(table.global_batch) == [2, 4]
    assert (table.audio_seconds_per_second > 0).all() and table.speedup.iloc[0] == pytest.approx(1.0)
    assert (tmp_path / "workers2" / "metrics.rank1.csv").exists()


@pytest.mark.slow
def test_step_drift_logs_every_step_of_each_convolution(tiny_corpus, tmp_path):
    frame = bench.step_drift(tiny_corpus / "train.csv", tmp_path, steps=4, batch_size=4)
    assert sorted(frame.conv.unique()) == ["matmul", "native"]
    for _, group in frame.groupby("conv"):
        assert list(group.step) == [1, 2, 3, 4] and (group.step_seconds > 0).all()
    fig = bench.drift_chart(frame, every=2)
    assert len(fig.axes[0].lines) == 2 and list(fig.axes[0].lines[0].get_xdata()) == [2, 4]
