import mindspore as ms
import numpy as np
import pytest

from ds2_helpers import checkpoint as ckpt
from ds2_helpers import cli
from ds2_helpers.config import ModelConfig, model_preset
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


def after_conversion(weights, packing):
    """What converting a `packing` checkpoint of `weights` must give: the CPU packing's one bias per direction
    holds bias_ih + bias_hh, which comes back as bias_ih with a zero bias_hh (the same LSTM)."""
    if packing == "gpu":
        return weights
    out = dict(weights)
    for name in weights:
        if ".bias_ih_" in name:
            out[name] = weights[name] + weights[name.replace("bias_ih", "bias_hh")]
            out[name.replace("bias_ih", "bias_hh")] = np.zeros_like(weights[name])
    return out


def save_v1(path, arrays):
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in arrays.items()], str(path))
    return path


@pytest.mark.parametrize("packing", ["gpu", "cpu"])
@pytest.mark.parametrize("gate_order", ["ifgo", "ifog"])
def test_v1_flat_checkpoint_converts_to_a_matching_lstm(tmp_path, packing, gate_order):
    net = DeepSpeech2(CFG)
    weights = known_weights(net)
    old = ckpt.pack_v1(weights, CFG.hidden_layers, gate_order=gate_order, packing=packing)
    assert "RNN.weight0" in old and old["RNN.weight0"].ndim == 3 and "RNN.lstms.0.weight_ih_l0" not in old
    old["moment1.fc.module.weight"] = np.ones((29, 8), np.float32)  # Adam state in old checkpoints is dropped
    src = save_v1(tmp_path / "old.ckpt", old)
    dst, found = ckpt.convert_file(src, tmp_path / "new.ckpt", net, gate_order=gate_order)
    assert found == packing and ckpt.read(dst)[1]["packing"] == packing
    fresh = DeepSpeech2(CFG)
    ckpt.load_into(fresh, dst)
    x = np.random.default_rng(1).standard_normal((7, 3, rnn_input_size(CFG))).astype(np.float32)
    ours = fresh.RNN(ms.Tensor(x), ms.Tensor(np.full(3, 7, np.int32))).asnumpy()
    # the NumPy LSTM adds b_ih + b_hh: for the CPU packing that is exactly its one (summed) bias
    want = numpy_batch_rnn(x.astype(np.float64), after_conversion(weights, packing), CFG.hidden_layers)
    np.testing.assert_allclose(want, numpy_batch_rnn(x.astype(np.float64), weights, CFG.hidden_layers), atol=1e-5)
    np.testing.assert_allclose(ours, want, atol=1e-5)


def zoo_flat(weights, layer, packing):
    """One BatchRNN flat weight written out by hand from the sources (see checkpoint.py's docstring), not via
    ckpt.flat_layout, so the converter's layout is checked against the spec rather than against itself."""
    w = {k.split(".")[-1]: v for k, v in weights.items() if k.startswith(f"RNN.lstms.{layer}.")}
    if packing == "gpu":  # cuDNN: per direction W_ih, W_hh; then per direction b_ih, b_hh
        parts = [w["weight_ih_l0"], w["weight_hh_l0"], w["weight_ih_l0_reverse"], w["weight_hh_l0_reverse"],
                 w["bias_ih_l0"], w["bias_hh_l0"], w["bias_ih_l0_reverse"], w["bias_hh_l0_reverse"]]
    else:  # oneDNN ldgoi: W_ih fwd, W_ih rev, W_hh fwd, W_hh rev; then one bias per direction
        parts = [w["weight_ih_l0"], w["weight_ih_l0_reverse"], w["weight_hh_l0"], w["weight_hh_l0_reverse"],
                 w["bias_ih_l0"] + w["bias_hh_l0"], w["bias_ih_l0_reverse"] + w["bias_hh_l0_reverse"]]
    return np.concatenate([p.reshape(-1) for p in parts]).reshape(-1, 1, 1)


ZOO_NETWORK = ["conv.conv1.weight", "conv.conv2.weight"] + [
    f"conv.{bn}.{n}" for bn in ("bn1", "bn2") for n in ("gamma", "beta", "moving_mean", "moving_variance")] + [
    "RNN.weight0", "RNN.weight1", "fc.module.weight"]
ZOO_TRAINABLE = [n for n in ZOO_NETWORK if not n.endswith(("moving_mean", "moving_variance"))]


@pytest.mark.parametrize("packing", ["gpu", "cpu"])
def test_zoo_checkpoint_with_exact_names_converts_every_array(tmp_path, packing):
    cfg = model_preset("mini")
    net = DeepSpeech2(cfg)
    weights = known_weights(net, seed=7)
    zoo = {n: weights[n] for n in ZOO_NETWORK if not n.startswith("RNN.")}
    zoo.update({f"RNN.weight{layer}": zoo_flat(weights, layer, packing) for layer in range(cfg.hidden_layers)})
    h, biases = cfg.hidden_size, {"gpu": 2, "cpu": 1}[packing]
    for layer, width in enumerate([rnn_input_size(cfg), h]):  # BatchRNN's weight_size + bias_size
        assert zoo[f"RNN.weight{layer}"].shape == ((width + h) * h * 2 * 4 + 2 * h * 4 * biases, 1, 1)
    packed = ckpt.pack_v1(weights, cfg.hidden_layers, packing=packing)
    assert set(packed) == set(zoo) == set(ZOO_NETWORK)
    for name, value in zoo.items():
        np.testing.assert_array_equal(packed[name], value)
    rng = np.random.default_rng(8)  # the zoo's Adam state, which conversion drops
    optimizer = {f"{m}.{n}": rng.standard_normal(zoo[n].shape).astype(np.float32)
                 for m in ("moment1", "moment2") for n in ZOO_TRAINABLE}
    optimizer.update(beta1_power=np.array([0.9], np.float32), beta2_power=np.array([0.999], np.float32),
                     learning_rate=np.array([3e-4], np.float32), global_step=np.array([1234], np.int32))
    src = save_v1(tmp_path / "DeepSpeech.ckpt", {**zoo, **optimizer})
    dst, found = ckpt.convert_file(src, tmp_path / "converted.ckpt", net)
    arrays, meta = ckpt.read(dst)
    assert found == packing and meta["packing"] == packing and meta["converted_from"] == str(src)
    want = after_conversion(weights, packing)
    assert set(arrays) == set(want)
    for name, value in want.items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=name)


@pytest.mark.parametrize("packing", ["gpu", "cpu"])
def test_load_into_converts_v1_files_on_the_fly(tmp_path, packing):
    net = DeepSpeech2(CFG)
    weights = known_weights(net, seed=4)
    src = save_v1(tmp_path / "old.ckpt", ckpt.pack_v1(weights, CFG.hidden_layers, packing=packing))
    fresh = DeepSpeech2(CFG)
    assert ckpt.load_into(fresh, src)["v1_packing"] == packing
    got = {p.name: p.asnumpy() for p in fresh.get_parameters()}
    for name, value in after_conversion(weights, packing).items():
        np.testing.assert_array_equal(got[name], value)


def test_unknown_flat_size_names_the_layer_and_both_packings(tmp_path):
    net = DeepSpeech2(CFG)
    old = ckpt.pack_v1(known_weights(net), CFG.hidden_layers, packing="cpu")
    old["RNN.weight1"] = old["RNN.weight1"][:-5]
    src = save_v1(tmp_path / "odd.ckpt", old)
    h = CFG.hidden_size
    weights = (h + h) * h * 2 * 4
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.convert_file(src, tmp_path / "new.ckpt", net)
    msg = str(err.value)
    assert f"RNN.weight1 (LSTM layer 1) has {weights + 2 * 4 * h - 5} values" in msg
    assert f"needs {weights + 4 * 4 * h} (GPU" in msg and f"or {weights + 2 * 4 * h} (CPU" in msg
    assert "--preset" in msg
    with pytest.raises(ckpt.CheckpointError, match="RNN.weight1 .LSTM layer 1. has"):
        ckpt.load_into(DeepSpeech2(CFG), src)


def test_cli_converts_a_cpu_packed_checkpoint(tmp_path, capsys):
    cfg = model_preset("mini")
    weights = known_weights(DeepSpeech2(cfg), seed=9)
    src = save_v1(tmp_path / "cpu.ckpt", ckpt.pack_v1(weights, cfg.hidden_layers, packing="cpu"))
    code = cli.main(["pretrained", "convert", "--checkpoint", str(src), "--out", str(tmp_path / "new.ckpt"),
                     "--preset", "mini"])
    out = capsys.readouterr().out
    assert code == 0 and "detected cpu packing" in out, out
    arrays, meta = ckpt.read(tmp_path / "new.ckpt")
    assert meta["packing"] == "cpu"
    for name, value in after_conversion(weights, "cpu").items():
        np.testing.assert_array_equal(arrays[name], value)


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
