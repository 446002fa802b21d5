"""Pruning: the sparsity asked for, masks that survive training, checkpoints that round-trip and evaluate, and
structured pruning that computes exactly what the zeroed network computes."""

from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest

from ds2_helpers import cli, prune
from ds2_helpers.checkpoint import load_model, read
from ds2_helpers.config import ModelConfig, ParameterError, SpectConfig, TrainConfig
from ds2_helpers.dataset import SpeechData
from ds2_helpers.model import DeepSpeech2
from ds2_helpers.train import Trainer

TINY = ModelConfig(conv_channels=2, hidden_size=24, hidden_layers=2)  # two layers: the next layer's inputs too


@pytest.fixture(scope="module")
def tiny_arrays():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(11)
    arrays = prune.network_arrays(DeepSpeech2(TINY))
    rng = np.random.default_rng(5)  # non-zero biases and BatchNorm statistics, so slicing them matters
    for k in arrays:
        if "bias" in k or "moving_mean" in k or "beta" in k:
            arrays[k] = (0.1 * rng.standard_normal(arrays[k].shape)).astype(np.float32)
    return arrays


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_arrays, tmp_path_factory):
    return prune.save_pruned(tmp_path_factory.mktemp("tiny") / "tiny.ckpt", tiny_arrays, TINY, SpectConfig())


@pytest.fixture(scope="module")
def spect_batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 1, 161, 60)).astype(np.float32), np.array([60, 41, 23], np.int32)


def logits(arrays, cfg, batch):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    out, _ = prune.build(arrays, cfg)(ms.Tensor(batch[0]), ms.Tensor(batch[1]))
    return out.asnumpy()


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7, 0.9])
def test_each_matrix_loses_the_requested_share_of_its_smallest_weights(tiny_arrays, sparsity):
    masks = prune.magnitude_masks(tiny_arrays, sparsity)
    assert sorted(masks) == sorted(k for k in tiny_arrays if ".weight_" in k or k == "fc.module.weight")
    assert len(masks) == 2 * 2 * 2 + 1  # layers x directions x (ih, hh) + dense
    pruned = prune.apply_masks(tiny_arrays, masks)
    for name, mask in masks.items():
        w = np.abs(tiny_arrays[name])
        assert int((mask == 0).sum()) == round(sparsity * w.size)
        assert np.mean(pruned[name] == 0) == pytest.approx(sparsity, abs=0.5 / w.size)
        if 0 < sparsity:
            assert w[mask == 0].max() <= w[mask == 1].min()  # the smallest went, none of the larger
    for name in tiny_arrays:  # biases, convolutions and BatchNorm untouched
        if name not in masks:
            assert np.array_equal(pruned[name], tiny_arrays[name])


def test_bad_sparsity_and_unit_counts_are_refused(tiny_arrays):
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ParameterError, match="--sparsity"):
            prune.magnitude_masks(tiny_arrays, bad)
    with pytest.raises(ParameterError, match="24 hidden units"):
        prune.structured_prune(tiny_arrays, TINY, 25)


def test_masks_survive_fine_tune_steps_in_graph_mode(tiny_arrays, tiny_corpus, tmp_path):
    masks = prune.magnitude_masks(tiny_arrays, 0.5)
    start = prune.save_pruned(tmp_path / "start.ckpt", prune.apply_masks(tiny_arrays, masks), TINY, SpectConfig())
    cfg = TrainConfig(learning_rate=1e-3, batch_size=4, epochs=2, mode="graph", save_every=0, seed=7)
    trainer = Trainer(TINY, cfg, tmp_path / "run", rank=0, world=1, pretrained=start)
    data = SpeechData(tiny_corpus / "train.csv", limit=8)
    batch = data.batch([0, 1, 2, 3], pad_multiple=64)
    keeper = prune.MaskKeeper(trainer.net, masks)
    trainer.step(batch)
    moved = prune.network_arrays(trainer.net)
    name = "RNN.lstms.0.weight_hh_l0"
    assert np.abs(moved[name][masks[name] == 0]).max() > 0  # without the mask Adam revives pruned weights
    keeper.apply()
    trainer.step(batch)  # the compiled graph must start from the masked values, not from a stale copy
    between = prune.network_arrays(trainer.net)
    for k, m in masks.items():  # one Adam step moves a weight by about lr at most: zero before this step
        assert np.abs(between[k][m == 0]).max() < 4 * cfg.learning_rate, k
    trainer.fit(data, max_steps=4, callback=keeper, progress=False)
    after = prune.network_arrays(trainer.net)
    for k, m in masks.items():
        assert np.all(after[k][m == 0] == 0), k
        assert not np.allclose(after[k][m == 1], tiny_arrays[k][m == 1])  # the rest did train


def test_pruned_checkpoint_round_trips_with_identical_logits(tiny_arrays, spect_batch, tmp_path):
    pruned = prune.apply_masks(tiny_arrays, prune.magnitude_masks(tiny_arrays, 0.7))
    path = prune.save_pruned(tmp_path / "p.ckpt", pruned, TINY, SpectConfig(), {"kind": "unstructured"})
    net, spect = load_model(str(path))
    got, _ = net(ms.Tensor(spect_batch[0]), ms.Tensor(spect_batch[1]))
    assert np.array_equal(got.asnumpy(), logits(pruned, TINY, spect_batch))
    assert spect == SpectConfig() and read(path)[1]["pruned"] == {"kind": "unstructured"}
    assert not np.array_equal(got.asnumpy(), logits(tiny_arrays, TINY, spect_batch))  # pruning changed something


def test_keeping_every_unit_reproduces_the_logits(tiny_arrays, spect_batch):
    reference = logits(tiny_arrays, TINY, spect_batch)
    same, cfg = prune.structured_prune(tiny_arrays, TINY, TINY.hidden_size)
    assert cfg == TINY and np.array_equal(logits(same, cfg, spect_batch), reference)
    rng = np.random.default_rng(1)  # every unit kept in a shuffled order: the gates, directions and the next
    shuffled, cfg = prune.structured_prune(tiny_arrays, TINY, keep=[rng.permutation(24), rng.permutation(24)])
    assert np.allclose(logits(shuffled, cfg, spect_batch), reference, atol=1e-5)  # layer must move together


def test_removing_zeroed_units_gives_the_zeroed_networks_logits(tiny_arrays, spect_batch):
    gone = {0: [2, 9, 17], 1: [0, 5, 23]}
    zeroed = tiny_arrays
    for layer, units in gone.items():
        zeroed = prune.zero_units(zeroed, TINY, layer, units)
    expected = logits(zeroed, TINY, spect_batch)
    assert not np.allclose(expected, logits(tiny_arrays, TINY, spect_batch), atol=1e-3)  # the units mattered
    keep = [np.setdiff1d(np.arange(24), gone[layer]) for layer in (0, 1)]
    smaller, cfg = prune.structured_prune(zeroed, TINY, keep=keep)
    assert cfg.hidden_size == 21 and smaller["RNN.lstms.1.weight_ih_l0"].shape == (4 * 21, 21)
    assert smaller["fc.module.weight"].shape == (29, 21)
    assert np.allclose(logits(smaller, cfg, spect_batch), expected, atol=1e-5)


def test_structured_pruning_drops_the_smallest_norm_units(tiny_arrays):
    weak = {k: v.copy() for k, v in tiny_arrays.items()}
    for layer, unit in ((0, 4), (1, 11)):  # shrink one unit per layer: it must be the one removed
        for d in prune.DIRECTIONS:
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                weak[f"RNN.lstms.{layer}.{kind}_{d}"].reshape(4, 24, -1)[:, unit] *= 1e-3
        for name, _ in prune._outgoing(TINY, layer):
            weak[name][:, unit] *= 1e-3
    norms = prune.unit_norms(weak, TINY, 0)
    assert norms.shape == (24,) and norms.argmin() == 4
    smaller, cfg = prune.structured_prune(weak, TINY, 23)
    expected = prune.structured_prune(weak, TINY, keep=[np.delete(np.arange(24), 4), np.delete(np.arange(24), 11)])
    assert cfg.hidden_size == 23
    assert all(np.array_equal(smaller[k], expected[0][k]) for k in smaller)


def test_cli_prunes_structured_and_the_result_evaluates(tiny_checkpoint, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "narrow.ckpt"
    assert cli.main(["prune", "--checkpoint", str(tiny_checkpoint), "--structured", "--keep-units", "16",
                     "--out", str(out)]) == 0
    assert "24 -> 16" in capsys.readouterr().out
    net, _ = load_model(str(out))
    assert net.cfg.hidden_size == 16 and read(out)[1]["model"]["hidden_size"] == 16
    assert cli.main(["evaluate", "--checkpoint", str(out), "--manifest", str(tiny_corpus / "test.csv"),
                     "--limit", "4"]) == 0
    assert "CER" in capsys.readouterr().out


def test_cli_prunes_fine_tunes_and_keeps_the_zeros(tiny_checkpoint, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "sparse.ckpt"
    assert cli.main(["prune", "--checkpoint", str(tiny_checkpoint), "--sparsity", "0.6", "--out", str(out),
                     "--finetune-steps", "2", "--manifest", str(tiny_corpus / "train.csv"), "--batch-size", "4",
                     "--mode", "pynative"]) == 0
    arrays, meta = read(out)
    assert meta["pruned"]["finetune_steps"] == 2 and meta["model"]["hidden_size"] == 24
    original, _ = read(tiny_checkpoint)
    for name, fraction in prune.zero_fraction(arrays).items():
        assert fraction == pytest.approx(0.6, abs=0.01), name
    assert not np.array_equal(arrays["fc.module.weight"], prune.apply_masks(
        original, prune.magnitude_masks(original, 0.6))["fc.module.weight"])  # it was fine-tuned


@pytest.mark.parametrize("argv, words", [
    (["--sparsity", "1.2"], ["--sparsity 1.2", "below 1"]),
    (["--keep-units", "8"], ["--keep-units", "add --structured"]),
    (["--structured"], ["--structured", "either --keep-units"]),
    (["--structured", "--keep-units", "99"], ["--keep-units 99", "24 hidden units"]),
    (["--sparsity", "0.5", "--finetune-steps", "3"], ["--finetune-steps 3", "--manifest"]),
    (["--sparsity", "-1"], ["--sparsity", "0 or more"]),
])
def test_cli_refuses_bad_arguments_in_one_line(tiny_checkpoint, tmp_path, capsys, argv, words):
    out = tmp_path / "x.ckpt"
    try:
        code = cli.main(["prune", "--checkpoint", str(tiny_checkpoint), "--out", str(out), *argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ")
    assert all(w in err[-1] for w in words), err[-1]
    assert not out.exists()


def test_cli_names_a_missing_checkpoint(tmp_path, capsys):
    assert cli.main(["prune", "--checkpoint", str(tmp_path / "none.ckpt"), "--sparsity", "0.5",
                     "--out", str(tmp_path / "x.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "none.ckpt: no such checkpoint" in err and len(err.splitlines()) == 1


def test_measure_returns_one_row_per_variant(tiny_checkpoint, tiny_corpus, tmp_path):
    table = prune.measure(tiny_checkpoint, tiny_corpus / "train.csv", tiny_corpus / "test.csv", sparsities=(0.9,),
                          units=(12,), finetune_steps=1, batch_size=4, eval_limit=4, repeats=1, warmup=0,
                          mode="graph", progress=False, out=tmp_path)
    saved = json.loads((tmp_path / "prune.json").read_text())  # notebook 08's reference format
    assert saved["rows"] == json.loads(json.dumps(table.to_dict("records"))) and saved["mode"] == "graph"
    assert saved["step_batch"][0] == 4 and saved["machine"]["cores"] >= 1 and saved["finetune_steps"] == 1
    assert list(table.kind) == ["unstructured", "structured"] and list(table.hidden_size) == [24, 12]
    assert table.zero_fraction.iloc[0] == pytest.approx(0.9, abs=0.01) and table.zero_fraction.iloc[1] < 0.01
    assert table.nonzero.iloc[0] < 0.3 * table.parameters.iloc[0]  # the zeros survived the fine-tune
    assert table.parameters.iloc[1] < 0.7 * table.parameters.iloc[0]  # the narrower network is smaller
    assert table.checkpoint_mb.iloc[1] < 0.7 * table.checkpoint_mb.iloc[0]  # the zeros are stored, the units not
    assert (table.step_ms > 0).all() and (table.inference_ms > 0).all()
    assert table.cer.between(0, 2).all() and table.cer_pruned.between(0, 2).all()
