"""The step harness measures real steps in child processes and projects epochs from them."""

import json
import os
import sys

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
    full = {c.name: c for c in experiments(quick=False)}
    assert any("GRU" in name for name in full)
    micro = full["batch 16 in micro-batches of 4"]
    assert (micro.batch_size, micro.micro_batch, micro.kind) == (16, 4, "step")


def test_suite_measures_side_by_side_and_writes_results(tmp_path):
    configs = [bench.course_config(preset="mini", seconds=1.0, fixed_frames=200),
               bench.BenchConfig(name="batch 2", preset="mini", seconds=1.0, batch_size=2),
               bench.BenchConfig(name="bad", preset="mini", seconds=1.0, amp="bfloat16")]
    results = bench.Suite(configs, steps=1, warmup=1).run(progress=False)
    assert results[0]["speedup"] == pytest.approx(1.0)
    assert results[1]["audio_seconds_per_second"] > 0 and results[1]["epoch_hours"] > 0
    assert results[1]["peak_rss_mb"] > 100 and 0 < results[1]["percent_of_floor"] < 100
    # what the child measured, not the configuration's field of the same name: the cap it ran with, the padding
    assert results[1]["onednn_isa"] == os.environ["ONEDNN_MAX_CPU_ISA"]  # set by import ds2_helpers
    assert results[0]["padding_fraction"] == pytest.approx(1 - 101 / 200)  # 1 s (101 frames) padded to 200
    assert "error" in results[2] and "ReverseSequence" in results[2]["error"]  # README: refused (ReverseSequence)
    assert bench.recommendations(results).columns.tolist() == bench.results_table(results).columns.tolist()
    assert bench.results_table(results).matmul_gflops.iloc[0] > 0  # notebook 07 prints it beside a share above 100%
    files = bench.write_results(results, tmp_path)
    payload = json.loads(files["json"].read_text())
    assert payload["machine"]["cores"] >= 1 and len(payload["results"]) == 3
    assert files["png"].stat().st_size > 1000 and files["csv"].read_text().startswith("name,")  # configuration first, then measurements


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


def test_demo_takes_the_largest_batch_whose_reference_memory_fits():
    """Notebook 07's default: course, PyNative, length-sorted at the largest batch that fits, frozen at that batch."""
    from ds2_helpers.experiments import demo, largest_fitting_batch

    ref = {"results": [{"preset": "paper", "kind": "step", "batch_size": b, "fixed_frames": None, "peak_rss_mb": gb * 1024}
                       for b, gb in ((1, 5.5), (4, 8.8), (8, 12.0), (16, 17.7))]
           + [{"preset": "paper", "kind": "baseline", "batch_size": 1, "fixed_frames": 1250, "peak_rss_mb": 1.0},
              # batch 16 in micro-batches: less memory, but not what batch 16 at once needs
              {"preset": "paper", "kind": "step", "batch_size": 16, "micro_batch": 4, "fixed_frames": None,
               "peak_rss_mb": 9.0 * 1024}]}
    assert largest_fitting_batch(ref, memory_gb=24.0) == 16   # 17.7 GB <= 24 x 0.85
    assert largest_fitting_batch(ref, memory_gb=16.0) == 8    # 12.0 <= 13.6 < 17.7
    assert largest_fitting_batch(ref, memory_gb=8.0) == 1     # only batch 1's 5.5 GB fits 6.8
    assert largest_fitting_batch(None, memory_gb=64.0) == 1   # nothing known: the course's batch
    configs = demo(ref, memory_gb=16.0)
    assert [c.kind for c in configs] == ["baseline", "contrast", "other model", "step"]
    course, pynative, frozen, best = configs
    assert course.fixed_frames == 1250 and course.batch_size == 1 and pynative.mode == "pynative"
    assert best.batch_size == frozen.batch_size == 8 and best.fixed_frames is None and best.preset == "paper"
    assert frozen.freeze_conv and frozen.freeze_rnn_layers == 3 and best.seconds == course.seconds == 12.7
    # the baseline of every speed-up (and its PyNative contrast) is timed twice; the batch-8 rows take the suite's
    assert course.steps == pynative.steps == 2 and best.steps is frozen.steps is None
    # the step profile wins over an older (or unstamped) run: a line through its batch-1 and batch-16 peaks
    profile = {"rows": [{"name": "whole step (Trainer.step)", "preset": "paper", "batch_size": b, "peak_gb": gb,
                         "seconds": 12.7} for b, gb in ((1, 6.5), (16, 21.3))]
               + [{"name": "whole step (Trainer.step), recompute each RNN layer", "preset": "paper", "batch_size": 16,
                   "peak_gb": 1.0, "seconds": 12.7},
                  {"name": "whole step (Trainer.step)", "preset": "paper", "batch_size": 4, "error": "killed"}]}
    assert largest_fitting_batch(ref, memory_gb=24.0, profile=profile) == 8    # 21.3 > 20.4 >= 6.5 + 7 x 0.99
    assert largest_fitting_batch(ref, memory_gb=26.0, profile=profile) == 16   # 21.3 <= 22.1
    assert demo(ref, memory_gb=24.0, profile=profile)[-1].batch_size == 8
    assert largest_fitting_batch(ref, memory_gb=24.0, profile={"rows": []}) == 16  # no profile rows: the run's
    # the later of the two wins: a bench run measured after the profile, then a profile measured after that run
    ref["measured"] = "2026-12-06 02:26"
    assert largest_fitting_batch(ref, memory_gb=24.0, profile=profile) == 16
    assert largest_fitting_batch(ref, memory_gb=24.0, profile={**profile, "measured": "2026-12-07 09:00"}) == 8


def test_another_device_is_tried_and_the_refusal_named():
    """`bench --device GPU` on a CPU-only MindSpore: the row carries MindSpore's refusal, nothing is projected."""
    result = bench.run_isolated(bench.BenchConfig(name="gpu", preset="mini", seconds=1.0, device="GPU"), steps=1,
                                warmup=0, timeout=300)
    assert "GPU" in result["error"] and "step_seconds" not in result


def test_a_measurement_process_reports_its_result_or_why_it_failed():
    """bench and inference_bench run each row in its own process: its JSON line, or one reason - a kill (named
    as the likely out-of-memory killer), a timeout, the error line of a crash."""
    py = [sys.executable, "-c"]
    assert bench.run_json_process(py + ['print("noise"); print(\'{"rtf": 0.5}\')']) == {"rtf": 0.5}
    killed = bench.run_json_process(py + ["import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert "killed by signal 9" in killed["error"] and "out-of-memory" in killed["error"]
    assert bench.run_json_process(py + ["import time; time.sleep(5)"], timeout=0.5)["error"].startswith("timed out")
    crash = bench.run_json_process(py + ["raise ValueError('bad shape')"])
    assert crash["error"] == "ValueError: bad shape"
    assert "exit status 3" in bench.run_json_process(py + ["import sys; sys.exit(3)"])["error"]


def test_rows_of_two_runs_are_matched_by_what_they_measured_not_their_names():
    import pandas as pd

    course = bench.course_config()
    best = bench.BenchConfig(name="combined: graph, batch 16, sorted, Conv2d", batch_size=16)
    frozen4 = bench.BenchConfig(name="transfer: conv + lower RNN layers frozen", batch_size=4, freeze_conv=True)
    row = lambda cfg, hours, **extra: {**cfg.__dict__, "recompute": list(cfg.recompute), "epoch_hours": hours,
                                       "speedup": 50.0 / hours, **extra}  # noqa: E731  (as results.json holds it)
    random4 = bench.BenchConfig(name="random batches (19% padding)", batch_size=4, padding_fraction=0.234)
    # as measured: the instruction set the child ran and the padding share it saw replace the configured values
    reference = [row(course, 50.0, onednn_isa="AVX2"), row(bench.BenchConfig(name="batch 16", batch_size=16), 10.0),
                 row(frozen4, 14.0), row(random4, 20.0, onednn_isa="AVX2", padding_fraction=0.19)]
    del reference[0]["layerwise"]  # a run older than a field: it ran the field's default
    mine = [row(course, 40.0, steps=2), row(best, 12.0),
            row(bench.BenchConfig(name="transfer: conv + lower RNN layers frozen", batch_size=16, freeze_conv=True),
                9.0), row(random4, 25.0), row(bench.BenchConfig(name="combined: batch 4", batch_size=4), 15.0)]
    table = bench.beside_reference(mine, reference).set_index("name")
    assert table.loc["batch 16", "this run: epoch_hours"] == 12.0       # same configuration, another name
    assert table.loc["course: graph, batch 1, 1250-frame padding, Conv2d", "this run: epoch_hours"] == 40.0
    assert pd.isna(table.loc["transfer: conv + lower RNN layers frozen", "this run: epoch_hours"])  # batch 4 there
    assert table.loc["random batches (19% padding)", "this run: epoch_hours"] == 25.0  # not the sorted batch 4's
    assert table.index.tolist() == ["batch 16", "transfer: conv + lower RNN layers frozen",
                                    "random batches (19% padding)",
                                    "course: graph, batch 1, 1250-frame padding, Conv2d"]  # best reference first
