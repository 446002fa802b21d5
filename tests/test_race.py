"""Time-to-accuracy race: the bookkeeping on known curves, and one short real race on the tiny corpus."""

from __future__ import annotations

import json
import math

import pytest

from ds2_helpers import race
from ds2_helpers.dataset import SpeechData


def _curve(name: str, cers: list[float], every: float = 60.0) -> list[dict]:
    return [{"name": name, "train_seconds": every * (k + 1), "step": 10 * (k + 1), "epoch": 0, "cer": c, "wer": c,
             "utterances": 100, "parameters": 1000} for k, c in enumerate(cers)]


def test_time_to_target_takes_the_first_evaluation_at_or_below_each_target():
    curve = _curve("a", [0.9, 0.7, 0.55, 0.5]) + _curve("b", [0.95, 0.85, 0.79])
    table = race.time_to_target(curve, [0.8, 0.6]).set_index("name")
    assert table.loc["a", "minutes_to_cer_0.8"] == pytest.approx(2.0)
    assert table.loc["a", "minutes_to_cer_0.6"] == pytest.approx(3.0)
    assert table.loc["b", "minutes_to_cer_0.8"] == pytest.approx(3.0)
    assert math.isnan(table.loc["b", "minutes_to_cer_0.6"])
    assert table.loc["a", "best_cer"] == pytest.approx(0.5)


def test_early_stop_ends_after_patience_evaluations_without_improvement():
    curve = _curve("a", [0.9, 0.6, 0.5, 0.505, 0.498, 0.502, 0.49, 0.48])
    stop = race.early_stop(curve, "a", patience=3, min_delta=0.01)
    assert stop["stopped"] and stop["stop_minutes"] == pytest.approx(6.0)  # 3 evaluations after the 0.5 at minute 3
    assert stop["minutes_saved"] == pytest.approx(2.0)
    assert stop["best_cer"] == pytest.approx(0.498)
    still_learning = race.early_stop(_curve("b", [0.9, 0.7, 0.5, 0.3]), "b", patience=2)
    assert not still_learning["stopped"] and still_learning["minutes_saved"] == 0.0


def test_contestants_change_one_thing_each():
    base, *others = race.contestants(1200)
    assert base.model_config() == race.RaceConfig("x").model_config() and base.limit is None
    assert others[0].model_config().hidden_layers == 1
    assert others[1].model_config().hidden_size == 96
    assert others[2].limit == 600 and others[2].model_config() == base.model_config()


@pytest.mark.slow
def test_race_trains_for_the_budget_and_scores_held_out_speakers(tiny_corpus, tmp_path):
    # 30 s: on a slow day (NumPy sgemm 29-70 GFLOP/s) the first PyNative step alone took 15-16 s
    configs = [race.RaceConfig("tiny mini"), race.RaceConfig("one layer", hidden_layers=1, limit=24)]
    curve = race.run(configs, tiny_corpus / "train.csv", tiny_corpus / "dev.csv", tmp_path, seconds=30.0,
                     eval_every=3.0, eval_limit=4, batch_size=4, mode="pynative")
    for name in ("tiny mini", "one layer"):
        points = [r for r in curve if r["name"] == name]
        assert len(points) >= 2
        assert points[-1]["train_seconds"] >= 30.0
        assert all(a["step"] < b["step"] for a, b in zip(points, points[1:]))
        # a few steps from scratch cannot transcribe unseen speakers: CER near 1 (an empty output scores 1.0);
        # a scorer that compared the references with themselves would give 0
        assert all(0.5 < p["cer"] <= 1.5 for p in points), [p["cer"] for p in points]
    one = [r for r in curve if r["name"] == "one layer"][0]
    full = [r for r in curve if r["name"] == "tiny mini"][0]
    available = len(SpeechData(tiny_corpus / "train.csv"))
    assert one["parameters"] < full["parameters"]
    assert (one["utterances"], full["utterances"]) == (min(24, available), available)
    saved = json.loads((tmp_path / "race.json").read_text())
    assert saved["curve"] == json.loads(json.dumps(curve))


# ---- optimizers and schedules as contestants (issue 12) ----------------------------------------------------------
def test_optimizer_table_ranks_by_minutes_to_the_strictest_target():
    configs = [race.RaceConfig("adam"), race.RaceConfig("lamb", optimizer="lamb", schedule="cosine",
                                                          learning_rate=1e-2, schedule_steps=300),
               race.RaceConfig("sgd", optimizer="sgd", schedule="constant", learning_rate=1e-3)]
    curve = (_curve("adam", [0.9, 0.5, 0.35, 0.25, 0.19]) + _curve("lamb", [0.8, 0.38, 0.18, 0.15])
             + _curve("sgd", [0.95, 0.7, 0.45]))
    table = race.optimizer_table(curve, configs, targets=(0.4, 0.2))
    assert list(table.name) == ["lamb", "adam", "sgd"] and list(table["rank"]) == [1, 2, 3]
    lamb, adam, sgd = (table.set_index("name").loc[n] for n in ("lamb", "adam", "sgd"))
    assert (lamb["minutes_to_cer_0.4"], lamb["minutes_to_cer_0.2"]) == pytest.approx((2.0, 3.0))
    assert (adam["minutes_to_cer_0.4"], adam["minutes_to_cer_0.2"]) == pytest.approx((3.0, 5.0))
    assert math.isnan(sgd["minutes_to_cer_0.4"]) and math.isnan(sgd["minutes_to_cer_0.2"])  # never reached
    assert sgd.best_cer == pytest.approx(0.45) and lamb.schedule == "cosine" and lamb.learning_rate == 1e-2


def test_best_rates_take_the_lowest_final_cer_and_flag_the_edges():
    configs = race.sweep_contestants({"adam": (1e-4, 1e-3, 1e-2), "sgd": (1e-3, 1e-2)})
    assert [c.schedule for c in configs] == ["constant"] * 5
    final = {"adam, constant, lr 0.0001": 0.8, "adam, constant, lr 0.001": 0.5, "adam, constant, lr 0.01": 0.9,
             "sgd, constant, lr 0.001": 1.0, "sgd, constant, lr 0.01": 1.0}
    loss = {"sgd, constant, lr 0.001": 150.0, "sgd, constant, lr 0.01": 120.0}
    curve = [dict(_curve(name, [1.0, cer])[k], loss=loss.get(name, 50.0)) for name, cer in final.items()
             for k in range(2)]
    best = race.best_rates(curve, configs)
    assert best["adam"]["learning_rate"] == 1e-3 and not best["adam"]["at_edge"]
    assert best["sgd"]["learning_rate"] == 1e-2 and best["sgd"]["at_edge"]  # CER tied at 1.0: the lower loss


def test_optimizer_contestants_cross_optimizers_with_schedules():
    configs = race.optimizer_contestants({"sgd": 3e-4, "adam": 3e-3, "lamb": 1e-2})
    assert configs[0].name.startswith("today") and configs[0].model_config() == race.RaceConfig("x").model_config()
    assert configs[0].train_overrides() == {"optimizer": "adam", "schedule": "anneal", "learning_rate": 1e-3}
    grid = configs[1:]
    assert len(grid) == 9 and (grid[0].optimizer, grid[0].schedule) == ("adam", "anneal")
    assert {(c.optimizer, c.schedule) for c in grid} == {(o, s) for o in ("adam", "lamb", "sgd")
                                                         for s in race.RACE_SCHEDULES}
    assert all(c.learning_rate == {"sgd": 3e-4, "adam": 3e-3, "lamb": 1e-2}[c.optimizer] for c in grid)
    assert len(race.optimizer_contestants({"adam": 1e-3})) == 3  # the tuned rate is today's: no extra run
    assert race.RaceConfig("default").train_overrides() == {"optimizer": "adam", "schedule": "anneal"}


def test_step_based_schedules_get_one_estimated_length_per_model(monkeypatch, tmp_path):
    calls = []

    def fake(cfg, manifest, seconds, **kwargs):
        calls.append(cfg.name)
        return {"steps": int(seconds), "first_seconds": 1.0, "step_seconds": 1.0}

    monkeypatch.setattr(race, "estimate_schedule_steps", fake)
    configs = [race.RaceConfig("a"), race.RaceConfig("b", schedule="cosine"),
               race.RaceConfig("c", optimizer="sgd", schedule="onecycle"),
               race.RaceConfig("d", schedule="cosine", schedule_steps=7)]
    done, probes = race.with_schedule_steps(configs, tmp_path / "train.csv", 120.0)
    assert [c.schedule_steps for c in done] == [None, 120, 120, 7] and calls == ["b"] and len(probes) == 1
    from ds2_helpers.config import ParameterError

    with pytest.raises(ParameterError, match="needs schedule_steps"):
        race.race_one(configs[1], tmp_path / "train.csv", tmp_path / "dev.csv", tmp_path, seconds=1, eval_every=1)


def test_optimizer_chart_draws_the_targets_dashed():
    import matplotlib

    matplotlib.use("Agg")
    configs = [race.RaceConfig("adam"), race.RaceConfig("sgd", optimizer="sgd", schedule="constant")]
    fig = race.optimizer_chart(_curve("adam", [0.9, 0.5]) + _curve("sgd", [0.95, 0.7]), configs)
    ax = fig.axes[0]
    dashed = sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--")
    assert dashed == [0.2, 0.4]
    styles = {line.get_label(): line.get_linestyle() for line in ax.get_lines()}
    assert styles["adam"] == "-" and styles["sgd"] == ":"


def test_augment_contestants_differ_only_in_augmentation():
    from ds2_helpers.config import AugmentConfig

    base, *others = race.augment_contestants()
    assert base.augment is None and all(c.model_config() == base.model_config() for c in others)
    assert [AugmentConfig.of(c.augment).kinds for c in others] == [["speed", "specaugment"],
                                                                 ["speed", "gain", "noise", "specaugment"]]
    assert race.CONTESTANTS["augment"](100) == race.augment_contestants()


def test_final_scores_take_each_contestants_last_point():
    curve = _curve("a", [0.9, 0.5]) + _curve("b", [0.8])
    curve[1].update(final_cer_unseen=0.7, final_wer_unseen=0.9)
    curve[2].update(final_cer_unseen=0.85, final_wer_unseen=1.0)
    table = race.final_scores(curve).set_index("name")
    assert table.loc["a", "final_cer_unseen"] == 0.7 and table.loc["b", "final_cer_unseen"] == 0.85
    assert table.loc["a", "steps"] == 20 and table.loc["b", "minutes"] == pytest.approx(1.0)


@pytest.mark.slow
def test_an_augmented_contestant_trains_and_is_scored_on_extra_manifests(tiny_corpus, tmp_path, monkeypatch):
    from ds2_helpers import augment

    calls = []
    original = augment.augment_features
    monkeypatch.setattr(augment, "augment_features", lambda *a: calls.append(1) or original(*a))
    cfg = race.RaceConfig("augmented", augment="speed,noise,specaugment")
    curve = race.race_one(cfg, tiny_corpus / "train.csv", tiny_corpus / "dev.csv", tmp_path, seconds=0.1,
                          eval_every=60.0, eval_limit=4, batch_size=4, mode="pynative",
                          score={"test": str(tiny_corpus / "test.csv")})
    assert len(curve) == 1 and curve[0]["step"] == 1  # the budget ends after the first step
    assert 0.5 < curve[0]["final_cer_test"] <= 1.5  # one step from scratch: CER near 1 (0 would mean no scoring)
    assert len(calls) == 4  # the one training batch was augmented; the evaluations were not


def test_optimizer_reference_joins_the_sweep_and_the_race(tmp_path):
    """`race --suite optimizers` leaves the sweep in OUT/sweep and the race in OUT: one record of both."""
    import json

    (tmp_path / "sweep").mkdir()
    sweep_curve, race_curve = _curve("adam, constant, lr 0.001", [0.9]), _curve("today", [0.8, 0.3])
    (tmp_path / "sweep" / "race.json").write_text(json.dumps({"machine": {"cores": 2}, "measured": "a",
                                                              "seconds": 180.0, "curve": sweep_curve}))
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps({"seconds": 180.0, "best": {"adam": {"learning_rate": 1e-3}}}))
    (tmp_path / "race.json").write_text(json.dumps({"machine": {"cores": 2}, "measured": "b", "seconds": 300.0,
                                                    "curve": race_curve}))
    ref = race.optimizer_reference(tmp_path)
    assert ref["measured"] == "b" and ref["race"]["curve"] == race_curve and ref["sweep"]["curve"] == sweep_curve
    assert ref["sweep"]["best"]["adam"]["learning_rate"] == 1e-3 and ref["sweep"]["seconds"] == 180.0
    assert json.loads(race.write_optimizer_reference(tmp_path).read_text()) == ref


def test_the_recommendation_compares_the_winner_with_todays_rule():
    configs = [race.RaceConfig("today: adam + anneal, lr 0.001", learning_rate=1e-3),
               race.RaceConfig("lamb + cosine", optimizer="lamb", schedule="cosine", learning_rate=0.01),
               race.RaceConfig("sgd + constant", optimizer="sgd", schedule="constant", learning_rate=0.01)]
    curve = (_curve(configs[0].name, [0.9, 0.5, 0.3, 0.19]) + _curve(configs[1].name, [0.6, 0.35, 0.18])
             + _curve(configs[2].name, [1.0, 1.0]))
    table = race.optimizer_table(curve, configs, targets=(0.4, 0.2))
    assert list(table.name) == [configs[1].name, configs[0].name, configs[2].name]
    text = race.optimizer_recommendation(table)
    assert text.startswith("lamb + cosine reached CER 0.2 after 3.0 min") and "4.0 min for today" in text
    assert "(1.3x sooner)" in text
    today_short = race.optimizer_table(curve[:3] + curve[4:], configs, targets=(0.4, 0.2))  # today: no 0.2
    assert race.optimizer_recommendation(today_short).startswith(
        "lamb + cosine reached CER 0.2 after 3.0 min of training; today: adam + anneal, lr 0.001 did not")
    # no separate `today` run when Adam's tuned rate is today's: adam + anneal at the mini preset's rate stands in
    tuned = [race.RaceConfig("adam + anneal, lr 0.001", learning_rate=1e-3),
             race.RaceConfig("adam + anneal, lr 0.003", learning_rate=3e-3)]
    table = race.optimizer_table(_curve(tuned[1].name, [0.3]) + _curve(tuned[0].name, [0.5]), tuned, (0.4,))
    assert race.todays_row(table)["name"] == tuned[0].name
    assert race.optimizer_recommendation(table).startswith("adam + anneal, lr 0.003 reached CER 0.4 after 1.0 min")
    kept = race.optimizer_table(_curve(configs[0].name, [0.3]) + _curve(configs[1].name, [0.5]), configs[:2], (0.4,))
    assert race.optimizer_recommendation(kept).startswith("keep today's rule")
