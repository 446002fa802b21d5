import mindspore as ms
import numpy as np
import pytest

from ds2_helpers import checkpoint as ckpt
from ds2_helpers.config import ModelConfig
from ds2_helpers.model import DeepSpeech2, rnn_input_size

ms.set_context(mode=ms.PYNATIVE_MODE)
CFG = ModelConfig(conv_channels=2, hidden_size=8, hidden_layers=2)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def numpy_lstm(x, w_ih, w_hh, b_ih, b_hh):
    """Textbook LSTM, gates i, f, g, o, over x [T, N, F]."""
    hidden = w_hh.shape[1]
    h = np.zeros((x.shape[1], hidden))
    c = np.zeros_like(h)
    out = []
    for t in range(x.shape[0]):
        z = x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = np.split(z, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        out.append(h)
    return np.stack(out)


def numpy_batch_rnn(x, weights, layers):
    """DeepSpeech2's stack: bidirectional LSTMs whose directions are summed."""
    for layer in range(layers):
        p = f"RNN.lstms.{layer}."
        fwd = numpy_lstm(x, *(weights[p + n] for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")))
        bwd = numpy_lstm(x[::-1], *(weights[p + n] for n in ("weight_ih_l0_reverse", "weight_hh_l0_reverse",
                                                              "bias_ih_l0_reverse", "bias_hh_l0_reverse")))[::-1]
        x = fwd + bwd
    return x


def known_weights(net, seed=0):
    rng = np.random.default_rng(seed)
    return {p.name: (rng.standard_normal(p.shape) * 0.3).astype(np.float32) for p in net.get_parameters()}


@pytest.mark.parametrize("gate_order", ["ifgo", "ifog"])
def test_v1_flat_checkpoint_converts_to_a_matching_lstm(tmp_path, gate_order):
    net = DeepSpeech2(CFG)
    weights = known_weights(net)
    old = ckpt.pack_v1(weights, CFG.hidden_layers, gate_order=gate_order)
    assert "RNN.weight0" in old and old["RNN.weight0"].ndim == 3 and "RNN.lstms.0.weight_ih_l0" not in old
    old["moment1.fc.module.weight"] = np.ones((29, 8), np.float32)  # Adam state in old checkpoints is dropped
    src = tmp_path / "old.ckpt"
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in old.items()], str(src))
    dst = ckpt.convert_file(src, tmp_path / "new.ckpt", net, gate_order=gate_order)
    fresh = DeepSpeech2(CFG)
    ckpt.load_into(fresh, dst)
    x = np.random.default_rng(1).standard_normal((7, 3, rnn_input_size(CFG))).astype(np.float32)
    ours = fresh.RNN(ms.Tensor(x), ms.Tensor(np.full(3, 7, np.int32))).asnumpy()
    np.testing.assert_allclose(ours, numpy_batch_rnn(x.astype(np.float64), weights, CFG.hidden_layers), atol=1e-5)


def test_load_into_converts_v1_files_on_the_fly(tmp_path):
    net = DeepSpeech2(CFG)
    weights = known_weights(net, seed=4)
    src = tmp_path / "old.ckpt"
    old = ckpt.pack_v1(weights, CFG.hidden_layers)
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in old.items()], str(src))
    fresh = DeepSpeech2(CFG)
    ckpt.load_into(fresh, src)
    got = {p.name: p.asnumpy() for p in fresh.get_parameters()}
    for name, value in weights.items():
        np.testing.assert_array_equal(got[name], value)


def test_mismatched_checkpoint_names_parameters_and_reason(tmp_path):
    small = DeepSpeech2(CFG)
    path = ckpt.save(tmp_path / "small.ckpt", [{"name": p.name, "data": p} for p in small.get_parameters()])
    bigger = DeepSpeech2(ModelConfig(conv_channels=2, hidden_size=12, hidden_layers=3))
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_into(bigger, path)
    msg = str(err.value)
    assert "small.ckpt" in msg and "missing RNN.lstms.2.weight_ih_l0" in msg
    assert "shape of RNN.lstms.0.weight_hh_l0: checkpoint (32, 8) vs network (48, 12)" in msg
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        ckpt.load_into(bigger, tmp_path / "nope.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(ckpt.CheckpointError, match="not a readable"):
        ckpt.load_into(bigger, tmp_path / "junk.ckpt")


def test_save_is_atomic_and_prune_keeps_the_newest(tmp_path):
    net = DeepSpeech2(CFG)
    params = [{"name": p.name, "data": p} for p in net.get_parameters()]
    for step in (5, 10, 15, 20):
        ckpt.save(tmp_path / f"ds2-step{step:07d}.ckpt", params, {"step": step})
    ckpt.prune(tmp_path, 2)
    assert [p.name for p in ckpt.checkpoints_in(tmp_path)] == ["ds2-step0000015.ckpt", "ds2-step0000020.ckpt"]
    assert not list(tmp_path.glob(".*"))
    arrays, meta = ckpt.read(tmp_path / "ds2-step0000020.ckpt")
    assert meta == {"step": 20} and set(arrays) == {p.name for p in net.get_parameters()}
