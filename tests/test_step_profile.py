"""The step profile times each part of a training step on its own and reads each part's own peak memory."""

import json

import numpy as np
import pytest

from ds2_helpers import bench, step_profile
from ds2_helpers.model import training_flops_per_audio_second
from ds2_helpers.config import model_preset
from ds2_helpers.memory import peak_gb, reset_peak, resident_gb


def test_the_parts_floors_add_up_to_the_whole_steps():
    """conv block + RNN stack + dense, each forward + backward, are the training FLOPs the step's floor counts."""
    for preset in ("paper", "mini"):
        parts = sum(step_profile.part_gflop(step_profile.PartConfig(p, preset, 4, 12.7)) for p in step_profile.PARTS)
        audio = 4 * (int(12.7 * 100) + 1) / 100
        assert parts == pytest.approx(training_flops_per_audio_second(model_preset(preset)) / 1e9 * audio, rel=1e-9)
    forward = step_profile.part_gflop(step_profile.PartConfig("RNN stack", "paper", 1, 10.0, backward=False))
    assert step_profile.part_gflop(step_profile.PartConfig("RNN stack", "paper", 1, 10.0)) == pytest.approx(3 * forward)
    assert step_profile.part_gflop(step_profile.PartConfig("clip + optimizer update")) == 0


def test_peak_memory_restarts_from_now():
    if not reset_peak():
        pytest.skip("no /proc/self/clear_refs here")
    before = peak_gb()
    block = np.ones(50_000_000)  # 0.4 GB, touched
    assert peak_gb() - before > 0.35
    del block
    reset_peak()
    assert peak_gb() < resident_gb() + 0.05  # the 0.4 GB block is no longer in the peak


def test_recompute_names_cells_and_refuses_others():
    from ds2_helpers.model import DeepSpeech2

    net = DeepSpeech2(model_preset("mini"))
    assert bench.recompute_cells(net, ("conv",)) == [net.conv]
    assert len(bench.recompute_cells(net, ("conv", "rnn"))) == 1 + model_preset("mini").hidden_layers
    with pytest.raises(ValueError, match="use 'conv' and/or 'rnn'"):
        bench.recompute_cells(net, ("lstm",))


def test_each_part_runs_alone_and_backward_costs_more(tmp_path):
    rows = []
    for backward in (False, True):
        cfg = step_profile.PartConfig("RNN stack", "mini", 2, 2.0, backward=backward)
        rows.append({**cfg.__dict__, "name": cfg.name, "gflop": step_profile.part_gflop(cfg),
                     **step_profile.run_isolated(cfg, steps=5)})
    update = step_profile.PartConfig("clip + optimizer update", "mini", 2, 2.0)
    rows.append({**update.__dict__, "name": update.name, "gflop": 0.0, **step_profile.run_isolated(update, steps=1)})
    assert all("error" not in r for r in rows), rows
    forward, both, upd = rows
    assert both["step_seconds"] > forward["step_seconds"] > 0 and upd["step_seconds"] > 0
    assert both["memory_gb"] >= forward["memory_gb"] >= 0  # backward keeps the forward's activations and more
    rows.append({"part": "whole step", "name": "whole step (Trainer.step)", "batch_size": 2, "gflop": 1.0,
                 "step_seconds": 2 * both["step_seconds"], "peak_gb": 1.0, "memory_gb": 0.5,
                 "floor_seconds": 0.1, "percent_of_floor": 5.0})
    profile = {"rows": rows, "matmul_gflops": 50.0}
    frame = step_profile.table(profile)
    assert frame.share_of_step.iloc[1] == pytest.approx(0.5, abs=1e-3)  # the whole step's row is the divisor
    files = step_profile.write(profile, tmp_path)
    assert json.loads(files["json"].read_text())["rows"][0]["part"] == "RNN stack"
    assert files["png"].stat().st_size > 1000 and "share_of_step" in files["csv"].read_text()


def test_a_failed_part_is_a_row_with_its_reason():
    bad = step_profile.run_isolated(step_profile.PartConfig("no such part", "mini", 1, 1.0), steps=1)
    assert "error" in bad and "no such part" in bad["error"]


def test_failed_rows_are_shown_not_fatal(tmp_path):
    rows = [{"part": "RNN stack", "name": "RNN stack, forward + backward", "batch_size": 16, "gflop": 1.0,
             "error": "killed by signal 9"},
            {"part": "convolution block", "name": "convolution block, forward + backward", "batch_size": 16,
             "gflop": 1.0, "step_seconds": 2.0, "memory_gb": 1.0, "peak_gb": 2.0, "floor_seconds": 1.0,
             "percent_of_floor": 50.0},
            {"part": "whole step", "name": "whole step (Trainer.step)", "batch_size": 16, "gflop": 2.0,
             "error": "timed out"}]
    frame = step_profile.table({"rows": rows})
    assert frame.step_seconds.isna().sum() == 2 and frame.share_of_step.isna().all()
    assert step_profile.write({"rows": rows}, tmp_path)["png"].stat().st_size > 1000


def test_whole_steps_in_micro_batches_run_beside_the_whole_batch():
    # micro-batches of 8 are not smaller than the batch of 4: no row for them
    profile = step_profile.run("mini", (4,), 2.0, micro_batches=(2, 8), parts=False, steps=1, progress=False)
    rows = {r["name"]: r for r in profile["rows"]}
    assert list(rows) == [step_profile.WHOLE_STEP, step_profile.whole_step_name(micro_batch=2)]
    whole, micro = rows.values()
    assert micro["micro_batch"] == 2 and whole["micro_batch"] is None
    for r in (whole, micro):
        assert "error" not in r, r.get("error")
        assert r["loss_finite"] and r["step_seconds"] > 0 and r["peak_gb"] > 0
    # the same batch: the same audio, so the same FLOP floor
    assert micro["audio_seconds_per_step"] == whole["audio_seconds_per_step"]
    assert micro["floor_seconds"] == pytest.approx(whole["floor_seconds"])
    assert step_profile.whole_step_name(("rnn",), 4) == (step_profile.WHOLE_STEP + ", recompute each RNN layer, "
                                                          "micro-batches of 4")


def test_lstm_reserve_is_what_the_kernel_returns():
    """The reserve counted per frame adds up to what MindSpore's LSTM kernel returns for a whole batch, and holds at
    least the gates and states (6 H per frame) that backward needs."""
    from ds2_helpers.config import ModelConfig
    from ds2_helpers.model import rnn_input_size

    cfg = ModelConfig(conv_channels=4, hidden_size=48, hidden_layers=2)
    frames, batch = 40, 3
    direct = sum(2 * 4 * step_profile.lstm_reserve_floats(size, cfg.hidden_size, frames, batch)
                 for size in (rnn_input_size(cfg), cfg.hidden_size))
    counted = step_profile.rnn_reserve_bytes(cfg, frames, batch)
    assert counted == pytest.approx(direct, rel=0.15)  # the kernel's fixed part and its (T+1) states differ a little
    assert step_profile.lstm_reserve_floats_per_frame(cfg.hidden_size, cfg.hidden_size) >= 6 * cfg.hidden_size
    with pytest.raises(ValueError, match="LSTM"):
        step_profile.rnn_reserve_bytes(ModelConfig(rnn_type="GRU"), frames, batch)
