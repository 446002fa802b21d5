"""CLI commands that train and use a model: train, plan, rehearse, evaluate, transcribe, export and the pretrained
checkpoint (download, convert). The measuring commands are in cli_measure."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ds2_helpers.atomic import check_new
from ds2_helpers.cli import at_least, non_negative, positive
from ds2_helpers.config import AUGMENT_KINDS, OPTIMIZERS, AugmentConfig, ModelConfig, ParameterError, TrainConfig
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

    check_new(args.out, overwrite=args.overwrite, what="a checkpoint")
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

    if args.lm and args.decoder != "beam":
        raise ParameterError(f"--lm {args.lm}: only the beam decoder uses a language model; add --decoder beam "
                             "(greedy decoding takes each frame's best label)")
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
    from ds2_helpers.export import ExportedModel, checkpoint_log_probs, export_mindir, export_onnx, export_path

    check_new(export_path(args.out, args.format), overwrite=args.overwrite, what="an exported model")
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
    summary = rehearse(args.out, replace(cfg, **overrides), overwrite=args.overwrite)
    print(f"rehearsal done: peak {summary['peak_rss_gb']:.2f} GB, resumed at global step "
          f"{summary['resumed_at_global_step']}, CER on the {len(summary['evaluated_seconds'])} longest test "
          f"utterances {summary['evaluation']['cer']:.3f}; summary in {Path(args.out) / 'rehearsal.json'}")
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
    p.add_argument("--overwrite", action="store_true", help="--out holds an earlier rehearsal: replace it")
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
    p.add_argument("--out", required=True, help="the model file (.mindir or .onnx is added when missing)")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    p.set_defaults(func=cmd_export)

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
    c.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    c.add_argument("--preset", default="paper", choices=["paper", "mini"])
    c.add_argument("--gate-order", default="ifgo", help="gate order inside the flat weight (default: i, f, g, o)")
    c.set_defaults(func=cmd_pretrained)
