"""Time to accuracy: train configurations from scratch for the same wall-clock budget on the mini corpus,
scoring CER on held-out speakers as they go, so a faster model or less data shows what it costs in accuracy."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class RaceConfig:
    """One contestant: the mini model with some fields changed, on all or part of the training data."""

    name: str
    hidden_layers: int | None = None
    hidden_size: int | None = None
    rnn_type: str | None = None
    limit: int | None = None  # only the first N training utterances (manifests are sorted by duration: the shortest N)
    conv_impl: str = "native"  # our matmul conv slows down step after step in long runs (notebook 07)
    distill_from: str | None = None  # a teacher checkpoint: train against its posteriors too (ds2_helpers.distill)
    distill_alpha: float = 0.5  # weight of the CTC loss; 1 - alpha goes to the KL to the teacher
    distill_temperature: float = 2.0

    def model_config(self):
        """The ModelConfig this contestant trains."""
        from ds2_helpers.config import model_preset

        overrides = {k: v for k, v in {"hidden_size": self.hidden_size, "hidden_layers": self.hidden_layers,
                                       "rnn_type": self.rnn_type}.items() if v is not None}
        return model_preset("mini", **overrides)

    def loss_cell(self):
        """The Trainer's loss: CTC (None), or distillation from `distill_from`."""
        if not self.distill_from:
            return None
        from ds2_helpers.distill import loss_cell

        return loss_cell(self.distill_from, self.distill_alpha, self.distill_temperature)


def contestants(train_utterances: int) -> list[RaceConfig]:
    """The mini model, two smaller ones and the mini model on half of the data."""
    return [RaceConfig("mini: 2 x BiLSTM-192, all data"),
            RaceConfig("smaller: 1 x BiLSTM-192", hidden_layers=1),
            RaceConfig("smaller: 2 x BiLSTM-96", hidden_size=96),
            RaceConfig("half the data (half the speakers)", limit=train_utterances // 2)]


class _OutOfTime(Exception):
    """Raised from the training callback when the budget is spent."""


def race_one(cfg: RaceConfig, train_manifest, eval_manifest, out, *, seconds: float, eval_every: float,
             eval_limit: int | None = 64, batch_size: int = 16, mode: str = "graph", seed: int = 1234,
             progress: bool = False) -> list[dict]:
    """Train `cfg` for `seconds` of training time (evaluation excluded); one CER point every `eval_every` s."""
    from ds2_helpers.config import train_preset
    from ds2_helpers.dataset import SpeechData
    from ds2_helpers.evaluate import evaluate
    from ds2_helpers.train import Trainer

    tcfg = train_preset("mini", batch_size=batch_size, mode=mode, epochs=10_000, save_every=0, seed=seed)
    trainer = Trainer(cfg.model_config(), tcfg, Path(out), rank=0, world=1, conv_impl=cfg.conv_impl,
                      loss_cell=cfg.loss_cell())
    train = SpeechData(train_manifest, limit=cfg.limit)
    held_out = SpeechData(eval_manifest, limit=eval_limit)
    curve: list[dict] = []
    clock = {"train": 0.0, "last": time.perf_counter(), "next_eval": eval_every}

    def point(state_step: int, epoch: int) -> None:
        _, summary = evaluate(trainer.net, held_out, batch_size=16, pad_multiple=64)
        trainer.net.set_train(True)
        curve.append({"name": cfg.name, "train_seconds": clock["train"], "step": state_step, "epoch": epoch,
                      "cer": summary["cer"], "wer": summary["wer"]})
        if progress:
            print(f"  {cfg.name}: {clock['train'] / 60:.1f} min, step {state_step}, CER {summary['cer']:.3f}", flush=True)

    def callback(tr, row: dict) -> None:
        now = time.perf_counter()
        clock["train"] += now - clock["last"]
        if clock["train"] >= clock["next_eval"] or clock["train"] >= seconds:
            point(row["step"], row["epoch"])
            clock["next_eval"] = (clock["train"] // eval_every + 1) * eval_every  # a slow step skips points
        clock["last"] = time.perf_counter()
        if clock["train"] >= seconds:
            raise _OutOfTime

    try:
        trainer.fit(train, callback=callback, progress=False)  # one line per CER point instead
    except _OutOfTime:
        pass
    for row in curve:
        row.update(utterances=len(train), parameters=int(sum(int(np.prod(p.shape)) for p in trainer.net.trainable_params())))
    return curve


def time_to_target(curve, targets: list[float]):
    """Per contestant: training minutes until held-out CER first reached each target (NaN: not within budget)."""
    import pandas as pd

    frame = pd.DataFrame(curve)
    rows = []
    for name, group in frame.groupby("name", sort=False):
        row = {"name": name, "parameters": int(group.parameters.iloc[0]), "utterances": int(group.utterances.iloc[0]),
               "best_cer": group.cer.min(), "steps": int(group.step.max())}
        for target in targets:
            hit = group[group.cer <= target]
            row[f"minutes_to_cer_{target:g}"] = hit.train_seconds.iloc[0] / 60 if len(hit) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def early_stop(curve, name: str, *, patience: int = 3, min_delta: float = 0.01) -> dict:
    """Where early stopping on held-out CER would have ended `name`'s run: the evaluation after which
    `patience` more brought no improvement of `min_delta`, and the training time that saves."""
    points = [r for r in curve if r["name"] == name]
    best, best_k = float("inf"), 0
    for k, r in enumerate(points):
        if r["cer"] < best - min_delta:
            best, best_k = r["cer"], k
        elif k - best_k >= patience:
            stop = points[k]
            return {"stopped": True, "stop_minutes": stop["train_seconds"] / 60, "cer_at_stop": stop["cer"],
                    "best_cer": min(p["cer"] for p in points[: k + 1]),
                    "minutes_saved": (points[-1]["train_seconds"] - stop["train_seconds"]) / 60}
    return {"stopped": False, "stop_minutes": points[-1]["train_seconds"] / 60 if points else float("nan"),
            "cer_at_stop": points[-1]["cer"] if points else float("nan"), "best_cer": best, "minutes_saved": 0.0}


def run(configs: list[RaceConfig], train_manifest, eval_manifest, out, *, seconds: float, eval_every: float,
        **kwargs) -> list[dict]:
    """Every contestant with the same budget, one after the other; the curves go to out/race.json."""
    from ds2_helpers.bench import machine
    from ds2_helpers.atomic import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curve: list[dict] = []
    for k, cfg in enumerate(configs):
        print(f"[{k + 1}/{len(configs)}] {cfg.name}: {seconds / 60:.1f} min of training", flush=True)
        curve += race_one(cfg, train_manifest, eval_manifest, out / f"run{k}", seconds=seconds,
                          eval_every=eval_every, **kwargs)
        atomic_write_text(out / "race.json", json.dumps({
            "machine": machine(), "measured": time.strftime("%Y-%m-%d %H:%M"),
            "configs": [asdict(c) for c in configs], "seconds": seconds, "curve": curve}, indent=1))
    return curve


def curve_chart(curve, title: str = "Held-out CER against training time"):
    """CER of every contestant against minutes of training."""
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.DataFrame(curve)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, group in frame.groupby("name", sort=False):
        ax.plot(group.train_seconds / 60, group.cer, marker="o", markersize=3, label=name)
    ax.set_xlabel("minutes of training (evaluation excluded)")
    ax.set_ylabel("greedy CER, held-out speakers")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
