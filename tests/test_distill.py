"""Distillation: the loss against CTC and a NumPy KL, zero KL for a student that is its teacher, a KL that falls
when the student trains against it, and the race contestant that trains that way."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from ds2_helpers import distill, prune
from ds2_helpers.config import ModelConfig, ParameterError, SpectConfig, TrainConfig
from ds2_helpers.dataset import SpeechData
from ds2_helpers.model import DeepSpeech2
from ds2_helpers.paths import data_dir
from ds2_helpers.race import RaceConfig
from ds2_helpers.train import CTCLossNet, Trainer

TEACHER = ModelConfig(conv_channels=2, hidden_size=24, hidden_layers=2)
STUDENT = ModelConfig(conv_channels=2, hidden_size=12, hidden_layers=1)


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(3)
    arrays = prune.network_arrays(DeepSpeech2(TEACHER))
    return prune.save_pruned(tmp_path_factory.mktemp("teacher") / "teacher.ckpt", arrays, TEACHER, SpectConfig())


@pytest.fixture(scope="module")
def batch(tiny_corpus):
    return SpeechData(tiny_corpus / "train.csv", limit=4).batch([0, 1, 2, 3], pad_multiple=64)


def tensors(b):
    return ms.Tensor(b.x), ms.Tensor(b.x_len), ms.Tensor(b.y), ms.Tensor(b.y_len)


def test_masked_kl_matches_numpy_and_ignores_padded_frames():
    rng = np.random.default_rng(0)
    s, t = (3 * rng.standard_normal((2, 7, 4, 29))).astype(np.float32)
    out_len = np.array([7, 3, 1, 5], np.int32)
    for temperature in (1.0, 2.5):
        got = distill.masked_kl(ms.Tensor(s), ms.Tensor(t), ms.Tensor(out_len), temperature).asnumpy()
        want = distill.masked_kl_numpy(s, t, out_len, temperature)
        assert np.allclose(got, want, rtol=1e-4, atol=1e-5) and (want > 0).all()
    garbage = s.copy()
    garbage[3:, 1] = 100 * rng.standard_normal((4, 29))  # past utterance 1's three frames
    changed = distill.masked_kl(ms.Tensor(garbage), ms.Tensor(t), ms.Tensor(out_len), 2.0).asnumpy()
    assert np.allclose(changed, distill.masked_kl(ms.Tensor(s), ms.Tensor(t), ms.Tensor(out_len), 2.0).asnumpy())


def test_alpha_one_is_the_ctc_loss(teacher_checkpoint, batch):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(5)
    student = DeepSpeech2(STUDENT)
    student.set_train(False)
    plain = CTCLossNet(student)(*tensors(batch)).asnumpy()
    mixed = distill.loss_cell(teacher_checkpoint, alpha=1.0, temperature=2.0)(student)(*tensors(batch)).asnumpy()
    assert plain == mixed and np.isfinite(plain) and plain > 0
    half = distill.loss_cell(teacher_checkpoint, alpha=0.5, temperature=2.0)(student)(*tensors(batch)).asnumpy()
    assert half != plain  # the teacher's term counts once alpha < 1


def test_kl_is_zero_when_the_student_is_the_teacher(teacher_checkpoint, batch):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    student = distill.load_teacher(teacher_checkpoint)  # the same weights under the student's names
    only_kl = distill.loss_cell(teacher_checkpoint, alpha=0.0, temperature=3.0)(student)(*tensors(batch))
    assert abs(float(only_kl.asnumpy())) < 1e-5
    other = DeepSpeech2(TEACHER)
    other.set_train(False)
    differs = distill.loss_cell(teacher_checkpoint, alpha=0.0, temperature=3.0)(other)(*tensors(batch))
    assert float(differs.asnumpy()) > 1e-3


def test_bad_alpha_or_temperature_is_refused(teacher_checkpoint):
    for alpha, temperature, words in ((1.5, 2.0, "--alpha 1.5"), (-0.1, 2.0, "--alpha"), (0.5, 0.0, "--temperature 0")):
        with pytest.raises(ParameterError, match=words):
            distill.loss_cell(teacher_checkpoint, alpha, temperature)


def test_a_few_distillation_steps_lower_the_kl_and_leave_the_teacher_alone(tiny_corpus, batch, tmp_path):
    cfg = TrainConfig(learning_rate=1e-2, batch_size=4, epochs=12, mode="graph", save_every=0, seed=7)
    teacher = data_dir() / "mini_pretrained.ckpt"  # a teacher that transcribes: CTC and KL pull the same way
    trainer = Trainer(STUDENT, cfg, tmp_path, rank=0, world=1,
                      loss_cell=distill.loss_cell(teacher, alpha=0.5, temperature=2.0))
    teacher_before = prune.network_arrays(trainer.loss_net.teacher)
    assert all(n.startswith("teacher.") for n in teacher_before)
    assert not set(p.name for p in trainer.optimizer.parameters) & set(teacher_before)

    def kl():
        ms.set_context(mode=ms.PYNATIVE_MODE)
        x, x_len, _, _ = tensors(batch)
        trainer.net.set_train(False)
        student_logits, out_len = trainer.net(x, x_len)
        teacher_logits, _ = trainer.loss_net.teacher(x, x_len)
        value = distill.masked_kl(student_logits, teacher_logits, out_len, 2.0).asnumpy().mean()
        ms.set_context(mode=ms.GRAPH_MODE)
        return value

    before = kl()
    losses = [r["loss"] for r in trainer.fit(SpeechData(tiny_corpus / "train.csv", limit=4), progress=False).history]
    assert kl() < 0.9 * before  # measured: about 0.82 x after these 12 steps
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert all(np.array_equal(v, prune.network_arrays(trainer.loss_net.teacher)[k]) for k, v in teacher_before.items())
    assert not trainer.loss_net.teacher.training  # BatchNorm statistics stay the teacher's


def test_distilled_race_contestant_builds_the_distillation_loss(teacher_checkpoint):
    plain, distilled = distill.contestants(teacher_checkpoint, hidden_size=12, hidden_layers=1)
    assert plain.loss_cell() is None and plain.model_config() == distilled.model_config()
    assert distilled.model_config().hidden_size == 12 and distilled.distill_from == str(teacher_checkpoint)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    cell = distilled.loss_cell()(DeepSpeech2(distilled.model_config()))
    assert isinstance(cell, distill.DistillLossNet) and cell.alpha == 0.5 and cell.temperature == 2.0
    assert RaceConfig("x").distill_from is None  # the existing contestants train as before


@pytest.mark.parametrize("extra, words", [
    (["--alpha", "1.5"], ["--alpha 1.5", "from 0"]),
    (["--temperature", "0"], ["--temperature", "above 0"]),
    (["--teacher", "missing.ckpt"], ["missing.ckpt", "--teacher"]),
])
def test_distill_cli_refuses_bad_input_in_one_line(teacher_checkpoint, tiny_corpus, tmp_path, capsys, extra, words):
    from ds2_helpers import cli

    argv = ["distill", "--teacher", str(teacher_checkpoint), "--train", str(tiny_corpus / "train.csv"),
            "--eval", str(tiny_corpus / "dev.csv"), "--out", str(tmp_path / "out"), *extra]
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and all(w in err[-1] for w in words), err
    assert not (tmp_path / "out").exists()  # refused before any training
