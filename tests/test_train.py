import numpy as np
import pytest

from ds2_helpers.config import ModelConfig, ParameterError, TrainConfig
from ds2_helpers.dataset import SpeechData, make_batches, shard
from ds2_helpers.train import Trainer, annealed_lr

TINY = ModelConfig(conv_channels=2, hidden_size=24, hidden_layers=1)


def tiny_cfg(**kw):
    base = dict(learning_rate=3e-3, batch_size=4, epochs=1, mode="pynative", save_every=0, keep_last=2, seed=7)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data(tiny_corpus):
    return SpeechData(tiny_corpus / "train.csv")


def weights(trainer):
    return {p.name: p.asnumpy().copy() for p in trainer.net.get_parameters()}


def assert_one_step_like_the_plain_step(corpus, tmp_path, **step_options):
    """A Graph-mode Trainer with `step_options` (another way of running the step) takes the plain step's update:
    the same loss and the same weights after one step on four utterances. SGD, whose step is the gradient itself
    (Adam's first step is about lr x its sign, blind to the gradient's size). Returns that trainer."""
    batch = SpeechData(corpus / "train.csv").batch([0, 1, 2, 3], pad_multiple=64)
    plain = Trainer(TINY, tiny_cfg(mode="graph", optimizer="sgd"), tmp_path / "plain", rank=0, world=1)
    other = Trainer(TINY, tiny_cfg(mode="graph", optimizer="sgd", **step_options), tmp_path / "other", rank=0,
                    world=1)
    before = weights(plain)
    assert plain.step(batch) == pytest.approx(other.step(batch), rel=1e-5)
    after_plain, after_other = weights(plain), weights(other)
    assert any(np.abs(after_plain[k] - before[k]).max() > 0 for k in before)
    for k in after_plain:
        np.testing.assert_allclose(after_other[k], after_plain[k], rtol=1e-4, atol=1e-6, err_msg=k)
    return other


def test_batches_sortagrad_then_bucketed_shuffle_and_sharding():
    durations = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 0.5, 7.0])
    first = make_batches(durations, 2, epoch=0, seed=1)
    assert first == [[6, 1], [3, 2], [4, 0], [5, 7]]  # SortaGrad: shortest first in epoch 0
    later = make_batches(durations, 2, epoch=1, seed=1)
    assert sorted(map(tuple, later)) == sorted(map(tuple, first)) and later != first
    assert make_batches(durations, 2, epoch=1, seed=1) == later  # deterministic, so resume lines up
    rand = make_batches(durations, 2, order="random", seed=1)
    assert sorted(i for b in rand for i in b) == list(range(8))
    a, b = shard(first, 0, 2), shard(first, 1, 2)
    assert len(a) == len(b) == 2 and not set(map(tuple, a)) & set(map(tuple, b))


def test_padded_batch_and_padding_fraction(data):
    batch = data.batch([0, len(data) - 1], pad_multiple=64)
    assert batch.x.shape[3] % 64 == 0 and batch.x.shape[:3] == (2, 1, 161)
    assert batch.y.shape[1] >= batch.y_len.max() and (batch.y[0, batch.y_len[0]:] == 28).all()
    assert 0 < batch.padding_fraction < 1
    fixed = data.batch([0], fixed_frames=1250)
    assert fixed.x.shape[3] == 1250 and fixed.padding_fraction > 0.5


def test_loss_falls_in_graph_mode(data, tmp_path):
    trainer = Trainer(TINY, tiny_cfg(mode="graph", epochs=40), tmp_path, rank=0, world=1)
    subset = SpeechData(data.frame.iloc[:4])  # one batch seen again and again must be learned
    state = trainer.fit(subset, progress=False)
    losses = [r["loss"] for r in state.history]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    log = (tmp_path / "metrics.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,loss") and len(log) == 41


def test_learning_rate_is_annealed_per_epoch(data, tmp_path):
    cfg = tiny_cfg(epochs=2, learning_anneal=2.0)
    trainer = Trainer(TINY, cfg, tmp_path, rank=0, world=1)
    trainer.fit(SpeechData(data.frame.iloc[:4]), progress=False)
    rows = trainer.state.history
    assert [r["lr"] for r in rows] == [cfg.learning_rate, cfg.learning_rate / 2]
    assert float(trainer.optimizer.learning_rate.asnumpy()) == pytest.approx(annealed_lr(cfg, 1))


def test_kill_and_resume_gives_the_same_weights(data, tmp_path):
    cfg = tiny_cfg(epochs=2, save_every=3)
    straight = Trainer(TINY, cfg, tmp_path / "a", rank=0, world=1)
    straight.fit(data, progress=False)
    total = straight.state.global_step
    first = Trainer(TINY, cfg, tmp_path / "b", rank=0, world=1)
    first.fit(data, max_steps=5, progress=False)  # "killed" after step 5; newest checkpoint is step 3
    resumed = Trainer(TINY, cfg, tmp_path / "b", rank=0, world=1)
    assert resumed.resume() and resumed.state.global_step == 3
    resumed.fit(data, progress=False)
    assert resumed.state.global_step == total
    a, b = weights(straight), weights(resumed)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=1e-5, err_msg=name)
    assert len(list((tmp_path / "b").glob("ds2-step*.ckpt"))) == 2  # keep_last


def test_freezing_keeps_conv_and_first_layers_fixed(data, tmp_path):
    cfg = tiny_cfg(freeze_conv=True, freeze_rnn_layers=1)
    model = ModelConfig(conv_channels=2, hidden_size=16, hidden_layers=2)
    trainer = Trainer(model, cfg, tmp_path, rank=0, world=1)
    before = weights(trainer)
    trainer.fit(SpeechData(data.frame.iloc[:8]), progress=False)
    after = weights(trainer)
    assert all(n.startswith(("conv.", "RNN.lstms.0.")) for n in trainer.frozen)
    assert np.array_equal(before["conv.conv1.weight"], after["conv.conv1.weight"])
    assert np.array_equal(before["RNN.lstms.0.weight_ih_l0"], after["RNN.lstms.0.weight_ih_l0"])
    assert not np.array_equal(before["RNN.lstms.1.weight_ih_l0"], after["RNN.lstms.1.weight_ih_l0"])
    assert not np.array_equal(before["fc.module.weight"], after["fc.module.weight"])


def test_pretrained_start_and_resume_errors(data, tmp_path):
    first = Trainer(TINY, tiny_cfg(), tmp_path / "a", rank=0, world=1)
    w = first.export_weights(tmp_path / "w.ckpt")
    second = Trainer(TINY, tiny_cfg(), tmp_path / "b", pretrained=w, rank=0, world=1)
    np.testing.assert_array_equal(weights(second)["fc.module.weight"], weights(first)["fc.module.weight"])
    from ds2_helpers.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no training state"):
        second.resume(w)


def test_mindspore_pipeline_yields_the_same_batches_with_workers(data):
    from ds2_helpers.dataset import ms_pipeline

    plan = make_batches(data.durations, 4, order="sorted")[:3]
    got = list(ms_pipeline(data, plan, workers=2).create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert len(got) == 3
    for (x, x_len, y, y_len), idx in zip(got, plan):
        ref = data.batch(idx, pad_multiple=64, label_multiple=32)
        np.testing.assert_array_equal(x, ref.x)
        np.testing.assert_array_equal(x_len, ref.x_len)
        np.testing.assert_array_equal(y, ref.y)
        np.testing.assert_array_equal(y_len, ref.y_len)


def test_gru_in_graph_mode_needs_static_shapes(tiny_corpus, tmp_path):
    """One graph for every length cannot unroll MindSpore's Python loop over a GRU's time steps: refused with
    the fix, and the fix (a graph per shape) trains."""
    gru = ModelConfig(conv_channels=2, hidden_size=24, hidden_layers=1, rnn_type="GRU")
    with pytest.raises(ParameterError, match="rnn_type GRU in Graph mode.*pynative.*dynamic_shapes=False"):
        Trainer(gru, tiny_cfg(mode="graph"), tmp_path / "a", rank=0, world=1)
    trainer = Trainer(gru, tiny_cfg(mode="graph", dynamic_shapes=False), tmp_path / "b", rank=0, world=1)
    batch = SpeechData(tiny_corpus / "train.csv").batch([0, 1])
    assert np.isfinite(trainer.step(batch))
