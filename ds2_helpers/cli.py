"""Command line: `python -m ds2_helpers <command>` for every long job of the workbook."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ds2_helpers import paths


def cmd_minicorpus(args: argparse.Namespace) -> int:
    """Synthesise the embedded mini corpus and its manifests."""
    from ds2_helpers.minicorpus import SPLITS, build_librispeech_like, build_minicorpus
    from ds2_helpers.librispeech import build_manifest

    if args.profile == "librispeech":
        counts = build_librispeech_like(args.out, hours=args.hours, speakers=args.speakers, seed=args.seed,
                                        progress=not args.quiet)
    else:
        counts = build_minicorpus(args.out, speakers=args.speakers, utterances_per_speaker=args.utterances_per_speaker,
                                  seed=args.seed, progress=not args.quiet)
    for split in SPLITS:
        out = Path(args.out) / f"{split}.csv"
        report = build_manifest(args.out, split, out, strict=True)
        print(f"{split}: {counts[split]} utterances, {sum(r['duration'] for r in report.rows) / 60:.1f} min -> {out}")
    return 0


def cmd_librispeech(args: argparse.Namespace) -> int:
    """Download, verify and extract LibriSpeech subsets."""
    from ds2_helpers.librispeech import download_subset

    for subset in args.subset:
        target = download_subset(subset, args.root, progress=not args.quiet, keep_archive=not args.delete_archive)
        print(f"{subset}: ready in {target}")
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    """Scan a LibriSpeech-layout tree into a manifest CSV (and optionally the model zoo's CSV)."""
    from ds2_helpers.librispeech import build_manifest, manifest_summary, read_manifest, write_zoo_manifest

    report = build_manifest(args.root, args.subset, args.out, strict=args.strict, progress=not args.quiet)
    for problem in report.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    summary = manifest_summary(read_manifest(args.out))
    print(f"{args.out}: {summary['utterances']} utterances, {summary['hours']:.2f} h, "
          f"{summary['speakers']} speakers, {len(report.problems)} skipped")
    if args.zoo_csv:
        print(f"model zoo manifest: {write_zoo_manifest(read_manifest(args.out), args.zoo_csv)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """All sub-commands and their flags."""
    parser = argparse.ArgumentParser(prog="python -m ds2_helpers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("minicorpus", help="synthesise the embedded mini corpus (LibriSpeech layout)")
    p.add_argument("--out", default=str(paths.mini_corpus_dir()))
    p.add_argument("--speakers", type=int, default=32)
    p.add_argument("--utterances-per-speaker", type=int, default=50)
    p.add_argument("--profile", choices=["mini", "librispeech"], default="mini",
                   help="mini: 2-3 s sentences; librispeech: utterances of 1-25 s like train-clean-100 "
                        "(test up to 35 s), sentences of one voice joined")
    p.add_argument("--hours", type=float, default=1.0, help="hours of train audio for --profile librispeech")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_minicorpus)

    p = sub.add_parser("librispeech", help="LibriSpeech archives")
    lsub = p.add_subparsers(dest="action", required=True)
    d = lsub.add_parser("download", help="download (resumable), verify MD5 and extract subsets")
    d.add_argument("--subset", nargs="+", required=True)
    d.add_argument("--root", required=True)
    d.add_argument("--delete-archive", action="store_true")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_librispeech)

    p = sub.add_parser("manifest", help="scan a LibriSpeech-layout tree into a manifest CSV")
    p.add_argument("--root", required=True)
    p.add_argument("--subset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--strict", action="store_true", help="fail on any bad file instead of skip-and-report")
    p.add_argument("--zoo-csv", help="also write the model zoo's wav_path,txt_path CSV here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_manifest)

    _add_model_commands(sub)
    return parser


def _add_model_commands(sub) -> None:
    """Training, evaluation and export commands (their modules import MindSpore lazily)."""
    try:
        from ds2_helpers import cli_model
    except ImportError:  # pragma: no cover - only while the package is half-installed
        return
    cli_model.add_commands(sub)


def main(argv: list[str] | None = None) -> int:
    """Parse and run; errors that carry a fix are printed without a traceback."""
    args = build_parser().parse_args(argv)
    from ds2_helpers.errors import USER_ERRORS

    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
