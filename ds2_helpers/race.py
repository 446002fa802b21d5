"""Time to accuracy: train configurations from scratch for the same wall-clock budget on the mini corpus,
scoring CER on held-out speakers as they go, so a faster model or less data shows what it costs in accuracy;
`augment_contestants` does the same for data augmentation, scored at the end on the mini test speakers and on the
unseen voices (`race --contestants augment --score test=... --score unseen=...`)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
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
    # The update rule (issue 12): optimizer, schedule, rate (None: the mini preset's) and, for cosine/onecycle, the
    # schedule's length in steps (None: `run` estimates it from the budget, see `estimate_schedule_steps`).
    optimizer: str = "adam"
    schedule: str = "anneal"
    learning_rate: float | None = None
    schedule_steps: int | None = None
    augment: str | None = None  # training augmentation, AugmentConfig.of's kinds: "speed,gain,noise,specaugment"

    distill_from: str | None = None  # a teacher checkpoint: train against its posteriors too (ds2_helpers.distill)
    distill_alpha: float = 0.5  # weight of the CTC loss; 1 - alpha goes to the KL to the teacher
    distill_temperature: float = 2.0

    def train_overrides(self) -> dict:
        """The TrainConfig fields this contestant changes (none for the defaults: the mini preset as it is)."""
        overrides = {"optimizer": self.optimizer, "schedule": self.schedule}
        if self.learning_rate is not None:
            overrides["learning_rate"] = self.learning_rate
        if self.schedule_steps is not None:
            overrides["schedule_steps"] = self.schedule_steps
        return overrides

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


def configs_of(record: dict) -> list[RaceConfig]:
    """The contestants a race record names (race.json, or a reference's "race" part): its "configs" as RaceConfig."""
    return [RaceConfig(**c) for c in record["configs"]]


def contestants(train_utterances: int) -> list[RaceConfig]:
    """The mini model, two smaller ones and the mini model on the first half of the (duration-sorted) data."""
    return [RaceConfig("mini: 2 x BiLSTM-192, all data"),
            RaceConfig("smaller: 1 x BiLSTM-192", hidden_layers=1),
            RaceConfig("smaller: 2 x BiLSTM-96", hidden_size=96),
            RaceConfig("half the data (the shorter half)", limit=train_utterances // 2)]


def augment_contestants() -> list[RaceConfig]:
    """The mini model without augmentation, with speed perturbation and SpecAugment, and with every kind."""
    return [RaceConfig("mini, no augmentation"),
            RaceConfig("mini + speed, specaugment", augment="speed,specaugment"),
            RaceConfig("mini + speed, gain, noise, specaugment", augment="speed,gain,noise,specaugment")]


CONTESTANTS = {"models": contestants, "augment": lambda train_utterances: augment_contestants()}
"""`race --suite NAME`: the line-ups besides the optimizer suites, each a function of the number of training
utterances."""


class _OutOfTime(Exception):
    """Raised from the training callback when the budget is spent."""


def race_one(cfg: RaceConfig, train_manifest, eval_manifest, out, *, seconds: float, eval_every: float,
             eval_limit: int | None = 64, batch_size: int = 16, mode: str = "graph", seed: int = 1234,
             progress: bool = False, score: dict[str, str] | None = None) -> list[dict]:
    """Train `cfg` for `seconds` of training time (evaluation excluded); one CER point every `eval_every` s.
    `score`: name -> manifest, each scored in full once the budget is spent (the last point's `final_cer_<name>`,
    `final_wer_<name>`): e.g. the mini test speakers and the unseen voices."""
    from ds2_helpers.config import AugmentConfig, ParameterError, train_preset
    from ds2_helpers.dataset import SpeechData
    from ds2_helpers.evaluate import evaluate
    from ds2_helpers.schedules import is_step_based
    from ds2_helpers.train import Trainer

    if is_step_based(cfg.schedule) and cfg.schedule_steps is None:
        raise ParameterError(f"{cfg.name}: schedule {cfg.schedule!r} needs schedule_steps in a time race (the "
                             "epochs are open-ended); race.run estimates it from the budget")
    tcfg = train_preset("mini", batch_size=batch_size, mode=mode, epochs=10_000, save_every=0, seed=seed,
                        augment=AugmentConfig.of(cfg.augment), **cfg.train_overrides())
    trainer = Trainer(cfg.model_config(), tcfg, Path(out), rank=0, world=1, conv_impl=cfg.conv_impl,
                      loss_cell=cfg.loss_cell())
    train = SpeechData(train_manifest, limit=cfg.limit)
    held_out = SpeechData(eval_manifest, limit=eval_limit)
    curve: list[dict] = []
    clock = {"train": 0.0, "last": time.perf_counter(), "next_eval": eval_every}
    losses: list[float] = []  # training losses since the last CER point

    def point(state_step: int, epoch: int) -> None:
        _, summary = evaluate(trainer.net, held_out, batch_size=16, pad_multiple=64)
        trainer.net.set_train(True)
        curve.append({"name": cfg.name, "train_seconds": clock["train"], "step": state_step, "epoch": epoch,
                      "cer": summary["cer"], "wer": summary["wer"],
                      "loss": float(np.mean(losses)) if losses else float("nan")})
        losses.clear()
        if progress:
            print(f"  {cfg.name}: {clock['train'] / 60:.1f} min, step {state_step}, CER {summary['cer']:.3f}", flush=True)

    def callback(tr, row: dict) -> None:
        now = time.perf_counter()
        clock["train"] += now - clock["last"]
        losses.append(row["loss"])
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
    for name, manifest in (score or {}).items():
        _, summary = evaluate(trainer.net, SpeechData(manifest), batch_size=16, pad_multiple=64)
        if curve:
            curve[-1].update({f"final_cer_{name}": summary["cer"], f"final_wer_{name}": summary["wer"]})
        if progress:
            print(f"  {cfg.name}: CER {summary['cer']:.3f} on {name} ({manifest})", flush=True)
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


def final_scores(curve):
    """Per contestant: steps, training minutes and the `score` manifests' CER and WER after the budget."""
    import pandas as pd

    rows = []
    for name, group in pd.DataFrame(curve).groupby("name", sort=False):
        last = group.iloc[-1]
        row = {"name": name, "steps": int(last.step), "minutes": last.train_seconds / 60}
        row.update({k: last[k] for k in group.columns if k.startswith(("final_cer_", "final_wer_"))})
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


def estimate_schedule_steps(cfg: RaceConfig, train_manifest, seconds: float, *, probe_steps: int = 6,
                            batch_size: int = 16, mode: str = "graph", seed: int = 1234, **_) -> dict:
    """How many steps `cfg` takes in `seconds` of race training, from a throwaway run of `probe_steps` steps
    timed as `race_one` times them (batch preparation included): the first step (Graph mode compiles in it),
    then the median of the others. Returns {"steps", "first_seconds", "step_seconds"}.

    Why estimate rather than fix a number: a cosine or one-cycle schedule has to end where the budget does, and
    the steps a budget holds depend on the machine (data/race_reference_2core.json: 374 steps of the mini model
    in 8 min on 2 cores). The probe runs the shortest utterances (SortaGrad), so it errs towards more steps:
    the schedule then ends a little after the budget, at a few percent of its peak rather than at 0."""
    import tempfile

    from ds2_helpers.config import train_preset
    from ds2_helpers.dataset import SpeechData
    from ds2_helpers.train import Trainer

    tcfg = train_preset("mini", batch_size=batch_size, mode=mode, epochs=10_000, save_every=0, seed=seed,
                        optimizer=cfg.optimizer, schedule="constant")
    times: list[float] = []
    clock = {"last": 0.0}

    def callback(tr, row: dict) -> None:
        now = time.perf_counter()
        times.append(now - clock["last"])
        clock["last"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg.model_config(), tcfg, tmp, rank=0, world=1, conv_impl=cfg.conv_impl)
        clock["last"] = time.perf_counter()
        trainer.fit(SpeechData(train_manifest, limit=cfg.limit), max_steps=probe_steps, callback=callback,
                    progress=False)
    first, steady = times[0], float(np.median(times[1:])) if len(times) > 1 else times[0]
    return {"steps": max(1, 1 + int((seconds - first) // steady)), "first_seconds": first, "step_seconds": steady}


def with_schedule_steps(configs: list[RaceConfig], train_manifest, seconds: float, **kwargs) -> tuple[list, list]:
    """`configs` with `schedule_steps` filled in where a step-based schedule lacks it, one probe per model
    (the optimizer's share of a step is small: every optimizer of one model gets the same length, so the
    schedules compared end together). Returns the configs and the probes' results."""
    from ds2_helpers.schedules import is_step_based

    probes: dict = {}
    done = []
    for cfg in configs:
        if is_step_based(cfg.schedule) and cfg.schedule_steps is None:
            key = (cfg.model_config(), cfg.conv_impl, cfg.limit)
            if key not in probes:
                probes[key] = {"model": cfg.name, **estimate_schedule_steps(cfg, train_manifest, seconds, **kwargs)}
                print(f"schedule length for {seconds / 60:.1f} min: {probes[key]['steps']} steps (probe: first step "
                      f"{probes[key]['first_seconds']:.1f} s, then {probes[key]['step_seconds']:.2f} s/step)",
                      flush=True)
            cfg = replace(cfg, schedule_steps=probes[key]["steps"])
        done.append(cfg)
    return done, list(probes.values())


def run(configs: list[RaceConfig], train_manifest, eval_manifest, out, *, seconds: float, eval_every: float,
        extra: dict | None = None, **kwargs) -> list[dict]:
    """Every contestant with the same budget, one after the other; the curves go to out/race.json (with `extra`
    keys beside them). Step-based schedules without a length get one estimated from the budget first."""
    from ds2_helpers.bench import provenance
    from ds2_helpers.atomic import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    probe_args = {k: v for k, v in kwargs.items() if k in ("batch_size", "mode", "seed")}
    configs, probes = with_schedule_steps(configs, train_manifest, seconds, **probe_args)
    extra = {**(extra or {}), **({"schedule_probes": probes} if probes else {})}
    curve: list[dict] = []
    for k, cfg in enumerate(configs):
        print(f"[{k + 1}/{len(configs)}] {cfg.name}: {seconds / 60:.1f} min of training", flush=True)
        curve += race_one(cfg, train_manifest, eval_manifest, out / f"run{k}", seconds=seconds,
                          eval_every=eval_every, **kwargs)
        atomic_write_text(out / "race.json", json.dumps({
            **provenance(),
            "configs": [asdict(c) for c in configs], "seconds": seconds, "curve": curve, **extra}, indent=1))
    return curve


def curve_chart(curve, title: str = "Held-out CER against training time", *, thresholds=(), styles=None):
    """CER of every contestant against minutes of training; `thresholds`: CERs drawn as dashed lines;
    `styles`: name -> matplotlib line keywords (colour, linestyle) for contestants that share a property."""
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.DataFrame(curve)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, group in frame.groupby("name", sort=False):
        ax.plot(group.train_seconds / 60, group.cer, marker="o", markersize=3, label=name,
                **(styles or {}).get(name, {}))
    for cer in thresholds:
        ax.axhline(cer, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(f"CER {cer:g}", (0, cer), xycoords=("axes fraction", "data"), xytext=(2, 2),
                    textcoords="offset points", fontsize=7, color="grey")
    ax.set_xlabel("minutes of training (evaluation excluded)")
    ax.set_ylabel("greedy CER, held-out speakers")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---- optimizers and learning-rate schedules as contestants (issue 12) --------------------------------------------
SWEEP_RATES: dict[str, tuple[float, ...]] = {"adam": (3e-4, 1e-3, 3e-3, 1e-2), "lamb": (3e-3, 1e-2, 3e-2, 1e-1),
                                             "sgd": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)}
"""Rates tried per optimizer, half a decade apart: Adam around the mini preset's 1e-3; LAMB higher, since its
rate is each layer's step relative to the layer's norm (Adam's step of 1e-3 per weight is already a few percent
of a mini-model weight at initialisation); SGD with momentum 0.9 from deepspeech.pytorch's 3e-4 (its loss is also
averaged over the batch) upwards, as the mini model is smaller. The rows began with three rates each; the reference
sweep (data/optimizer_reference_2core.json, 3 min per rate) found every best at the top of its row and was
extended upward until a larger rate did worse (SGD's row stops at 3e-2). A best rate at an end of its row is
flagged by `best_rates`: widen the row and sweep again."""
RACE_SCHEDULES = ("constant", "anneal", "cosine")
"""The schedules each optimizer races with: a constant rate, the per-epoch anneal of today, warm-up + cosine."""


def sweep_contestants(rates: dict[str, tuple[float, ...]] = SWEEP_RATES) -> list[RaceConfig]:
    """The learning-rate sweep: every optimizer at each of its rates, constant schedule."""
    return [RaceConfig(f"{opt}, constant, lr {rate:g}", optimizer=opt, schedule="constant", learning_rate=rate)
            for opt, row in rates.items() for rate in row]


def best_rates(curve, configs: list[RaceConfig]) -> dict[str, dict]:
    """Per optimizer, the swept rate with the lowest held-out CER at the end of the budget (ties, e.g. all still
    at 1.0 early on: the lower mean training loss over the last evaluation interval, then the smaller rate).
    `at_edge`: the best is the smallest or largest rate tried, so the optimum may lie outside the row."""
    last = {r["name"]: r for r in curve}  # the curve is in time order: the last point of each is the end
    result: dict[str, dict] = {}
    for opt in dict.fromkeys(c.optimizer for c in configs):
        tried = [c for c in configs if c.optimizer == opt and c.name in last]
        if not tried:
            continue

        def key(c):
            point = last[c.name]
            loss = point.get("loss", float("nan"))
            return (point["cer"], loss if loss == loss else float("inf"), c.learning_rate)

        best = min(tried, key=key)
        rates = sorted(c.learning_rate for c in tried)
        result[opt] = {"learning_rate": best.learning_rate, "cer": last[best.name]["cer"],
                       "loss": last[best.name].get("loss"), "tried": rates,
                       "at_edge": len(rates) > 1 and best.learning_rate in (rates[0], rates[-1])}
    return result


def lr_sweep(train_manifest, eval_manifest, out, *, seconds: float, rates=SWEEP_RATES, **kwargs) -> dict[str, dict]:
    """A small, documented learning-rate sweep: each optimizer at each rate of `rates` for `seconds` with a
    constant rate, one CER point at the end of the budget; the curves go to out/race.json, the choice to
    out/sweep.json. Returns `best_rates` (what `optimizer_contestants` takes)."""
    from ds2_helpers.atomic import atomic_write_text

    configs = sweep_contestants(rates)
    curve = run(configs, train_manifest, eval_manifest, out, seconds=seconds, eval_every=seconds,
                extra={"suite": "lr-sweep"}, **kwargs)
    best = best_rates(curve, configs)
    atomic_write_text(Path(out) / "sweep.json", json.dumps({"seconds": seconds, "rates": rates, "best": best},
                                                           indent=1))
    return best


def optimizer_contestants(rates: dict[str, float], schedules=RACE_SCHEDULES, *,
                          today: float | None = None) -> list[RaceConfig]:
    """Every optimizer of `rates` (name -> its tuned rate, e.g. from `lr_sweep`) with every schedule, Adam with
    the per-epoch anneal (today's rule) first. `today`: the mini preset's rate; when Adam's tuned rate differs,
    today's exact configuration runs first as well, so the race shows what tuning alone gained."""
    from ds2_helpers.config import train_preset

    today = train_preset("mini").learning_rate if today is None else today
    rates = {k: (v["learning_rate"] if isinstance(v, dict) else v) for k, v in rates.items()}
    order = sorted(schedules, key=lambda s: s != "anneal")
    configs = [RaceConfig(f"{opt} + {sched}, lr {rates[opt]:g}", optimizer=opt, schedule=sched,
                          learning_rate=rates[opt])
               for opt in sorted(rates, key=lambda o: o != "adam") for sched in order]
    if "adam" in rates and "anneal" in schedules and rates["adam"] != today:
        configs.insert(0, RaceConfig(f"today: adam + anneal, lr {today:g}", learning_rate=today))
    return configs


def optimizer_table(curve, configs: list[RaceConfig], targets=(0.4, 0.2)):
    """`time_to_target` with each contestant's optimizer, schedule and rate, ranked: first by minutes to the
    strictest target, then to the others (strictest first), then by best CER; never reached (NaN) ranks last."""
    import pandas as pd

    table = time_to_target(curve, list(targets))
    info = pd.DataFrame([{"name": c.name, "optimizer": c.optimizer, "schedule": c.schedule,
                          "learning_rate": c.learning_rate, "schedule_steps": c.schedule_steps} for c in configs])
    table = info.merge(table, on="name", how="right")
    order = [f"minutes_to_cer_{t:g}" for t in sorted(targets)] + ["best_cer"]
    table = table.sort_values(order, na_position="last", kind="stable").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def optimizer_chart(curve, configs: list[RaceConfig], thresholds=(0.4, 0.2),
                    title: str = "Optimizers and schedules: held-out CER against training time"):
    """`curve_chart` with one colour per optimizer and one line style per schedule, the targets dashed."""
    colours = {opt: f"C{k}" for k, opt in enumerate(dict.fromkeys(c.optimizer for c in configs))}
    dashes = {"anneal": "-", "constant": ":", "cosine": "-.", "onecycle": (0, (5, 1, 1, 1, 1, 1))}
    styles = {c.name: {"color": "black" if c.name.startswith("today") else colours[c.optimizer],
                       "linestyle": dashes.get(c.schedule, "-")} for c in configs}
    return curve_chart(curve, title, thresholds=thresholds, styles=styles)


def optimizer_reference(out) -> dict:
    """The sweep and the race of `race --suite optimizers --out OUT` as one record (what notebook 08 reads as its
    reference): {"machine", "measured", "sweep": sweep's race.json + sweep.json, "race": OUT/race.json}."""
    out = Path(out)
    race_run = json.loads((out / "race.json").read_text())
    sweep = {**json.loads((out / "sweep" / "race.json").read_text()),
             **json.loads((out / "sweep" / "sweep.json").read_text())}
    return {"machine": race_run["machine"], "measured": race_run["measured"], "sweep": sweep, "race": race_run}


def write_optimizer_reference(out) -> Path:
    """`optimizer_reference(out)` written atomically to OUT/optimizers.json; returns its path."""
    from ds2_helpers.atomic import atomic_write_text

    return atomic_write_text(Path(out) / "optimizers.json", json.dumps(optimizer_reference(out), indent=1))


def todays_row(table):
    """The row of today's rule in an `optimizer_table`: the `today: ...` contestant, else Adam with the anneal at the
    mini preset's rate (the tuned rate was today's, so no separate run); None when neither raced."""
    from ds2_helpers.config import train_preset

    named = table[table.name.str.startswith("today")]
    if len(named):
        return named.iloc[0]
    same = table[(table.optimizer == "adam") & (table.schedule == "anneal")
                 & (table.learning_rate == train_preset("mini").learning_rate)]
    return same.iloc[0] if len(same) else None


def optimizer_recommendation(table) -> str:
    """One sentence from an `optimizer_table` (ranked): the first contestant against today's rule, at the strictest
    target the first one reached (the ranking guarantees nobody reached a stricter one)."""
    first, today = table.iloc[0], todays_row(table)
    if today is None:
        return f"{first['name']} ranked first (best CER {first.best_cer:.3f}); today's rule did not race"
    if first["name"] == today["name"]:
        return f"keep today's rule: {first['name']} ranked first (best CER {first.best_cer:.3f})"
    targets = sorted((c for c in table.columns if c.startswith("minutes_to_cer_")),
                     key=lambda c: float(c.rsplit("_", 1)[1]))
    for column in targets:
        if first[column] != first[column]:  # NaN: not reached
            continue
        target = column.rsplit("_", 1)[1]
        if today[column] != today[column]:
            return (f"{first['name']} reached CER {target} after {first[column]:.1f} min of training; "
                    f"{today['name']} did not within the budget (best CER {first.best_cer:.3f} against "
                    f"{today.best_cer:.3f})")
        return (f"{first['name']} reached CER {target} after {first[column]:.1f} min of training against "
                f"{today[column]:.1f} min for {today['name']} ({today[column] / first[column]:.1f}x sooner); "
                f"best CER {first.best_cer:.3f} against {today.best_cer:.3f}")
    return (f"no contestant reached a target; {first['name']} ended best (CER {first.best_cer:.3f} against "
            f"{today.best_cer:.3f} for {today['name']})")
