"""CLI commands that need MindSpore: train, pretrained checkpoint download/convert (evaluation and export join here)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ds2_helpers.cli import at_least, non_negative, positive
from ds2_helpers.config import AUGMENT_KINDS, OPTIMIZERS, AugmentConfig, ModelConfig, ParameterError, TrainConfig
from ds2_helpers.race import RACE_SCHEDULES
from ds2_helpers.schedules import DEFAULT_WARMUP_FRACTION, SCHEDULES


def augment_kinds(text: str) -> AugmentConfig:
    """argparse type: a comma-separated list of augmentation kinds ("none" or "": off) -> AugmentConfig."""
    try:
        return AugmentConfig.of("" if text.strip().lower() == "none" else text)
    except ParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("augment ")) from None


augment_kinds.__name__ = "augmentation list"


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or fine-tune) on a manifest; resumable; runs unchanged under msrun."""
    from ds2_helpers import run_folder
    from ds2_helpers.config import SpectConfig, model_preset, to_dict, train_preset
    from ds2_helpers.dataset import SpeechData
    from ds2_helpers.train import Trainer, write_run_config

    overrides = {k: v for k, v in {
        "batch_size": args.batch_size, "batch_seconds": args.batch_seconds, "epochs": args.epochs,
        "learning_rate": args.lr, "mode": args.mode, "seed": args.seed, "save_every": args.save_every,
        "keep_last": args.keep_last, "freeze_conv": args.freeze_conv or None,
        "freeze_rnn_layers": args.freeze_rnn_layers, "dynamic_shapes": False if args.static_shapes else None,
        "release_memory": args.release_memory, "optimizer": args.optimizer, "schedule": args.schedule,
        "warmup_steps": args.warmup_steps, "warmup_fraction": args.warmup_fraction,
        "schedule_steps": args.schedule_steps, "augment": args.augment, "micro_batch": args.micro_batch,
        "layerwise": args.layerwise or None}.items()
        if v is not None}
    train_cfg = train_preset(args.preset, **overrides)
    model_cfg = model_preset(args.preset)
    if args.threads:  # several workers on one machine: share its cores instead of all fighting for all of them
        import mindspore as ms

        ms.set_context(runtime_num_threads=args.threads)
    spect = SpectConfig(window=args.window, periodic_window=args.periodic_window)
    out = Path(args.out)
    replaced = run_folder.check_out(out, resume=args.resume, overwrite=args.overwrite)
    _check_outputs(args)
    for path in run_folder.remove_stale_temps(out):
        print(f"removed {path.name}, left by an interrupted checkpoint write")
    # No feature cache in RAM (train-clean-100's spectrograms are ~23 GB); --feature-cache keeps them on disk.
    data = SpeechData(args.manifest, spect, max_duration=args.max_duration, limit=args.limit,
                      cache=args.feature_cache or False)
    for msg in data.skipped:
        print(f"skipped: {msg}")
    manifest = run_folder.manifest_fingerprint(args.manifest)
    data_info = {"manifest_path": manifest["path"], "manifest_sha256": manifest["sha256"],
                 "max_duration": args.max_duration, "limit": args.limit, "pad_multiple": args.pad_multiple}
    if args.pretrained and not Path(args.pretrained).is_file():
        raise run_folder.RunFolderError(f"{args.pretrained}: no such checkpoint for --pretrained; download it "
                                        "(`python -m ds2_helpers pretrained download`) or check the path")
    if args.preflight and int(os.environ.get("MS_WORKER_NUM", "1")) <= 1:
        _preflight(args, train_cfg, spect, data)
    run_folder.remove(replaced)  # only now: every argument has been checked
    for path in replaced:
        print(f"{'--overwrite: ' if args.overwrite else ''}removed {path} (earlier run)")
    had_checkpoints = args.resume and _has_checkpoint(out)
    trainer = Trainer(model_cfg, train_cfg, out, spect=spect, conv_impl=args.conv,
                      pretrained=None if had_checkpoints else args.pretrained)
    trainer.data_info = data_info
    changes: list[str] = []
    resumed = args.resume and trainer.resume()
    if had_checkpoints and not resumed:
        raise run_folder.RunFolderError(f"{out}: none of its checkpoints can be read (set aside as *.corrupt); "
                                        "restore one, or start again with --overwrite (and --pretrained)")
    if args.resume and not had_checkpoints:
        print(f"--resume: no checkpoint in {out} yet, starting from "
              f"{args.pretrained or 'random weights'}")
    if resumed:
        s = trainer.state
        now = run_folder.identity(to_dict(model_cfg), to_dict(train_cfg), to_dict(spect), data_info)
        changes = run_folder.check_resume(trainer.resumed_meta, now, trainer.resumed_from, allow=args.allow_changes)
        for change in changes:
            print(f"warning: resuming with a change (--allow-changes): {change}", file=sys.stderr)
        print(f"resuming at epoch {s.epoch + 1}, step {s.step_in_epoch} of that epoch (global step {s.global_step}) "
              f"from {trainer.resumed_from.name}")
    if trainer.rank == 0:
        write_run_config(out, model=model_cfg, train=train_cfg, spect=spect, data=data_info,
                         event="resume" if trainer.resumed_from else "start",
                         resumed_from=str(trainer.resumed_from) if trainer.resumed_from else None, changes=changes)
    if trainer.rank == 0:
        batching = (f"batches of up to {train_cfg.batch_seconds:g} padded seconds (at most {train_cfg.batch_size})"
                    if train_cfg.batch_seconds else f"batch {train_cfg.batch_size}")
        if train_cfg.micro_batch:
            batching += f", run {train_cfg.micro_batch} utterances at a time (one update per batch)"
        if train_cfg.layerwise:
            batching += ", backward one layer at a time"
        total = data.durations.sum()
        print(f"training {args.preset} on {len(data)} utterances "
              f"({f'{total / 3600:.2f} h' if total >= 360 else f'{total / 60:.1f} min'} of audio), "
              f"{batching}, {train_cfg.epochs} epoch(s), {train_cfg.mode} mode, "
              f"augmentation: {', '.join(train_cfg.augment.kinds) or 'none'}, "
              f"rank {trainer.rank}/{trainer.world} -> {out}", flush=True)
    trainer.fit(data, max_steps=args.max_steps, pad_multiple=args.pad_multiple, checkpoint_at_stop=True)
    if trainer.world > 1:
        trainer.export_weights(out / f"final.rank{trainer.rank}.ckpt")
    if trainer.rank == 0:
        final = trainer.export_weights(args.weights_out or out / "final.ckpt")
        print(f"weights: {final}")
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """Folders the run writes later (final weights, feature cache) must be creatable now, not after hours."""
    from ds2_helpers.atomic import check_writable

    if args.weights_out:
        check_writable(args.weights_out)
    if args.feature_cache:
        Path(args.feature_cache).mkdir(parents=True, exist_ok=True)


def _preflight(args: argparse.Namespace, train_cfg, spect, data) -> None:
    """Two steps of the run's largest batch in a child process (plan.preflight), before hours of training depend
    on it."""
    from ds2_helpers.features import n_frames
    from ds2_helpers.plan import largest_batch, preflight
    from ds2_helpers.train import epoch_batches

    batches = epoch_batches(train_cfg, spect, data, 0, pad_multiple=args.pad_multiple)
    stretch = train_cfg.augment.max_stretch  # speed perturbation at 0.9 makes the audio 1/0.9 as long
    frames = [n_frames(int(round(d * stretch * spect.sample_rate)), spect) for d in data.durations]
    batch, padded = largest_batch(batches, frames, args.pad_multiple, train_cfg.micro_batch)
    micro = train_cfg.micro_batch if (train_cfg.micro_batch or batch) < batch else None  # else it runs whole
    at_once = f", {micro} at a time" if micro else ""
    print(f"preflight: two steps of the largest batch ({batch} x {padded / 100:.1f} s{at_once}) ...", flush=True)
    result = preflight(args.preset, batch, padded, conv=args.conv, mode=train_cfg.mode, freeze_conv=train_cfg.freeze_conv,
                       freeze_rnn_layers=train_cfg.freeze_rnn_layers, micro_batch=micro,
                       layerwise=train_cfg.layerwise)
    print(f"preflight: fits, peak {result['peak_gb']:.1f} GB of {result['memory_available_gb']:.1f} GB available, "
          f"{result['step_seconds']:.1f} s for that step", flush=True)


def cmd_plan(args: argparse.Namespace) -> int:
    """Measure this machine's memory per padded audio second and project the epoch of a manifest."""
    from ds2_helpers.atomic import atomic_write_text
    from ds2_helpers.config import model_preset
    from ds2_helpers.librispeech import read_manifest
    from ds2_helpers.plan import format_plan, make_plan, measure

    frame = read_manifest(args.manifest)
    if args.out:
        from ds2_helpers.atomic import check_writable

        check_writable(args.out)  # before minutes of measuring
    fit = measure(args.preset, seconds=args.probe_seconds, conv=args.conv, layerwise=args.layerwise)
    from ds2_helpers.model import architecture_table

    params = int(architecture_table(model_preset(args.preset))["parameters"].sum())  # no network built to count
    from ds2_helpers.config import train_preset

    plan = make_plan(frame.duration.to_numpy(), fit, memory_gb=args.memory_gb, batch_size=args.batch_size or 64,
                     batch_seconds=args.batch_seconds, parameters=params,
                     fixed_batch=args.batch_size or train_preset(args.preset).batch_size, layerwise=args.layerwise)
    print(format_plan(plan, list(frame.utterance_id)))
    if args.out:
        import json

        atomic_write_text(args.out, json.dumps(plan, indent=2))
        print(f"wrote {args.out}")
    return 0


def _has_checkpoint(out: Path) -> bool:
    from ds2_helpers.checkpoint import checkpoints_in

    return bool(checkpoints_in(out))


def cmd_pretrained(args: argparse.Namespace) -> int:
    """Download the course's DeepSpeech.ckpt, or convert a MindSpore 1.x checkpoint to 2.x names."""
    from ds2_helpers import checkpoint as ckpt

    if args.action == "download":
        path = ckpt.download_pretrained(args.out, expected_size=args.expected_size)
        print(f"downloaded {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return 0
    from ds2_helpers.config import model_preset
    from ds2_helpers.model import DeepSpeech2

    net = DeepSpeech2(model_preset(args.preset))
    out, packing = ckpt.convert_file(args.checkpoint, args.out, net, gate_order=args.gate_order)
    kind = {"gpu": "GPU/cuDNN: two biases per direction", "cpu": "CPU/oneDNN: one bias per direction"}[packing]
    print(f"converted {args.checkpoint} -> {out} (detected {packing} packing, {kind})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """WER/CER of a checkpoint over a manifest; per-utterance CSV (written batch by batch) and JSON summary in
    --out. Bad audio files are reported and skipped (--strict: the first one fails the run)."""
    import json

    from ds2_helpers.atomic import atomic_write_text
    from ds2_helpers.checkpoint import load_model
    from ds2_helpers.dataset import SpeechData
    from ds2_helpers.evaluate import check_same_evaluation, earlier_results, evaluate, writable_folder
    from ds2_helpers.librispeech import read_manifest

    out = writable_folder(args.out) if args.out else None  # now, not after hours of decoding
    earlier = earlier_results(out, resume=args.resume, overwrite=args.overwrite) if out else None
    net, spect = load_model(args.checkpoint, args.preset)
    if out:
        from ds2_helpers.run_folder import manifest_fingerprint

        check_same_evaluation(out, {"checkpoint": manifest_fingerprint(args.checkpoint),
                                    "manifest": manifest_fingerprint(args.manifest), "preset": args.preset,
                                    "decoder": args.decoder, "beam_width": args.beam_width, "lm": args.lm},
                              resume=earlier is not None)
    frame = read_manifest(args.manifest)
    frame = frame.iloc[:args.limit] if args.limit else frame
    if earlier is not None:
        frame = frame[~frame.utterance_id.isin(earlier.utterance_id)]
        print(f"resuming: {len(earlier)} utterances already in {out / 'results.csv'}, {len(frame)} to decode")
    data = SpeechData(frame.reset_index(drop=True), spect, allow_empty=earlier is not None)
    results, summary = evaluate(net, data, batch_size=args.batch_size, progress=True, decoder=args.decoder,
                                beam_width=args.beam_width, lm_path=args.lm, batch_seconds=args.batch_seconds,
                                strict=args.strict, results_csv=out / "results.csv" if out else None,
                                earlier=earlier, mode=args.mode)
    summary.update(checkpoint=str(args.checkpoint), manifest=str(args.manifest), decoder=args.decoder)
    if out:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    if summary["skipped"]:
        print(f"skipped {summary['skipped']} unusable audio file(s), each named above with the reason")
    print(f"WER {summary['wer']:.4f}  CER {summary['cer']:.4f}  (zoo-style CER {summary['cer_zoo']:.4f})  "
          f"{summary['utterances']} utterances, {summary['audio_seconds'] / 60:.1f} min audio, "
          + (f"RTF {summary['rtf']:.3f}" if summary["rtf"] is not None else "nothing left to decode"))
    return 0


def _inference_mode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["graph", "pynative"], default="graph",
                   help="graph: one compiled graph for every input length (fast); pynative: op by op")


def cmd_transcribe(args: argparse.Namespace) -> int:
    """Print a transcript per audio file (WAV, FLAC, ... at any sample rate) as soon as it is decoded; a bad file
    gets an `error:` line and the rest still run (exit status 2 at the end)."""
    import sys

    from ds2_helpers.checkpoint import load_model
    from ds2_helpers.evaluate import transcribe_each

    net, spect = load_model(args.checkpoint, args.preset)
    failed = 0
    for path, text in transcribe_each(net, args.audio, spect, decoder=args.decoder, mode=args.mode):
        if isinstance(text, Exception):
            failed += 1
            print(f"error: {text}", file=sys.stderr, flush=True)
        else:
            print(f"{path}\t{text}", flush=True)
    return 2 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export the inference network to MindIR (any length at batch 1, or --frames fixed and padded) and check it
    against the checkpoint."""
    import numpy as np

    from ds2_helpers.checkpoint import load_model
    from ds2_helpers.config import to_dict
    from ds2_helpers.errors import ExportError
    from ds2_helpers.export import ExportedModel, checkpoint_log_probs, export_mindir, export_onnx

    net, spect = load_model(args.checkpoint, args.preset)
    if args.format == "ONNX":
        ok, message = export_onnx(net, args.out, frames=args.frames or 3600)
        if not ok:
            raise ExportError(f"{args.out}: MindSpore refused the ONNX export ({message}); use --format MINDIR")
        print(f"ONNX: written {message}")
        return 0
    path = export_mindir(net, args.out, frames=args.frames, spect=to_dict(spect))
    rng = np.random.default_rng(0)
    spect_in = rng.standard_normal((net.cfg.n_bins, min(args.frames or 300, 300))).astype(np.float32)
    diff = float(np.abs(ExportedModel(path)(spect_in) - checkpoint_log_probs(net, spect_in)).max())
    length = (f"inputs up to {args.frames} frames ({args.frames / 100:.0f} s), padded" if args.frames
              else "inputs of any length (batch 1)")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) for {length}; max |difference| to the checkpoint "
          f"on a test input: {diff:.2e}")
    if diff >= 1e-4:
        raise ExportError(f"{path}: the exported model differs from the checkpoint by {diff:.2e} (more than 1e-4); "
                          "do not use it - report this with the checkpoint")
    return 0


def cmd_rehearse(args: argparse.Namespace) -> int:
    """The real job's steps on a LibriSpeech-shaped corpus: plan, preflight, train, kill, resume, evaluate, export."""
    from dataclasses import replace

    from ds2_helpers.rehearse import RehearsalConfig, rehearse

    cfg = RehearsalConfig.small() if args.small else RehearsalConfig()
    overrides = {k: v for k, v in {"preset": args.preset, "hours": args.hours, "steps": args.steps,
                                   "batch_seconds": args.batch_seconds}.items() if v is not None}
    summary = rehearse(args.out, replace(cfg, **overrides))
    print(f"rehearsal done: peak {summary['peak_rss_gb']:.2f} GB, resumed at global step "
          f"{summary['resumed_at_global_step']}, CER on the {len(summary['evaluated_seconds'])} longest test "
          f"utterances {summary['evaluation']['cer']:.3f}; summary in {Path(args.out) / 'rehearsal.json'}")
    return 0


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

    def pick(configs):
        return [c for c in configs if any(w.lower() in c.name.lower() for w in args.only)] if args.only else configs

    common = dict(eval_limit=args.eval_limit, mode=args.mode, progress=True, score=score)
    out = Path(args.out)
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

    if not Path(args.checkpoint).is_file():
        from ds2_helpers.errors import CheckpointError

        raise CheckpointError(f"{args.checkpoint}: no such checkpoint to prune; check the path (the mini model is "
                              "data/mini_pretrained.ckpt)")
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
    from ds2_helpers.distill import check_distillation, compare

    check_distillation(args.alpha, args.temperature)
    for path, what in ((args.teacher, "--teacher"), (args.train, "--train"), (args.eval, "--eval")):
        if not Path(path).is_file():
            raise FileNotFoundError(2, f"No such file or directory ({what})", path)
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


DEFAULT_CONV = ModelConfig.conv  # the one default, read from the model config


def add_commands(sub) -> None:
    """Register the MindSpore commands on the top-level parser."""
    p = sub.add_parser("train", help="train or fine-tune DeepSpeech2 (resumable; works under msrun)")
    p.add_argument("--preset", default="mini", choices=["paper", "mini"])
    p.add_argument("--manifest", required=True)
    p.add_argument("--pretrained", help="weights to start from (1.x checkpoints are converted on the fly)")
    p.add_argument("--epochs", type=at_least(1))
    p.add_argument("--batch-size", type=at_least(1))
    p.add_argument("--lr", type=positive, help="learning rate (the peak rate of cosine and onecycle)")
    p.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="adam (default), lamb (Adam with a per-layer trust ratio) or sgd (momentum "
                        f"{TrainConfig.momentum:g})")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="anneal (default: lr / anneal^epoch, set per epoch), constant, cosine (linear warm-up, then "
                        "cosine to 0) or onecycle (cosine up from lr/25, then down); the last two set the rate "
                        "every step")
    p.add_argument("--warmup-steps", type=at_least(0),
                   help="cosine/onecycle: steps of warm-up (default: "
                        + ", ".join(f"{share:.0%} of the schedule for {name}"
                                    for name, share in DEFAULT_WARMUP_FRACTION.items()).replace("%", "%%") + ")")
    p.add_argument("--warmup-fraction", type=non_negative, help="cosine/onecycle: warm-up as a share of the schedule")
    p.add_argument("--schedule-steps", type=at_least(1),
                   help="cosine/onecycle: the schedule's length in steps (default: epochs x batches per epoch)")
    p.add_argument("--mode", choices=["graph", "pynative"])
    p.add_argument("--seed", type=at_least(0))
    p.add_argument("--out", required=True)
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out "
                       "(refused when the preset, spectrogram, batching, seed, manifest, optimizer, schedule or augmentation differ from the "
                       "checkpoint's)")
    again.add_argument("--overwrite", action="store_true",
                       help="--out holds an earlier run: delete its checkpoints and metrics and start again")
    p.add_argument("--allow-changes", action="store_true",
                   help="resume although settings differ from the checkpoint's (config.json records the changes)")
    p.add_argument("--save-every", type=at_least(0))
    p.add_argument("--keep-last", type=at_least(1))
    p.add_argument("--freeze-conv", action="store_true")
    p.add_argument("--freeze-rnn-layers", type=at_least(0))
    p.add_argument("--max-steps", type=at_least(1), help="stop after this many global steps (a short trial)")
    p.add_argument("--threads", type=at_least(1), help="CPU threads of this process (default: MindSpore's choice)")
    p.add_argument("--conv", choices=["native", "matmul"], default=DEFAULT_CONV,
                   help="convolution as MindSpore Conv2d (steady; the default, ModelConfig.conv) or our matrix "
                        "products (slower and slower in long runs: notebook 07)")
    p.add_argument("--max-duration", type=positive, help="skip utterances longer than this (seconds)")
    p.add_argument("--limit", type=at_least(1), help="use only the first N utterances of the manifest")
    p.add_argument("--pad-multiple", type=at_least(1), default=64, help="round padded frames up to a multiple of this")
    p.add_argument("--batch-seconds", type=positive,
                   help="padded audio seconds per batch (the batch size then varies with length, --batch-size is "
                        "an upper bound); `plan` measures what fits")
    p.add_argument("--micro-batch", type=at_least(1), metavar="M",
                   help="run each batch in micro-batches of M utterances and update once from their summed "
                        "gradients: the same update with the memory of M utterances, slower per utterance "
                        "(`bench --profile --whole-only --micro-batches` measures it)")
    p.add_argument("--layerwise", action="store_true",
                   help="run the backward pass one layer at a time, each layer's forward recomputed from its kept "
                        "input: the same gradients as the whole batch at once in a fraction of the memory, slower "
                        "(`bench --profile --whole-only --layerwise` measures it)")
    p.add_argument("--feature-cache", metavar="DIR",
                   help="keep spectrograms on disk in DIR (one file per utterance; shareable between runs)")
    p.add_argument("--release-memory", choices=["auto", "always", "never"],
                   help="give back MindSpore's per-shape memory: auto (default: once memory has grown by a quarter "
                        "since the last release), always (every step, slower), never (memory grows with every "
                        "new batch shape)")
    p.add_argument("--static-shapes", action="store_true",
                   help="compile one graph per batch shape (each keeps its memory: for comparison only)")
    p.add_argument("--preflight", action=argparse.BooleanOptionalAction, default=True,
                   help="first run two steps of the largest batch in a child process (fails early if it "
                        "does not fit)")
    p.add_argument("--window", default="hamming", help="analysis window: hamming (the model zoo's), hann, ...")
    p.add_argument("--periodic-window", action=argparse.BooleanOptionalAction, default=True,
                   help="periodic window as librosa makes from a window name (the zoo's and the pretrained "
                        "checkpoints'); --no-periodic-window: the symmetric scipy.signal.windows one")
    p.add_argument("--weights-out", help="write the final weights-only checkpoint here instead of --out/final.ckpt")
    p.add_argument("--augment", type=augment_kinds, metavar="KINDS",
                   help=f"data augmentation in training (never in evaluation), a comma-separated list of "
                        f"{', '.join(AUGMENT_KINDS)}: speed = speed perturbation 0.9/1.0/1.1 by resampling, "
                        "gain = volume -6..+6 dB, noise = white noise at 10..30 dB SNR on half the utterances, "
                        "specaugment = 2 frequency masks of up to 27 bins and 2 time masks of up to 100 frames; "
                        "default none. Deterministic in seed, epoch and utterance, so --resume repeats it (and "
                        "refuses other augmentation). Python: TrainConfig(augment=AugmentConfig(...)) for other "
                        "parameters")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("rehearse", help="rehearse the real job on a LibriSpeech-shaped synthetic corpus")
    p.add_argument("--out", default="runs/rehearsal")
    p.add_argument("--small", action="store_true", help="the mini preset on a few minutes of audio (make test)")
    p.add_argument("--preset", choices=["paper", "mini"])
    p.add_argument("--hours", type=positive, help="hours of synthetic train audio")
    p.add_argument("--steps", type=at_least(1), help="training steps in all (the run is killed and resumed on the way)")
    p.add_argument("--batch-seconds", type=positive, help="instead of what `plan` finds")
    p.set_defaults(func=cmd_rehearse)

    p = sub.add_parser("plan", help="measure memory per padded audio second here and plan a training run")
    p.add_argument("--preset", default="paper", choices=["paper", "mini"])
    p.add_argument("--manifest", required=True)
    p.add_argument("--memory-gb", type=positive, help="plan for this much memory instead of what is available now")
    p.add_argument("--batch-size", type=at_least(1),
                   help="upper bound on utterances per batch (default 64), and the fixed batch whose --micro-batch "
                        "is planned (default: the preset's batch size)")
    p.add_argument("--batch-seconds", type=positive, help="plan this batch size instead of the largest that fits")
    p.add_argument("--probe-seconds", type=positive, default=10.0, help="utterance length of the measured steps")
    p.add_argument("--conv", choices=["native", "matmul"], default=DEFAULT_CONV, help="as `train --conv`")
    p.add_argument("--layerwise", action="store_true",
                   help="measure steps whose backward pass runs one layer at a time (as `train --layerwise`)")
    p.add_argument("--out", help="also write the plan as JSON here")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("evaluate", help="WER/CER of a checkpoint over a manifest")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--preset", choices=["paper", "mini"], help="only for checkpoints that do not record it")
    p.add_argument("--batch-size", type=at_least(1), default=16, help="upper bound on utterances per batch")
    p.add_argument("--batch-seconds", type=non_negative, default=160.0,
                   help="padded audio seconds per batch (memory grows with it; 0 for fixed --batch-size batches)")
    p.add_argument("--limit", type=at_least(1))
    p.add_argument("--decoder", choices=["greedy", "beam"], default="greedy")
    p.add_argument("--beam-width", type=at_least(1), default=32)
    p.add_argument("--lm", help="KenLM/ARPA language model for beam search (needs the kenlm package)")
    p.add_argument("--out", help="folder for results.csv (appended batch by batch) and summary.json")
    _inference_mode(p)
    p.add_argument("--strict", action="store_true",
                   help="fail on the first missing or unreadable audio file instead of skipping and reporting it")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="--out holds results of an interrupted evaluation: decode only the utterances not in them")
    again.add_argument("--overwrite", action="store_true", help="--out holds earlier results: replace them")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("transcribe", help="transcribe audio files with a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--preset", choices=["paper", "mini"])
    p.add_argument("--decoder", choices=["greedy", "beam"], default="greedy")
    p.add_argument("audio", nargs="+")
    _inference_mode(p)
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("export", help="export to MindIR (checked against the checkpoint) or try ONNX")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--preset", choices=["paper", "mini"])
    p.add_argument("--format", choices=["MINDIR", "ONNX"], default="MINDIR")
    p.add_argument("--frames", type=at_least(1),
                   help="a fixed input length in 10-ms frames that inputs are padded to (e.g. 3600 = 36 s: test-clean's "
                        "longest is 35 s), for runtimes without dynamic shapes; default: any length, batch 1 "
                        "(ONNX: 3600)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

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
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("bench-one", help=argparse.SUPPRESS)
    p.add_argument("config")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.set_defaults(func=cmd_bench_one)
    p = sub.add_parser("profile-one", help=argparse.SUPPRESS)
    p.add_argument("config")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.set_defaults(func=cmd_profile_one)

    p = sub.add_parser("onednn", help="measure oneDNN's AVX2 cap against its AVX-512 kernels (notebook 07)")
    p.add_argument("--out", default="runs/onednn.json")
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
    p.set_defaults(func=cmd_race)

    p = sub.add_parser("prune", help="magnitude-prune a checkpoint or drop LSTM units (--structured); "
                       "the result loads like any checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="the pruned checkpoint (.ckpt)")
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
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("pretrained", help="the course's pretrained DeepSpeech.ckpt")
    psub = p.add_subparsers(dest="action", required=True)
    d = psub.add_parser("download", help="download DeepSpeech.ckpt (resumable)")
    d.add_argument("--out", default="DeepSpeech.ckpt")
    d.add_argument("--expected-size", type=int)
    d.set_defaults(func=cmd_pretrained)
    c = psub.add_parser("convert", help="convert a MindSpore 1.x DeepSpeech2 checkpoint (flat LSTM weights; "
                                       "GPU or CPU packing, detected from the sizes)")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--preset", default="paper", choices=["paper", "mini"])
    c.add_argument("--gate-order", default="ifgo", help="gate order inside the flat weight (default: i, f, g, o)")
    c.set_defaults(func=cmd_pretrained)
