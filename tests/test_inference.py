"""Inference at the machine's speed: the compiled graph computes what the op-by-op network computes, for every
input shape; the roofline's arithmetic; the inference harness and its chart."""

import mindspore as ms
import numpy as np
import pytest

from ds2_helpers import checkpoint as ckpt
from ds2_helpers import inference, inference_bench
from ds2_helpers.config import ModelConfig, model_preset
from ds2_helpers.model import GEMM_MIN_CHANNELS, DeepSpeech2
from ds2_helpers.paths import data_dir


@pytest.fixture(scope="module")
def mini():
    return ckpt.load_model(str(data_dir() / "mini_pretrained.ckpt"))[0]  # PyNative, inference mode


def _batch(n, frames, lengths, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, 1, 161, frames)).astype(np.float32)
    for k, length in enumerate(lengths):
        x[k, :, :, length:] = 0
    return ms.Tensor(x), ms.Tensor(np.array(lengths, np.int32))


def test_graph_equals_pynative_for_every_shape(mini):
    """One compiled graph (free batch and time axes) serves batches of any shape, with PyNative's numbers."""
    graph = inference.forward(mini, "graph")
    assert inference.forward(mini, "graph") is graph  # compiled once per network
    for n, frames, lengths in [(1, 150, [150]), (3, 420, [420, 300, 101]), (2, 96, [96, 50])]:
        x, lengths = _batch(n, frames, lengths)
        ref, ref_len = mini(x, lengths)
        out, out_len = graph(x, lengths)
        np.testing.assert_array_equal(out_len.asnumpy(), ref_len.asnumpy())
        np.testing.assert_allclose(out.asnumpy(), ref.asnumpy(), atol=1e-5)
    assert ms.get_context("mode") == ms.PYNATIVE_MODE  # the process stays in PyNative mode


def test_inference_mode_is_checked(mini):
    with pytest.raises(ValueError, match="graph, pynative"):
        inference.forward(mini, "eager")


def test_widened_conv1_equals_conv1(mini):
    """The mini model's 8-channel conv1 runs with zero filters up to GEMM_MIN_CHANNELS in inference (oneDNN's
    gemm kernel instead of its reference one): the real channels are what nn.Conv2d computes."""
    conv = mini.conv
    assert conv.widen_conv1 and conv.channels < GEMM_MIN_CHANNELS
    assert not DeepSpeech2(model_preset("paper")).conv.widen_conv1
    x, _ = _batch(2, 300, [300, 300], seed=1)
    np.testing.assert_allclose(conv._conv1_widened(x).asnumpy(), conv.conv1(x).asnumpy(), atol=1e-5)


def test_roofline_arithmetic():
    paper = model_preset("paper")
    # W_hh is 4H x H floats = 16.8 MB per direction and layer; 5 layers, 2 directions, 50 output frames a second
    assert inference.recurrent_bytes_per_audio_second(paper) == pytest.approx(5 * 2 * 16.777216e6 * 50)
    assert inference.recurrent_bytes_per_audio_second(paper, batch=4) == pytest.approx(5 * 2 * 16.777216e6 * 50 / 4)
    gru = ModelConfig(rnn_type="GRU", hidden_size=10, hidden_layers=1)
    assert inference.recurrent_bytes_per_audio_second(gru) == pytest.approx(2 * 3 * 100 * 4 * 50)
    flops = inference.forward_flops_per_audio_second(paper)
    b = inference.bounds(paper, 1, sgemm_gflops=flops / 1e9, read_gbps=1000.0)  # FLOPs take 1 s, memory 8.4 ms
    assert b["flop_rtf"] == pytest.approx(1.0) and b["bound_rtf"] == pytest.approx(1.0) and b["bound"] == "FLOPs"
    b = inference.bounds(paper, 1, sgemm_gflops=1e6, read_gbps=8.388608)  # FLOPs take ~1e-5 s, memory 1 s
    assert b["memory_rtf"] == pytest.approx(1.0) and b["bound_rtf"] == pytest.approx(1.0, abs=1e-4)
    assert b["bound"] == "FLOPs + W_hh traffic"
    # the products with W_hh: 5 layers x 2 directions x 2 FLOPs x 4H x H, 50 output frames a second (4.2 GFLOP)
    recurrent = inference.recurrent_flops_per_audio_second(paper)
    assert recurrent == pytest.approx(5 * 2 * 2 * 4 * 1024 ** 2 * 50)
    assert 0.3 < recurrent / flops < 0.6  # the rest: LSTM input products, convolutions, dense
    assert inference.recurrent_flops_per_audio_second(gru) == pytest.approx(2 * 2 * 3 * 100 * 50)  # 3H x H a step
    # batch 10 at 55 GB/s and 380 GFLOP/s: the rest at the rate, plus the traffic (longer than the recurrence's FLOPs)
    b = inference.bounds(paper, 10, sgemm_gflops=380.0, read_gbps=55.0)
    traffic = 5 * 2 * 16.777216e6 * 50 / 10 / 55e9
    assert traffic > recurrent / 380e9 and b["bound"] == "FLOPs + W_hh traffic"
    assert b["bound_rtf"] == pytest.approx((flops - recurrent) / 380e9 + traffic)
    assert b["bound_rtf"] > max(b["flop_rtf"], b["memory_rtf"])  # tighter than either bound alone


def test_weight_read_rates_are_measured_three_ways():
    rates = inference.weight_read_gbytes(ModelConfig(hidden_size=256), repeats=20, frames=50)
    assert set(rates) == {"numpy sgemv", "mindspore matmul", "mindspore recurrence"}
    assert all(0.1 < r < 10_000 for r in rates.values()), rates  # GB/s: neither a stall nor a missed factor 1e3


def test_inference_harness_rows_and_chart(tmp_path):
    """One quick row in its own process (the MindIR, timed beside the checkpoint's compiled network), then the
    table, files and chart from it."""
    cfg = inference_bench.InferenceConfig("mini: batch 1, MindIR", "mini", "mindir", seconds=1.0, utterances=2)
    ballast = np.ones(2 * 2**30 // 8)  # 2 GiB resident in this process: a child's ru_maxrss would inherit it
    result = inference_bench.run_isolated(cfg, timeout=600)
    del ballast
    assert "error" not in result, result
    assert 100 < result["peak_rss_mb"] < 1500, result  # the child's own peak (VmHWM), not this process's
    assert result["audio_seconds"] == pytest.approx(2 * 1.01) and result["batches"] == 2 and result["rtf"] > 0
    # the two networks ran the same utterances in one process: a ratio, not a missed factor or a zero
    assert result["checkpoint_rtf"] > 0 and 0.1 < result["time_vs_checkpoint"] < 10, result
    rates = {"sgemm_gflops": 100.0, "mindspore_gflops": 50.0, "read_gbps": {"mini": 50.0}}
    row = inference_bench.with_bounds(result, cfg, rates)
    assert row["percent_of_bound"] == pytest.approx(100 * row["bound_rtf"] / row["rtf"])
    assert row["percent_of_mindspore_floor"] == pytest.approx(2 * row["percent_of_flop_floor"])  # half the rate
    failed = inference_bench.with_bounds({"error": "killed"}, cfg, rates)
    run = {"machine": {}, "rates": rates, "results": [row, failed]}
    paths = inference_bench.write(run, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"inference.json", "inference.csv", "inference.png"}
    assert len(inference_bench.table(run)) == 2 and paths["png"].stat().st_size > 0
    shown = inference_bench.styled(inference_bench.table(run)).to_string()
    assert f"{row['peak_rss_mb']:,.0f}" in shown and "e+" not in shown  # whole megabytes, not 2.27e+03
    from ds2_helpers.charts import inference_chart

    ax = inference_chart(run).axes[0]
    assert len(ax.patches) == 1  # one bar: the failed row has none


def test_evaluate_rows_warm_the_largest_batch_untimed():
    """Batched rows pay the memory pool's growth before timing (reported apart), then time every batch."""
    cfg = inference_bench.InferenceConfig("mini: evaluate", "mini", "graph", batch_seconds=20.0, utterances=4)
    result = inference_bench.run_isolated(cfg, timeout=600)
    assert "error" not in result, result
    assert result["warm_seconds"] > 0 and result["batches"] == len(inference_bench._batches(cfg))
    assert result["audio_seconds"] == pytest.approx(sum(f.sum() for f in inference_bench._batches(cfg)) / 100)


def test_evaluate_batches_are_test_clean_like():
    lengths = inference_bench.test_clean_like(48)
    assert lengths.min() >= 1.0 and 30.0 <= lengths.max() <= 35.0
    cfg = inference_bench.InferenceConfig("x", "mini", batch_seconds=160.0, utterances=48)
    batches = inference_bench._batches(cfg)
    assert sorted(np.concatenate(batches)) == sorted((lengths * 100).astype(int) + 1)
    assert all(len(b) * b.max() / 100 <= 160 or len(b) == 1 for b in batches)
