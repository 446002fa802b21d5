"""CLI commands that measure: training and inference speed (`bench`, and its child-process commands), oneDNN's
instruction-set cap, races to a CER, pruning and distillation (notebooks 06-08)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ds2_helpers.atomic import check_new
from ds2_helpers.cli import at_least, non_negative, positive
from ds2_helpers.config import OPTIMIZERS, ParameterError
from ds2_helpers.race import RACE_SCHEDULES
from ds2_helpers.schedules import SCHEDULES


def cmd_bench_one(args: argparse.Namespace) -> int:
    """Child process of `bench`: time one configuration and print its result as one JSON line."""
    import json

    from ds2_helpers.bench import BenchConfig, run_one

    cfg = BenchConfig(**json.loads(args.config))
    print(json.dumps(run_one(cfg, steps=args.steps, warmup=args.warmup)), flush=True)
    return 0


def cmd_profile_one(args: argparse.Namespace) -> int:
    """Child process of `bench --profile`: one part of a training step, its result as one JSON line."""
    import json

    from ds2_helpers.step_profile import PartConfig, run_part

    print(json.dumps(run_part(PartConfig(**json.loads(args.config)), steps=args.steps, warmup=args.warmup)),
          flush=True)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure the speed experiments side by side; JSON, CSV and a bar chart in --out."""
    from ds2_helpers.bench import Suite, write_results
    from ds2_helpers.experiments import experiments

    if (args.micro_batches or args.whole_only or args.layerwise) and not args.profile:
        raise ParameterError("--micro-batches, --layerwise and --whole-only go with --profile (e.g. bench --profile --whole-only "
                             "--batch-sizes 16 --micro-batches 2 4 8)")
    stem = "profile" if args.profile else "inference" if args.inference else "results"
    check_new(Path(args.out) / f"{stem}.json", overwrite=args.overwrite, what="an earlier measurement")
    if args.profile:
        from ds2_helpers import bench, step_profile

        batches = tuple(args.batch_sizes or ((1, 2) if args.quick else (1, 16)))
        preset = "mini" if args.quick else "paper"
        recompute = () if args.quick or args.whole_only else (("conv",), ("rnn",))
        profile = step_profile.run(preset, batches, 2.0 if args.quick else bench.MEAN_SECONDS,
                                   recompute=recompute, micro_batches=tuple(args.micro_batches or ()),
                                   layerwise=args.layerwise, parts=not args.whole_only, steps=args.steps or 2)
        print(step_profile.table(profile).to_string(index=False))
        files = step_profile.write(profile, args.out)
        print("wrote", ", ".join(str(p) for p in files.values()))
        return 0
    if args.inference:
        from ds2_helpers import inference_bench

        configs = [c for c in inference_bench.suite(args.presets, quick=args.quick)
                   if not args.only or any(word in c.name for word in args.only)]
        run = inference_bench.run_suite(configs)
        print(inference_bench.table(run).to_string(index=False))
        files = inference_bench.write(run, args.out)
        print("wrote", ", ".join(str(p) for p in files.values()))
        return 0
    if args.demo:
        from ds2_helpers.bench import load_reference
        from ds2_helpers.experiments import demo
        from ds2_helpers.paths import data_dir

        configs = demo(load_reference(data_dir() / "bench_reference_2core.json"),
                       profile=load_reference(data_dir() / "profile_reference_2core.json"))
    else:
        configs = experiments(quick=args.quick, only=args.only)
    if args.device != "CPU":
        from dataclasses import replace

        configs = [replace(c, device=args.device) for c in configs]
    suite = Suite(configs, steps=args.steps or (2 if args.quick else 1 if args.demo else 3), warmup=1)
    files = write_results(suite.run(), args.out)
    print("wrote", ", ".join(str(p) for p in files.values()))
    return 0


def cmd_onednn(args: argparse.Namespace) -> int:
    """Training steps and oneDNN's per-primitive times with and without the AVX2 cap (ds2_helpers.onednn)."""
    import pandas as pd

    from ds2_helpers.onednn import measure

    check_new(args.out, overwrite=args.overwrite, what="an earlier measurement")
    result = measure(args.out)
    print(pd.DataFrame(result["steps"]).to_string(index=False))
    print(pd.DataFrame(result["inference"]).to_string(index=False))
    print(pd.DataFrame(result["primitives"]).head(12).to_string(index=False))
    print(f"wrote {args.out}")
    return 0


def cmd_race(args: argparse.Namespace) -> int:
    """Train contestants for the same time; CER curves in --out. Suites: `models` (the mini model vs smaller
    ones and less data), `augment` (the mini model without and with data augmentation), `lr-sweep` (each
    optimizer at a few constant rates), `optimizers` (each optimizer with each schedule at its swept rate; runs the
    sweep first into --out/sweep unless --rates gives the rates). `--score NAME=MANIFEST`: each contestant's CER
    on that whole manifest once its budget is spent."""
    import pandas as pd

    from ds2_helpers import race
    from ds2_helpers.atomic import atomic_savefig
    from ds2_helpers.dataset import SpeechData

    score = {}
    for item in args.score or []:
        name, sep, manifest = item.partition("=")
        if not sep or not name or not Path(manifest).is_file():
            raise ParameterError(f"--score {item!r}: give NAME=MANIFEST with an existing manifest, e.g. "
                                 "unseen=corpora/unseen/test.csv (`minicorpus --unseen-voices --out corpora/unseen`)")
        score[name] = manifest

    def pick(configs, name=lambda c: c.name):
        chosen = [c for c in configs if any(w.lower() in name(c).lower() for w in args.only)] if args.only else configs
        if not chosen:
            raise ParameterError(f"--only {' '.join(args.only)}: no contestant's name holds these words; the "
                                 f"{args.suite} suite has: " + "; ".join(name(c) for c in configs))
        return chosen

    common = dict(eval_limit=args.eval_limit, mode=args.mode, progress=True, score=score)
    out = Path(args.out)
    check_new(out / "race.json", overwrite=args.overwrite, what="an earlier race")
    if args.suite == "lr-sweep" and args.only:
        raise ParameterError("--only does not apply to --suite lr-sweep: it sweeps every optimizer")
    if args.suite == "optimizers" and not args.rates:  # the sweep comes first: its folder and --only checked now
        check_new(out / "sweep" / "race.json", overwrite=args.overwrite, what="an earlier sweep")
        if args.only:  # names before the sweep: each optimizer at a stand-in rate (a word naming a rate passes)
            stand_in = race.optimizer_contestants({o: 1.0 for o in OPTIMIZERS}, args.schedules, today=0.5)
            if not any(_number(w) for w in args.only):
                pick(stand_in, name=lambda c: c.name.split(", lr ")[0])
    if args.suite in race.CONTESTANTS:
        configs = pick(race.CONTESTANTS[args.suite](len(SpeechData(args.train))))
    else:
        rates = dict(args.rates or [])
        if args.suite == "lr-sweep" or not rates:
            sweep_out = out if args.suite == "lr-sweep" else out / "sweep"
            minutes = args.minutes if args.suite == "lr-sweep" else args.sweep_minutes
            print(f"learning-rate sweep: {minutes:g} min per rate, constant schedule -> {sweep_out}", flush=True)
            best = race.lr_sweep(args.train, args.eval, sweep_out, seconds=minutes * 60, **common)
            print(pd.DataFrame(best).T.to_string())
            for opt, row in best.items():
                if row["at_edge"]:
                    print(f"warning: {opt}'s best rate {row['learning_rate']:g} is an end of the rates tried "
                          f"{row['tried']}: the optimum may lie outside them (race.SWEEP_RATES)", file=sys.stderr)
            if args.suite == "lr-sweep":
                print(f"wrote {sweep_out / 'race.json'} and sweep.json")
                return 0
            rates = {opt: row["learning_rate"] for opt, row in best.items()}
        configs = pick(race.optimizer_contestants(rates, args.schedules))
        if args.schedule_steps:
            from dataclasses import replace

            from ds2_helpers.schedules import is_step_based

            configs = [replace(c, schedule_steps=args.schedule_steps) if is_step_based(c.schedule) else c
                       for c in configs]
    # step-based schedules get their length here, so the table below shows it (run would estimate it too)
    configs, probes = race.with_schedule_steps(configs, args.train, args.minutes * 60, mode=args.mode)
    curve = race.run(configs, args.train, args.eval, out, seconds=args.minutes * 60, eval_every=args.eval_every,
                     extra={"suite": args.suite, **({"schedule_probes": probes} if probes else {})}, **common)
    if args.suite in race.CONTESTANTS:
        print(race.time_to_target(curve, args.targets).to_string(index=False))
        atomic_savefig(race.curve_chart(curve), out / "race.png", dpi=120)
    else:
        print(race.optimizer_table(curve, configs, args.targets).to_string(index=False))
        atomic_savefig(race.optimizer_chart(curve, configs, thresholds=args.targets), out / "race.png", dpi=120)
        if not args.rates:  # the sweep ran first: sweep and race in one file, notebook 08's reference format
            print(f"wrote {race.write_optimizer_reference(out)} (the sweep and the race)")
    if score:
        print(race.final_scores(curve).to_string(index=False))
    print(f"wrote {out / 'race.json'} and race.png")
    return 0


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def optimizer_rate(text: str) -> tuple[str, float]:
    """argparse type: `OPTIMIZER=RATE` (e.g. `adam=1e-3`), the optimizer one of OPTIMIZERS, the rate above 0."""
    name, sep, value = text.partition("=")
    if not sep or name not in OPTIMIZERS:
        raise argparse.ArgumentTypeError(f"{text!r}: write OPTIMIZER=RATE with OPTIMIZER one of "
                                         f"{', '.join(OPTIMIZERS)} (e.g. adam=1e-3)")
    return name, positive(value)


def cmd_prune(args: argparse.Namespace) -> int:
    """Magnitude-prune a checkpoint (or drop LSTM units: --structured), optionally fine-tune, write a checkpoint."""
    from ds2_helpers.prune import prune_checkpoint

    from ds2_helpers.checkpoint import read

    read(args.checkpoint)  # a missing, unreadable or folder path fails here, naming the fix
    check_new(args.out, overwrite=args.overwrite, what="a checkpoint")
    if args.manifest and not Path(args.manifest).is_file():
        raise FileNotFoundError(2, "No such file or directory", args.manifest)
    report = prune_checkpoint(args.checkpoint, args.out, sparsity=args.sparsity, keep_units=args.keep_units,
                              structured=args.structured, preset=args.preset, finetune_steps=args.finetune_steps,
                              manifest=args.manifest, lr=args.lr, batch_size=args.batch_size, mode=args.mode)
    if report["kind"] == "structured":
        what = f"hidden units {report['hidden_size_before']} -> {report['hidden_size']} per RNN layer"
    else:
        low, high = f"{min(report['zero_fraction'].values()):.1%}", f"{max(report['zero_fraction'].values()):.1%}"
        what = f"{low if low == high else f'{low} to {high}'} of every RNN/dense weight matrix zero"
    tuned = f", fine-tuned {report['finetune_steps']} steps" if args.finetune_steps else ""
    print(f"{report['kind']} pruning: {what}{tuned}; {report['nonzero']:,} of {report['parameters']:,} weights "
          f"non-zero -> {report['path']}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    """A narrow student distilled from a teacher vs the same student with CTC alone, the same training time."""
    from ds2_helpers import race
    from ds2_helpers.distill import check_distillation, compare, load_teacher

    check_distillation(args.alpha, args.temperature)
    if not Path(args.teacher).exists():
        raise FileNotFoundError(2, "No such file or directory (--teacher)", args.teacher)
    for path, what in ((args.train, "--train"), (args.eval, "--eval")):
        if not Path(path).is_file():
            raise FileNotFoundError(2, f"No such file or directory ({what})", path)
    load_teacher(args.teacher)  # a folder or unreadable file fails now, not after a student's minutes of training
    check_new(Path(args.out) / "race.json", overwrite=args.overwrite, what="an earlier comparison")
    curve, table = compare(args.teacher, args.train, args.eval, args.out, seconds=args.minutes * 60,
                           eval_every=args.eval_every, hidden_size=args.hidden_size, hidden_layers=args.hidden_layers,
                           alpha=args.alpha, temperature=args.temperature, eval_limit=args.eval_limit,
                           batch_size=args.batch_size, mode=args.mode)
    from ds2_helpers.atomic import atomic_savefig, atomic_write_text

    atomic_write_text(Path(args.out) / "distill.csv", table.to_csv(index=False))
    print(table.to_string(index=False))
    atomic_savefig(race.curve_chart(curve, "Distilled vs CTC-only student, same training time"),
                   Path(args.out) / "distill.png", dpi=120)
    print(f"wrote {Path(args.out) / 'race.json'}, distill.csv and distill.png")
    return 0


def add_commands(sub) -> None:
    """Register the measuring commands on the top-level parser."""
    p = sub.add_parser("bench", help="time training (notebook 07) or inference (--inference, notebook 06) "
                                     "configurations side by side")
    p.add_argument("--quick", action="store_true", help="small shapes, few steps (CI)")
    p.add_argument("--demo", action="store_true",
                   help="notebook 07's default: the paper model, 12.7 s utterances, the four configurations that answer "
                        "the course's question, one timed step each (about 10 minutes on 2 cores)")
    p.add_argument("--device", choices=["CPU", "GPU", "Ascend"], default="CPU",
                   help="train on this MindSpore device (GPU/Ascend need MindSpore's wheel for them): measures on a "
                        "GPU server what notebook 07 can only project")
    p.add_argument("--inference", action="store_true",
                   help="real-time factor of batch-1 (graph, PyNative, MindIR) and evaluate-sized inference against "
                        "the machine's roofline, instead of training steps")
    p.add_argument("--presets", nargs="+", choices=["paper", "mini"], default=["paper", "mini"],
                   help="with --inference: the models to measure")
    p.add_argument("--profile", action="store_true",
                   help="where a training step's time and memory go: each part of the network (convolutions, RNN "
                        "stack, dense + CTC, optimizer), forward and backward, in its own process, beside its FLOP "
                        "floor and the whole step, which is also run with Cell.recompute on the convolutions and on the RNN layers "
                        "(paper model, 12.7 s utterances, about 25 minutes on 2 cores; --quick: mini, 2 s, no recompute)")
    p.add_argument("--batch-sizes", type=at_least(1), nargs="+", help="with --profile: default 1 16 (--quick: 1 2)")
    p.add_argument("--micro-batches", type=at_least(1), nargs="+", metavar="M",
                   help="with --profile: also the whole step at the largest batch run in micro-batches of M "
                        "utterances (gradient accumulation: train --micro-batch)")
    p.add_argument("--layerwise", action="store_true",
                   help="with --profile: also the whole step at the largest batch with its backward pass one layer "
                        "at a time (train --layerwise)")
    p.add_argument("--whole-only", action="store_true",
                   help="with --profile: only whole steps (no parts, no recompute): e.g. --batch-sizes 16 "
                        "--micro-batches 2 4 8 compares gradient accumulation with the whole batch")
    p.add_argument("--only", nargs="*", help="run only experiments whose name contains one of these words")
    p.add_argument("--steps", type=at_least(1))
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("bench-one")  # internal: no help, so --help does not list it
    p.add_argument("config")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.set_defaults(func=cmd_bench_one)
    p = sub.add_parser("profile-one")  # internal
    p.add_argument("config")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.set_defaults(func=cmd_profile_one)

    p = sub.add_parser("onednn", help="measure oneDNN's AVX2 cap against its AVX-512 kernels (notebook 07)")
    p.add_argument("--out", default="runs/onednn.json")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    p.set_defaults(func=cmd_onednn)

    p = sub.add_parser("race", help="time to CER: mini model vs smaller models and less data, with and without "
                       "augmentation, or optimizers and learning-rate schedules (notebook 07)")
    p.add_argument("--suite", choices=["models", "augment", "optimizers", "lr-sweep"], default="models",
                   help="models (default): the mini model, smaller ones, half the data; augment: the mini model "
                        "without and with data augmentation (train --augment); lr-sweep: each optimizer "
                        "at a few constant rates (race.SWEEP_RATES) for --minutes; optimizers: each optimizer with "
                        "each of --schedules at its swept rate (sweeps first unless --rates)")
    p.add_argument("--rates", type=optimizer_rate, nargs="+", metavar="OPTIMIZER=RATE",
                   help="--suite optimizers: the tuned rates (e.g. adam=1e-3 lamb=3e-3 sgd=3e-4) instead of a sweep")
    p.add_argument("--sweep-minutes", type=positive, default=4.0,
                   help="--suite optimizers without --rates: training minutes per swept rate (long enough for "
                        "the CER to leave 1.0: see the curves in data/race_reference_2core.json)")
    p.add_argument("--schedules", choices=SCHEDULES, nargs="+", default=list(RACE_SCHEDULES),
                   help="--suite optimizers: the schedules each optimizer races with")
    p.add_argument("--schedule-steps", type=at_least(1),
                   help="length of the cosine/onecycle schedules in steps (default: estimated from --minutes and "
                        "a few timed steps, race.estimate_schedule_steps)")
    p.add_argument("--train", required=True, help="training manifest (the mini corpus's train.csv)")
    p.add_argument("--eval", required=True, help="held-out manifest (the mini corpus's dev.csv)")
    p.add_argument("--minutes", type=positive, default=8.0, help="training time per contestant")
    p.add_argument("--eval-every", type=positive, default=60.0, help="seconds of training between CER points")
    p.add_argument("--eval-limit", type=at_least(1), default=64, help="held-out utterances per CER point")
    p.add_argument("--targets", type=positive, nargs="+", default=[0.6, 0.4, 0.2])
    p.add_argument("--mode", choices=["graph", "pynative"], default="graph")
    p.add_argument("--only", nargs="*")
    p.add_argument("--score", action="append", metavar="NAME=MANIFEST",
                   help="after each contestant's budget, CER on this whole manifest (repeatable), e.g. "
                        "--score test=corpora/mini/test.csv --score unseen=corpora/unseen/test.csv")
    p.add_argument("--out", default="runs/race")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    p.set_defaults(func=cmd_race)

    p = sub.add_parser("prune", help="magnitude-prune a checkpoint or drop LSTM units (--structured); "
                       "the result loads like any checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="the pruned checkpoint (.ckpt)")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    p.add_argument("--sparsity", type=non_negative,
                   help="share of each RNN/dense weight matrix to zero (0.5 = half; smallest |w| first); "
                        "with --structured: the share of hidden units to remove")
    p.add_argument("--structured", action="store_true",
                   help="remove whole hidden units (a narrower, really smaller network) instead of zeroing weights")
    p.add_argument("--keep-units", type=at_least(1), help="with --structured: hidden units to keep per RNN layer")
    p.add_argument("--preset", choices=["paper", "mini"], help="only for checkpoints that do not record it")
    p.add_argument("--finetune-steps", type=at_least(0), default=0,
                   help="train the pruned model this many steps first (zeroed weights stay zero)")
    p.add_argument("--manifest", help="training manifest for --finetune-steps")
    p.add_argument("--lr", type=positive, default=3e-4, help="fine-tuning learning rate")
    p.add_argument("--batch-size", type=at_least(1), default=16)
    p.add_argument("--mode", choices=["graph", "pynative"], default="graph")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("distill", help="a narrow student distilled from a teacher vs the same student with CTC "
                       "alone, the same training time each")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (e.g. data/mini_pretrained.ckpt)")
    p.add_argument("--train", required=True, help="training manifest")
    p.add_argument("--eval", required=True, help="held-out manifest (CER points and the final table)")
    p.add_argument("--hidden-size", type=at_least(1), default=96)
    p.add_argument("--hidden-layers", type=at_least(1), default=2)
    p.add_argument("--alpha", type=non_negative, default=0.5, help="weight of CTC (1 - alpha: KL to the teacher)")
    p.add_argument("--temperature", type=positive, default=2.0)
    p.add_argument("--minutes", type=positive, default=8.0, help="training time per student")
    p.add_argument("--eval-every", type=positive, default=60.0, help="seconds of training between CER points")
    p.add_argument("--eval-limit", type=at_least(1), default=64, help="held-out utterances per CER point")
    p.add_argument("--batch-size", type=at_least(1), default=16)
    p.add_argument("--mode", choices=["graph", "pynative"], default="graph")
    p.add_argument("--out", default="runs/distill")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    p.set_defaults(func=cmd_distill)
