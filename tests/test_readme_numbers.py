"""README's measured numbers are the committed reference data's: every figure of the speed table and of the
paragraph after it is recomputed here from data/bench_reference_2core.json at the precision README prints."""

import json
import re

import pytest

from ds2_helpers.paths import repo_path

REF = {r["name"]: r for r in json.loads(repo_path("data", "bench_reference_2core.json").read_text())["results"]}
COURSE = "course: graph, batch 1, 1250-frame padding, Conv2d"
# README row label (start) -> the reference configurations its " / "-separated values come from
ROWS = {
    "course: Graph, batch 1": [COURSE],
    "PyNative mode": ["pynative mode"],
    "no fixed padding": ["no 1250-frame padding (length-sorted)"],
    "**batch 4, sorted**": ["combined: graph, batch 4, sorted, Conv2d"],
    "batch 8 / **batch 16**": ["batch 8", "batch 16"],
    "batch 16 in micro-batches of 4": ["batch 16 in micro-batches of 4"],
    "random instead of sorted": [next(n for n in REF if n.startswith("random batches ("))],
    "1 thread instead of 2": ["1 thread"],
    "float16 mixed precision": ["mixed precision float16 (amp O2)"],
    "our matmul convolution": ["matmul convolution (ours; first steps only)",
                               "matmul conv instead of Conv2d (batch 4; first steps only)"],
    "other models": ["transfer: conv + lower RNN layers frozen", "smaller: 3 x BiLSTM-512"],
}
COLUMNS = {  # column -> value of one configuration
    1: lambda r: r["step_seconds"],
    2: lambda r: r["epoch_hours"],
    3: lambda r: REF[COURSE]["epoch_hours"] / r["epoch_hours"],
    4: lambda r: r["percent_of_floor"],
    5: lambda r: mindspore_percent(r),
    6: lambda r: r["peak_rss_mb"] / 1024,
}


def mindspore_percent(r):
    """% of the floor at MindSpore's own measured matrix-multiply rate (the README's column after the floor)."""
    from ds2_helpers.bench import percent_at_mindspore_rate

    return percent_at_mindspore_rate(r["percent_of_floor"], r["matmul_gflops"], r["mindspore_gflops"])


def table_rows():
    text = repo_path("README.md").read_text()
    section = text.split("## How much faster?", 1)[1].split("\n\n", 3)[2]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()[2:]]


def numbers(cell):
    return re.findall(r"\d+(?:\.\d+)?", cell.replace("**", ""))


def same(written: str, value: float) -> bool:
    decimals = len(written.split(".")[1]) if "." in written else 0
    return f"{value:.{decimals}f}" == written


def assert_quoted(phrase: str, *values: float) -> None:
    """README holds `phrase` with each {} a number, and each number is its value at the precision written."""
    text = " ".join(repo_path("README.md").read_text().split())
    match = re.search(re.escape(phrase).replace(re.escape("{}"), r"(\d+(?:\.\d+)?)"), text)
    assert match, phrase
    for written, value in zip(match.groups(), values, strict=True):
        assert same(written, value), (phrase, written, value)


def test_every_row_of_the_speed_table_is_in_the_reference():
    rows = table_rows()
    matched = set()
    for cells in rows:
        label = next((k for k in ROWS if cells[0].startswith(k)), None)
        if label is None:
            assert "refused" in cells[1], f"README row not in the reference: {cells[0]}"
            continue
        matched.add(label)
        configs = [REF[n] for n in ROWS[label]]
        for col, value in COLUMNS.items():
            written = numbers(cells[col])
            if not written:
                continue
            assert len(written) == len(configs), (cells[0], col, cells[col])
            for w, r in zip(written, configs):
                assert same(w, value(r)), f"{cells[0]}, column {col}: README {w}, reference {value(r):.3f}"
    assert matched == set(ROWS)


B4 = "combined: graph, batch 4, sorted, Conv2d"


def better_matmul():
    """Whose matrix multiply set the reference's floor, as README names it."""
    return "NumPy's" if REF[COURSE]["numpy_gflops"] >= REF[COURSE]["mindspore_gflops"] else "MindSpore's"


@pytest.mark.parametrize("phrase, value", [
    ("The better matrix multiply on that host was " + better_matmul() + ", at {} GFLOP/s",
     lambda: REF[COURSE]["matmul_gflops"]),
    ("so the floor is {} h per epoch", lambda: REF[COURSE]["floor_epoch_hours"]),
    ("MindSpore's own matrix multiply ran at {} GFLOP/s", lambda: REF[COURSE]["mindspore_gflops"]),
    ("reaches {}% of the floor", lambda: REF["batch 16"]["percent_of_floor"]),
    ("of the floor and {}% of MindSpore's floor", lambda: mindspore_percent(REF["batch 16"])),
    ("floor, {}x the course's configuration", lambda: REF[COURSE]["epoch_hours"] / REF["batch 16"]["epoch_hours"]),
    ("the course's configuration is at {}%", lambda: mindspore_percent(REF[COURSE])),
    ("could be more than {}x faster here", lambda: 100 / mindspore_percent(REF[COURSE])),
    ("Batch 16 needs {} GB at once", lambda: REF["batch 16"]["peak_rss_mb"] / 1024),
    ("in micro-batches of 4 the same update took {}x the time",
     lambda: REF["batch 16 in micro-batches of 4"]["step_seconds"] / REF["batch 16"]["step_seconds"]),
    ("the time and {} GB in this run", lambda: REF["batch 16 in micro-batches of 4"]["peak_rss_mb"] / 1024),
    ("({} s against", lambda: REF["1 thread"]["step_seconds"]),
    ("against {} s per step,", lambda: REF[B4]["step_seconds"]),
    ("(batch 4, {}% padding)", lambda: 100 * next(r for n, r in REF.items()
                                                  if n.startswith("random batches ("))["padding_fraction"]),
])
def test_the_paragraphs_quote_the_reference(phrase, value):
    assert_quoted(phrase, value())


def test_the_paragraphs_words_agree_with_the_reference():
    text = " ".join(repo_path("README.md").read_text().split())
    assert ("one thread at batch 4 was no slower than two" in text) == (REF["1 thread"]["step_seconds"]
                                                                        <= REF[B4]["step_seconds"])
    assert "reaches" in text and REF["batch 16"]["percent_of_floor"] > REF[B4]["percent_of_floor"]  # "the best"
    # "the rest of the floor is the gap between the two matrix multiplies": the best is at MindSpore's own rate
    assert ("The rest of the floor is the gap between the two matrix multiplies" in text) == (
        mindspore_percent(REF["batch 16"]) >= 90)


def drift(conv: str):
    import pandas as pd

    frame = pd.read_csv(repo_path("data", "conv_drift_reference_2core.csv"))
    return frame[frame.conv.str.startswith(conv)].set_index("step").step_seconds


@pytest.mark.parametrize("phrase, value", [
    ("(median of steps 2-20: {} s)", lambda: drift("MindSpore Conv2d").loc[2:20].median()),
    ("for {} steps, while", lambda: drift("MindSpore Conv2d").index.max()),
    ("started at {} s with one product for all taps", lambda: drift("matmul conv (ours, one product for all").loc[2:20].median()),
    ("({} s with one per tap)", lambda: drift("matmul conv (ours, one product per tap").loc[2:20].median()),
    ("{} s by step 58 with one product for all taps", lambda: drift("matmul conv (ours, one product for all")[58]),
    ("{} s by step 65 with one per tap", lambda: drift("matmul conv (ours, one product per tap")[65]),
])
def test_the_long_run_paragraph_quotes_the_drift_reference(phrase, value):
    assert_quoted(phrase, value())


def test_the_long_run_paragraphs_words_agree_with_the_drift_reference():
    import numpy as np

    native = drift("MindSpore Conv2d")
    assert_quoted("`Conv2d` held {} s per step", native.loc[2:].median())
    held = native.loc[2:].rolling(5).median().dropna()  # "held": every 5-step median within 5% of the whole run's
    assert (abs(held / native.loc[2:].median() - 1) < 0.05).all(), held.describe()
    for conv in ("matmul conv (ours, one product for all", "matmul conv (ours, one product per tap"):
        steps = drift(conv)
        smooth = steps.loc[2:].rolling(5).median().dropna()
        level = smooth <= 1.1 * steps.loc[2:20].median()
        grew_from = level[level].index.max() + 1  # "grew from about step 30": above its start from there on
        assert 25 <= grew_from <= 35 and np.all(np.diff(smooth.loc[grew_from:]) > -0.3), (conv, grew_from)
    assert "grew from about step 30" in " ".join(repo_path("README.md").read_text().split())


def recipes():
    """The four references of notebook 08, as the README paragraph "What they gain" reads them."""
    import pandas as pd

    from ds2_helpers import race

    load = lambda name: json.loads(repo_path("data", name).read_text())  # noqa: E731
    opt, aug = load("optimizer_reference_2core.json"), load("augment_reference_2core.json")
    prn, dst = load("prune_reference_2core.json"), load("distill_reference_2core.json")
    configs = race.configs_of(opt["race"])
    table = race.optimizer_table(opt["race"]["curve"], configs, targets=(0.4, 0.2)).set_index("name")
    rows = pd.DataFrame(prn["rows"])
    return {"opt": opt, "aug": race.final_scores(aug["curve"]), "aug_seconds": aug["seconds"], "table": table,
            "best": {k: v["learning_rate"] for k, v in opt["sweep"]["best"].items()}, "prune": prn,
            "unstructured": rows[rows.kind == "unstructured"].set_index("sparsity"),
            "structured": rows[rows.kind == "structured"].set_index("hidden_size"),
            "distill": pd.DataFrame(dst["table"]), "distill_seconds": dst["seconds"]}


R = {}


def ref(path):
    """A value of `recipes()` by a path of keys (loaded once)."""
    if not R:
        R.update(recipes())
    value = R
    for key in path:
        value = value.loc[key] if hasattr(value, "loc") else value[key]
    return value


@pytest.mark.parametrize("phrase, value", [
    ("{} min per swept rate", lambda: ref(["opt", "sweep", "seconds"]) / 60),
    ("{} min per contestant): the sweep", lambda: ref(["opt", "race", "seconds"]) / 60),
    ("best rates were Adam {},", lambda: ref(["best", "adam"])),
    ("LAMB {} and SGD", lambda: ref(["best", "lamb"])),
    ("and SGD {}; Adam + anneal", lambda: ref(["best", "sgd"])),
    ("Adam + anneal at 0.003 reached CER {}", lambda: ref(["table", "adam + anneal, lr 0.003", "best_cer"])),
    ("today's Adam + anneal at 1e-3 {};", lambda: ref(["table", "today: adam + anneal, lr 0.001", "best_cer"])),
    ("did worst for Adam ({})", lambda: ref(["table", "adam + cosine, lr 0.003", "best_cer"])),
    ("and SGD ({}). *Augmentation*", lambda: ref(["table", "sgd + cosine, lr 0.01", "best_cer"])),
    ("`augment_reference_2core.json`: {} min each", lambda: ref(["aug_seconds"]) / 60),
    ("unseen voices {} /", lambda: ref(["aug"]).iloc[0].final_cer_test),
    ("unseen voices 0.137 / {} without", lambda: ref(["aug"]).iloc[0].final_cer_unseen),
    ("without, {} /", lambda: ref(["aug"]).iloc[1].final_cer_test),
    ("/ {} with speed + SpecAugment", lambda: ref(["aug"]).iloc[1].final_cer_unseen),
    ("SpecAugment, {} /", lambda: ref(["aug"]).iloc[2].final_cer_test),
    ("/ {} with all four kinds", lambda: ref(["aug"]).iloc[2].final_cer_unseen),
    ("`prune_reference_2core.json`: {} fine-tuning steps", lambda: ref(["prune", "finetune_steps"])),
    ("CER {} dense", lambda: ref(["unstructured", 0.0, "cer"])),
    ("{} at 50% zeros", lambda: ref(["unstructured", 0.5, "cer"])),
    ("{} at 70%", lambda: ref(["unstructured", 0.7, "cer"])),
    ("{} at 90%", lambda: ref(["unstructured", 0.9, "cer"])),
    ("192 ({}% of the parameters)", lambda: 100 * ref(["structured", 96, "parameters"])
     / ref(["unstructured", 0.0, "parameters"])),
    ("parameters): CER {}.", lambda: ref(["structured", 96, "cer"])),
    ("`distill_reference_2core.json`: {} min each", lambda: ref(["distill_seconds"]) / 60),
    ("reached CER {} with CTC alone", lambda: ref(["distill"]).iloc[1].last_cer),
    ("and {} distilled", lambda: ref(["distill"]).iloc[2].last_cer),
    ("(teacher {})", lambda: ref(["distill"]).iloc[0].last_cer),
])
def test_the_recipes_paragraph_quotes_notebook_08s_references(phrase, value):
    assert_quoted(phrase, value())


PROFILE = json.loads(repo_path("data", "profile_reference_2core.json").read_text())


def profiled(name, key, batch=16):
    """A value of the step profile's reference row `name` at `batch`."""
    return next(r[key] for r in PROFILE["rows"] if r["name"] == name and r["batch_size"] == batch)


def profile_mindspore_gflops():
    """MindSpore's matrix-multiply rate in the profile's run."""
    from ds2_helpers.step_profile import mindspore_gflops

    return mindspore_gflops(PROFILE)


def at_mindspore_rate(name):
    """A profile row's % of its floor had MindSpore's matrix multiply set the floor."""
    from ds2_helpers.bench import percent_at_mindspore_rate

    return percent_at_mindspore_rate(profiled(name, "percent_of_floor"), PROFILE["matmul_gflops"],
                                     profile_mindspore_gflops())


WHOLE = "whole step (Trainer.step)"
RNN = "RNN stack, forward + backward"
CONV = "convolution block, forward + backward"
UPDATE = "clip + optimizer update"


def _kept_gb():
    """The RNN stack's gates and states that backward needs, as notebook 07 counts them by hand."""
    from ds2_helpers.config import model_preset
    from ds2_helpers.model import output_lengths

    cfg = model_preset("paper")
    frames = int(output_lengths(int(12.7 * 100) + 1))
    return frames * 16 * 6 * cfg.hidden_size * 4 * 2 * cfg.hidden_layers / 2**30


@pytest.mark.parametrize("phrase, value", [
    ("MindSpore's reached {} GFLOP/s): at batch 16", profile_mindspore_gflops),
    ("the whole step took {} s", lambda: profiled(WHOLE, "step_seconds")),
    ("s ({}% of its floor that day", lambda: profiled(WHOLE, "percent_of_floor")),
    ("of its floor that day, {}% of MindSpore's)", lambda: at_mindspore_rate(WHOLE)),
    ("peaked at {} GB, ", lambda: profiled(WHOLE, "peak_gb")),
    ("{} MB per padded audio second", lambda: profiled(WHOLE, "peak_gb") * 1024 / (16 * 12.71)),
    ("forward + backward took {} s", lambda: profiled(RNN, "step_seconds")),
    ("s ({}% of the step, ", lambda: profiled(RNN, "step_seconds") / profiled(WHOLE, "step_seconds") * 100),
    ("{}% of its own floor", lambda: profiled(RNN, "percent_of_floor")),
    ("of its own floor and {}% of MindSpore's", lambda: at_mindspore_rate(RNN)),
    ("measured with) and {} GB", lambda: profiled(RNN, "memory_gb")),
    ("GB, {}x the gates and states alone", lambda: profiled(RNN, "memory_gb") / _kept_gb()),
    ("that its backward pass needs ({} GB)", _kept_gb),
    ("the convolution block {} s", lambda: profiled(CONV, "step_seconds")),
    ("s ({}% of its floor) and", lambda: profiled(CONV, "percent_of_floor")),
    ("of its floor) and {} GB; the optimizer", lambda: profiled(CONV, "memory_gb")),
    ("the optimizer update {} s", lambda: profiled(UPDATE, "step_seconds")),
    ("s and {} GB; ", lambda: profiled(UPDATE, "memory_gb")),
    ("GB; {} s are in no part", lambda: profiled(WHOLE, "step_seconds") - sum(
        profiled(name, "step_seconds") for name in (RNN, CONV, "dense + CTC loss, forward + backward", UPDATE))),
    ("lowered the peak to {} GB", lambda: profiled(WHOLE + ", recompute each RNN layer", "peak_gb")),
    ("GB at {}x the step time", lambda: profiled(WHOLE + ", recompute each RNN layer", "step_seconds")
     / profiled(WHOLE, "step_seconds")),
    ("block to {} GB at", lambda: profiled(WHOLE + ", recompute the convolution block", "peak_gb")),
    ("GB at {}x. Most of the memory", lambda: profiled(WHOLE + ", recompute the convolution block", "step_seconds")
     / profiled(WHOLE, "step_seconds")),
])
def test_the_step_profile_paragraph_quotes_its_reference(phrase, value):
    assert_quoted(phrase, value())


MICRO = json.loads(repo_path("data", "micro_batch_reference_2core.json").read_text())


def micro(m, key):
    """A value of the micro-batch reference's batch-16 row in micro-batches of `m` (None: the whole batch)."""
    return next(r[key] for r in MICRO["rows"] if r.get("micro_batch") == m and r["batch_size"] == 16)


def _ratio(m):
    return micro(m, "step_seconds") / micro(None, "step_seconds")


@pytest.mark.parametrize("phrase, values", [
    ("at once {} s per step and a {} GB peak", lambda: (micro(None, "step_seconds"), micro(None, "peak_gb"))),
    ("micro-batches of 8, {}x the time and {} GB", lambda: (_ratio(8), micro(8, "peak_gb"))),
    ("of 4, {}x and {} GB", lambda: (_ratio(4), micro(4, "peak_gb"))),
    ("of 2, {}x and {} GB ({} MB per padded audio second)",
     lambda: (_ratio(2), micro(2, "peak_gb"), micro(2, "peak_gb") * 1024 / (16 * 12.71))),
])
def test_the_micro_batch_sentence_quotes_its_reference(phrase, values):
    assert_quoted(phrase, *values())


LAYERWISE = json.loads(repo_path("data", "layerwise_reference_2core.json").read_text())


def layer_row(micro=None, layerwise=False):
    """The layerwise reference's batch-16 whole step: at once, in micro-batches of `micro`, or layer by layer."""
    return next(r for r in LAYERWISE["rows"] if r["batch_size"] == 16 and r.get("micro_batch") == micro
                and bool(r.get("layerwise")) == layerwise)


def _per_padded_second(row):
    return row["peak_gb"] * 1024 / row["audio_seconds_per_step"]


def test_the_layerwise_sentence_quotes_its_reference():
    whole, micro2, layer = layer_row(), layer_row(2), layer_row(layerwise=True)
    assert_quoted("at once {} and {} s per step and a {} GB peak ({} MB per padded audio second)",
                  *sorted(whole["step_seconds_all"]), whole["peak_gb"], _per_padded_second(whole))
    assert_quoted("in micro-batches of 2, {} and {} s and {} GB", *sorted(micro2["step_seconds_all"]), micro2["peak_gb"])
    assert_quoted("layer by layer, {} and {} s and {} GB ({} MB per padded audio second)",
                  *sorted(layer["step_seconds_all"]), layer["peak_gb"], _per_padded_second(layer))
    fastest, slowest = min(whole["step_seconds_all"]), max(whole["step_seconds_all"])
    assert_quoted("exact update: {}-{}x the time of the batch at once",
                  layer["step_seconds"] / slowest, layer["step_seconds"] / fastest)
    assert_quoted("a quarter; {} s in the micro-batch reference above", micro(None, "step_seconds"))
    # "in a fraction of its memory" (the training section): less than half the whole batch's peak
    assert layer["peak_gb"] < whole["peak_gb"] / 2


EXPAND = json.loads(repo_path("data", "expand_reference_2core.json").read_text())


def expand_row(done, key):
    """A value of the batch-16 whole step before (`done` False) or after `model.expand`."""
    return next(r[key] for r in EXPAND["rows"] if r["batch"] == 16 and r["model_expand"] == done)


def test_the_findings_since_the_profile_quote_their_measurements():
    from ds2_helpers import step_profile
    from ds2_helpers.config import model_preset
    from ds2_helpers.model import output_lengths

    paper = model_preset("paper")
    assert_quoted("keeps a workspace of {} H floats per frame",
                  step_profile.lstm_reserve_floats_per_frame(paper.hidden_size, paper.hidden_size) / paper.hidden_size)
    reserve = step_profile.rnn_reserve_bytes(paper, int(output_lengths(1271)), 16)
    assert_quoted("{} GB of the RNN stack's memory at batch 16", reserve / 2**30)
    assert_quoted("at batch 16, {} MB per padded audio second on its own", reserve / 2**20 / (16 * 12.71))
    assert_quoted("at batch 16 went from {} to {} GB at the same speed ({} and {} s per step",
                  expand_row(False, "peak_gb"), expand_row(True, "peak_gb"),
                  expand_row(False, "step_seconds"), expand_row(True, "step_seconds"))


UPDATE_MEMORY = json.loads(repo_path("data", "update_memory_reference_2core.json").read_text())


def update_row(fixed, micro, key):
    """A value of the batch-16 whole step (in micro-batches of `micro`, None: at once) before (`fixed` False) or
    after our global-norm clip and the MulNoNan fold."""
    return next(r[key] for r in UPDATE_MEMORY["rows"]
                if r["batch"] == 16 and r["micro_batch"] == micro and r["own_clip_and_fold"] == fixed)


@pytest.mark.parametrize("phrase, micro", [
    ("whole step at batch 16 went from {} to {} GB ({} and {} s per step)", None),
    ("in micro-batches of 2 from {} to {} GB ({} and {} s;", 2),
])
def test_the_clip_and_fold_sentence_quotes_its_reference(phrase, micro):
    assert_quoted(phrase, update_row(False, micro, "peak_gb"), update_row(True, micro, "peak_gb"),
                  update_row(False, micro, "step_seconds"), update_row(True, micro, "step_seconds"))


def test_the_step_profile_paragraphs_words_agree_with_its_reference():
    from ds2_helpers import step_profile
    from ds2_helpers.config import model_preset
    from ds2_helpers.model import output_lengths

    text = " ".join(repo_path("README.md").read_text().split())
    assert ("oneDNN's LSTM outruns the one large matrix product" in text) == (at_mindspore_rate(RNN) > 100)
    reserve_gb = step_profile.rnn_reserve_bytes(model_preset("paper"), int(output_lengths(1271)), 16) / 2**30
    # "Most of the memory left is the RNN stack's, and most of that is MindSpore's LSTM kernel"
    assert profiled(RNN, "memory_gb") > profiled(WHOLE, "memory_gb") / 2 and reserve_gb > profiled(RNN, "memory_gb") / 2


REHEARSAL = json.loads(repo_path("data", "rehearsal_reference_2core.json").read_text())


def _rehearsal_minutes():
    """Minutes of all the rehearsal's commands together (corpus, plan, both trainings, evaluation, export)."""
    return sum(s["seconds"] for s in REHEARSAL["steps"]) / 60


def _training_peak():
    """The peak memory of the rehearsal's two training commands (killed, resumed)."""
    return max(s["peak_rss_gb"] for s in REHEARSAL["steps"] if s["step"].startswith("train"))


@pytest.mark.parametrize("phrase, value", [
    ("about {} min on 2 cores", _rehearsal_minutes),
    ("reference machine ({} minutes of train audio", lambda: REHEARSAL["corpus"]["train"]["hours"] * 60),
    ("audio, {} steps from scratch", lambda: REHEARSAL["trained_steps"]),
    ("its commands took {} min in all", _rehearsal_minutes),
    ("`plan` printed a peak of {} GB", lambda: REHEARSAL["plan"]["base_gb"]),
    ("GB + {} MB per padded second", lambda: REHEARSAL["plan"]["gb_per_padded_second"] * 1024),
    ("and {} GB available", lambda: REHEARSAL["plan"]["memory_available_gb"]),
    ("batches of up to {} padded seconds", lambda: REHEARSAL["batch_seconds"]),
    ("(its line gives {} GB for the largest batch", lambda: REHEARSAL["plan"]["peak_gb"]),
    ("largest batch, {} padded seconds)", lambda: REHEARSAL["plan"]["largest_batch"]["padded_seconds"]),
    ("training peaked at {} GB", _training_peak),
    ("with a median step of {} s", lambda: REHEARSAL["step_seconds_median"]),
    ("its checkpoint at step {} and resumed there", lambda: REHEARSAL["resumed_at_global_step"]),
    ("the {} longest test utterances", lambda: len(REHEARSAL["evaluated_seconds"])),
    ("longest test utterances ({} s", lambda: min(REHEARSAL["evaluated_seconds"])),
    ("s to {} s) were evaluated", lambda: max(REHEARSAL["evaluated_seconds"])),
    ("were evaluated at {} GB", lambda: REHEARSAL["evaluate_peak_rss_gb"]),
])
def test_the_rehearsal_paragraph_quotes_its_reference(phrase, value):
    assert_quoted(phrase, value())


def test_the_rehearsal_corpus_sentence_agrees_with_its_reference():
    import math

    train, test = REHEARSAL["corpus"]["train"], REHEARSAL["corpus"]["test"]
    assert_quoted("utterances of {}-{} s, mean about {} s", 1, 25, train["mean"])
    assert math.floor(train["min"]) == 1 and math.ceil(train["max"]) == 25  # "utterances of 1-25 s"
    assert 30 <= test["max"] <= 35  # "its test split includes 30-35 s utterances"
    assert "its test split includes 30-35 s utterances" in " ".join(repo_path("README.md").read_text().split())


def test_the_rehearsal_paragraphs_words_agree_with_its_reference():
    text = " ".join(repo_path("README.md").read_text().split())
    assert REHEARSAL["killed_after_checkpoints"] == [REHEARSAL["resumed_at_global_step"]]
    assert REHEARSAL["export_ok"] and ("dynamic time axis (any length)" in text) == (REHEARSAL["export_frames"] is None)
    # "training peaked at ..." within what plan's line allowed for the batch it chose
    assert _training_peak() <= REHEARSAL["plan"]["peak_gb"]


MSRUN = json.loads(repo_path("data", "msrun_reference_2core.json").read_text())


def test_the_data_parallel_sentence_quotes_its_reference():
    speedup = {mode: next(r["speedup"] for r in MSRUN[mode] if r["workers"] == 2) for mode in ("graph", "pynative")}
    assert_quoted("{}x in Graph mode and {}x in PyNative mode", speedup["graph"], speedup["pynative"])
    two = next(r for r in MSRUN["graph"] if r["workers"] == 2)
    assert two["threads_each"] == 1 and two["global_batch"] == 16  # "2 workers with 1 thread each", batch 8 each
    assert max(speedup.values()) < 1.2  # "i.e. no gain"


RACE = json.loads(repo_path("data", "race_reference_2core.json").read_text())


def test_the_race_paragraph_quotes_each_contestants_last_evaluation():
    last = {}
    for row in RACE["curve"]:
        last[row["name"]] = row
    mini, one, narrow, half = (last[c["name"]] for c in RACE["configs"])
    assert_quoted("(2 x BiLSTM-192) reached CER {};", mini["cer"])
    assert_quoted("but ended at {}; 2 x BiLSTM-96", one["cer"])
    assert_quoted("2 x BiLSTM-96 ended worst ({});", narrow["cer"])
    assert_quoted("ran the most steps, over more passes of its data, and ended best ({})", half["cer"])
    assert narrow["cer"] == max(r["cer"] for r in last.values()) and half["cer"] == min(r["cer"] for r in last.values())
    assert half["step"] == max(r["step"] for r in last.values())
    assert half["epoch"] > max(r["epoch"] for r in (mini, one, narrow))


def test_the_race_paragraphs_other_figures_agree_with_its_reference():
    from ds2_helpers import race

    assert_quoted("`data/race_reference_2core.json`, {} minutes each", RACE["seconds"] / 60)
    assert_quoted("stopped none of them within {} minutes", RACE["seconds"] / 60)
    names = [c["name"] for c in RACE["configs"]]
    assert not any(race.early_stop(RACE["curve"], n, patience=3, min_delta=0.01)["stopped"] for n in names)
    half = RACE["configs"][3]
    assert_quoted("half the data (the first {} rows of the duration-sorted", half["limit"])
    # "1 x BiLSTM-192 was ahead early (CER 0.4 a minute sooner)"
    first = {n: min((r["train_seconds"] for r in RACE["curve"] if r["name"] == n and r["cer"] <= 0.4), default=None)
             for n in names[:2]}
    assert round((first[names[0]] - first[names[1]]) / 60) == 1


def _rates(library: str) -> list[float]:
    """Every matrix-multiply rate of `library` ("numpy" or "mindspore") in the committed references."""
    found = []

    def walk(obj, key=""):
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, k)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, key)
        elif isinstance(obj, (int, float)) and key in (library, f"{library}_gflops"):
            found.append(float(obj))
    for path in repo_path("data").glob("*_reference_2core.json"):
        walk(json.loads(path.read_text()))
    return found


def test_the_cautions_quote_the_references():
    ms, np_ = _rates("mindspore"), _rates("numpy")
    assert len(ms) >= 4 and len(np_) >= 4  # several references, measured on different days
    assert_quoted("saw MindSpore's matrix multiply at {}-{} GFLOP/s and NumPy's at {}-{}", min(ms), max(ms),
                  min(np_), max(np_))
    steps = sorted(LAYERWISE["rows"][0]["step_seconds_all"])
    assert_quoted("(batch 16 at once: {} and {} s in `layerwise_reference_2core.json`)", *steps)
    assert 0.2 < max(steps) / min(steps) - 1 < 0.3  # "differ by a quarter"


def test_the_feature_cache_and_epoch_figures():
    from ds2_helpers.bench import EPOCH_AUDIO_HOURS
    from ds2_helpers.plan import librispeech_disk

    assert_quoted("train-clean-100's would take about {} GB", librispeech_disk()["feature_cache"])
    assert_quoted("epoch of train-clean-100 ({} h of audio)", EPOCH_AUDIO_HOURS)


def test_the_mini_corpus_paragraph_quotes_its_measured_build():
    from ds2_helpers.setup_check import reference

    mini = reference()["mini_corpus"]
    text = " ".join(repo_path("README.md").read_text().split())
    assert "synthesises about an hour of speech" in text and 0.75 <= mini["audio_hours"] <= 1.25
    assert_quoted("It builds in about {} seconds on 2 cores", mini["build_s"])


def test_the_prune_and_setup_figures():
    from ds2_helpers.config import model_preset
    from ds2_helpers.model import architecture_table

    prune = json.loads(repo_path("data", "prune_reference_2core.json").read_text())["rows"]
    zeros = [r for r in prune if r["kind"] == "unstructured"]
    for key in ("step_ms", "inference_ms"):  # "with step and inference times unchanged by the zeros"
        times = [r[key] for r in zeros]
        assert max(times) / min(times) < 1.15, (key, times)
    assert_quoted("parameters ({} M for `paper`)", architecture_table(model_preset("paper"))["parameters"].sum() / 1e6)
    timed = {len(r["step_seconds_all"]) for r in REF.values() if r.get("step_seconds_all")}  # failed rows: none
    assert len(timed) == 1
    assert_quoted("12.7 s utterances ({} timed steps per configuration", timed.pop())
