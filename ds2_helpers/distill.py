"""Knowledge distillation: a narrower student learns from the mini model's frame posteriors as well as from CTC.

loss = alpha * CTC(student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)),
the KL summed over each utterance's valid frames (padding cut by the output lengths) and averaged over the
utterances, as the CTC loss is (a sum over an utterance's frames, averaged over the batch), so alpha weighs like
against like; T^2 keeps the gradient's size independent of T (Hinton et al. 2015). The teacher runs in the same
step, in inference mode (BatchNorm on its moving statistics), outside the gradient: its forward pass is part of
the distilled student's step time, so a same-time-budget comparison with the CTC-only student is fair.
"""

from __future__ import annotations

from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from ds2_helpers.config import ParameterError
from ds2_helpers.labels import BLANK_INDEX
from ds2_helpers.train import CTCLossNet


def masked_kl(student_logits, teacher_logits, out_len, temperature: float = 1.0):
    """KL(softmax(teacher/T) || softmax(student/T)) per utterance [N]: summed over classes and over the frames
    t < out_len[n] of logits [T', N, C]; frames past an utterance's length count nothing."""
    log_p_student = ops.log_softmax(student_logits / temperature, -1)
    log_p_teacher = ops.log_softmax(teacher_logits / temperature, -1)
    per_frame = (ops.exp(log_p_teacher) * (log_p_teacher - log_p_student)).sum(-1)  # [T', N]
    frames = ops.arange(per_frame.shape[0], dtype=ms.int32).reshape(-1, 1)
    valid = (frames < out_len.reshape(1, -1)).astype(per_frame.dtype)
    return (per_frame * valid).sum(0)


def masked_kl_numpy(student_logits: np.ndarray, teacher_logits: np.ndarray, out_len: np.ndarray,
                    temperature: float = 1.0) -> np.ndarray:
    """The same in NumPy, frame by frame (the reference the tests hold `masked_kl` to)."""
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    out = np.zeros(student_logits.shape[1])
    for n in range(student_logits.shape[1]):
        for t in range(int(out_len[n])):
            ls = log_softmax(student_logits[t, n].astype(np.float64) / temperature)
            lt = log_softmax(teacher_logits[t, n].astype(np.float64) / temperature)
            out[n] += float(np.sum(np.exp(lt) * (lt - ls)))
    return out


def check_distillation(alpha: float, temperature: float) -> None:
    """ParameterError unless 0 <= alpha <= 1 and temperature > 0."""
    if not 0 <= alpha <= 1:
        raise ParameterError(f"--alpha {alpha:g}: the weight of the CTC loss, from 0 (only the teacher) to 1 "
                             "(only CTC)")
    if not 0 < temperature < float("inf"):
        raise ParameterError(f"--temperature {temperature:g}: use a positive temperature (1 = the teacher's own "
                             "posteriors, larger = softer)")


class DistillLossNet(CTCLossNet):
    """Student + frozen teacher -> alpha * CTC + (1 - alpha) * T^2 * masked KL, averaged over the batch.

    A CTCLossNet with a teacher: the same inputs (x, x_len, y, y_len), so TrainStep and Trainer use it unchanged
    (`Trainer(..., loss_cell=distill.loss_cell(teacher))`), the student under `net` (checkpoints keep its names); the teacher's parameters are renamed `teacher.*`, left out of the gradient
    and never switched to training mode."""

    def __init__(self, student: nn.Cell, teacher: nn.Cell, alpha: float = 0.5, temperature: float = 2.0,
                 blank: int = BLANK_INDEX) -> None:
        check_distillation(alpha, temperature)
        super().__init__(student, blank)
        for p in teacher.get_parameters():
            p.requires_grad = False
            if not p.name.startswith("teacher."):
                p.name = "teacher." + p.name  # one graph must not hold two parameters of one name
        self.teacher = teacher
        self.teacher.set_train(False)
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.use_teacher = alpha < 1  # alpha = 1 is plain CTC: no teacher pass at all

    def set_train(self, mode: bool = True):
        super().set_train(mode)
        self.teacher.set_train(False)  # the teacher always infers (its BatchNorm statistics stay as trained)
        return self

    def construct(self, x, x_len, y, y_len):
        logits, out_len = self.net(x, x_len)
        ctc = self.per_utterance(logits, out_len, y, y_len).mean()
        if not self.use_teacher:
            return ctc
        teacher_logits, _ = self.teacher(x, x_len)
        teacher_logits = ops.stop_gradient(teacher_logits.astype(ms.float32))
        kl = masked_kl(logits, teacher_logits, out_len, self.temperature).mean()
        return self.alpha * ctc + (1 - self.alpha) * self.temperature ** 2 * kl


def load_teacher(checkpoint: str | Path):
    """The teacher network from a checkpoint that records its ModelConfig, in inference mode. Unlike
    `load_model` it leaves the execution mode alone (a Trainer has set Graph mode by then)."""
    from ds2_helpers import checkpoint as ckpt
    from ds2_helpers.config import ModelConfig, from_dict
    from ds2_helpers.model import DeepSpeech2

    _, meta = ckpt.read(checkpoint)
    if "model" not in meta:
        raise ckpt.CheckpointError(f"{checkpoint}: records no model configuration; use a checkpoint written by "
                                   "this workbook (train, prune) as the teacher")
    net = DeepSpeech2(from_dict(ModelConfig, meta["model"]))
    ckpt.load_into(net, checkpoint)
    net.set_train(False)
    return net


def loss_cell(teacher: str | Path, alpha: float = 0.5, temperature: float = 2.0):
    """A `Trainer(loss_cell=...)` factory: student network -> DistillLossNet against the teacher checkpoint
    (loaded now, so a missing file fails before the Trainer is built)."""
    check_distillation(alpha, temperature)
    teacher_net = load_teacher(teacher)
    return lambda student: DistillLossNet(student, teacher_net, alpha, temperature)


def contestants(teacher: str | Path, hidden_size: int = 96, hidden_layers: int = 2, alpha: float = 0.5,
                temperature: float = 2.0):
    """The two students of the comparison: the same narrow network trained with CTC alone and distilled."""
    from ds2_helpers.race import RaceConfig

    shape = f"{hidden_layers} x BiLSTM-{hidden_size}"
    return [RaceConfig(f"student {shape}, CTC only", hidden_layers=hidden_layers, hidden_size=hidden_size),
            RaceConfig(f"student {shape}, distilled (alpha {alpha:g}, T {temperature:g})",
                       hidden_layers=hidden_layers, hidden_size=hidden_size, distill_from=str(teacher),
                       distill_alpha=alpha, distill_temperature=temperature)]


def compare(teacher: str | Path, train_manifest, eval_manifest, out, *, seconds: float, eval_every: float,
            hidden_size: int = 96, hidden_layers: int = 2, alpha: float = 0.5, temperature: float = 2.0,
            eval_limit: int | None = 64, batch_size: int = 16, mode: str = "graph", repeats: int = 5,
            progress: bool = True):
    """Distilled vs CTC-only student, the same training time each (ds2_helpers.race), plus the teacher.

    Returns (curve, table): the race's CER curve and one row per network - parameters, steps trained, seconds
    per training step (training time / steps: the distilled one pays the teacher's forward pass), best and last
    held-out CER, and the median forward pass over one fixed held-out batch (Graph, as `evaluate` runs it). The
    two students share one architecture, so one inference time serves both: MindSpore's dense kernels take the
    same time whatever the weights are. The curves and the table also go to out/distill.json (what notebook 08
    reads as its reference)."""
    import json

    import pandas as pd

    from ds2_helpers import race
    from ds2_helpers.atomic import atomic_write_text
    from ds2_helpers.config import model_preset
    from ds2_helpers.dataset import SpeechData
    from ds2_helpers.evaluate import evaluate
    from ds2_helpers.model import DeepSpeech2, count_parameters
    from ds2_helpers.prune import forward, interleaved_medians, middle_batch

    check_distillation(alpha, temperature)
    configs = contestants(teacher, hidden_size, hidden_layers, alpha, temperature)
    curve = race.run(configs, train_manifest, eval_manifest, out, seconds=seconds, eval_every=eval_every,
                     eval_limit=eval_limit, batch_size=batch_size, mode=mode, progress=progress)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    held_out = SpeechData(eval_manifest, limit=eval_limit)
    batch = middle_batch(held_out, batch_size)
    teacher_net = load_teacher(teacher)
    _, teacher_summary = evaluate(teacher_net, held_out, batch_size=batch_size, on_skip=lambda m: None)
    student = DeepSpeech2(model_preset("mini", hidden_size=hidden_size, hidden_layers=hidden_layers))
    teacher_s, student_s = interleaved_medians([forward(teacher_net, batch), forward(student, batch)], repeats)
    student_ms = 1e3 * student_s
    rows = [{"name": "teacher (" + Path(teacher).name + ")", "parameters": count_parameters(teacher_net),
             "steps": None, "step_seconds": None, "best_cer": teacher_summary["cer"], "last_cer": teacher_summary["cer"],
             "inference_ms": 1e3 * teacher_s}]
    for cfg in configs:
        points = [r for r in curve if r["name"] == cfg.name]
        last = points[-1]
        rows.append({"name": cfg.name, "parameters": last["parameters"], "steps": last["step"],
                     "step_seconds": last["train_seconds"] / max(last["step"], 1),
                     "best_cer": min(p["cer"] for p in points), "last_cer": last["cer"], "inference_ms": student_ms})
    table = pd.DataFrame(rows)
    race_json = Path(out) / "race.json"  # race.run's curves and machine, with the table: out/distill.json
    atomic_write_text(Path(out) / "distill.json", json.dumps(
        {**json.loads(race_json.read_text()), "teacher": str(teacher), "table": table.to_dict("records")}, indent=1))
    return curve, table
