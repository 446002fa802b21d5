"""Command line: `python -m ds2_helpers <command>` for every long job of the workbook."""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from ds2_helpers import paths


INTERNAL_COMMANDS = ("bench-one", "profile-one")


class Parser(argparse.ArgumentParser):
    """argparse with the one error format of every other failure: `error: ...` (exit 2), after the usage."""

    def error(self, message: str):
        for internal in INTERNAL_COMMANDS:  # child-process commands: not for users, so not offered
            message = message.replace(f", {internal!r}", "").replace(f", {internal}", "")  # quoted before 3.12.x
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def at_least(minimum: int):
    """argparse type: a whole number >= minimum (checked before any work starts)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small: use {minimum} or more")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def non_negative(text: str) -> float:
    """argparse type: a number >= 0."""
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not allowed: use 0 or more")
    return value


def positive(text: str) -> float:
    """argparse type: a number > 0."""
    value = _number(text)
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{value:g} is not allowed: use a finite number above 0")
    return value


def cmd_minicorpus(args: argparse.Namespace) -> int:
    """Synthesise the embedded mini corpus and its manifests (--unseen-voices: the held-out voices' test set)."""
    from ds2_helpers.config import ParameterError
    from ds2_helpers.librispeech import build_manifest
    from ds2_helpers.minicorpus import (SPLITS, build_librispeech_like, build_minicorpus, build_unseen_voices,
                                        earlier_build, fresh_build)

    if args.unseen_voices and args.profile != "mini":
        raise ParameterError("--unseen-voices builds its own short test set: leave out --profile")
    splits = ("test",) if args.unseen_voices else SPLITS
    replaced = earlier_build(args.out, splits)
    with fresh_build(args.out, splits, overwrite=args.overwrite) as tmp:  # the earlier build stays until this works
        if args.unseen_voices:
            counts = build_unseen_voices(tmp, speakers=args.speakers or 8,
                                         utterances_per_speaker=args.utterances_per_speaker or 10, seed=args.seed,
                                         progress=not args.quiet)
        else:
            speakers = args.speakers or 32
            if speakers < 3:
                raise ParameterError(f"--speakers {speakers}: use 3 or more (one each for train, dev and test)")
            if args.profile == "librispeech":
                counts = build_librispeech_like(tmp, hours=args.hours, speakers=speakers, seed=args.seed,
                                                progress=not args.quiet)
            else:
                counts = build_minicorpus(tmp, speakers=speakers,
                                          utterances_per_speaker=args.utterances_per_speaker or 50, seed=args.seed,
                                          progress=not args.quiet)
    if replaced:
        print(f"--overwrite: replaced the earlier build in {args.out}")
    for split in splits:
        out = Path(args.out) / f"{split}.csv"
        report = build_manifest(args.out, split, out, strict=True)
        name = "test (unseen voices)" if args.unseen_voices else split
        print(f"{name}: {counts[split]} utterances, {sum(r['duration'] for r in report.rows) / 60:.1f} min -> {out}")
    return 0


def cmd_librispeech(args: argparse.Namespace) -> int:
    """Download, verify and extract LibriSpeech subsets."""
    from ds2_helpers.librispeech import download_subset, subset_url

    for subset in args.subset:
        subset_url(subset)  # every name checked before the first download: unknown ones list the valid names
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
    parser = Parser(prog="python -m ds2_helpers", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of a failure instead of one error line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")  # hides the internal ones

    p = sub.add_parser("minicorpus", help="synthesise the embedded mini corpus (LibriSpeech layout)")
    p.add_argument("--out", default=str(paths.mini_corpus_dir()))
    p.add_argument("--speakers", type=at_least(1), help="default 32 (at least 3: train, dev and test); "
                   "--unseen-voices: 8 (at most 16)")
    p.add_argument("--utterances-per-speaker", type=at_least(1), help="default 50; --unseen-voices: 10")
    p.add_argument("--unseen-voices", action="store_true",
                   help="instead, a held-out test set (test/ and test.csv in --out, e.g. corpora/unseen) of espeak "
                        "voices and sentences the mini corpus never uses: CER on voices training never heard")
    p.add_argument("--profile", choices=["mini", "librispeech"], default="mini",
                   help="mini: 2-3 s sentences; librispeech: utterances of 1-25 s like train-clean-100 "
                        "(test up to 35 s), sentences of one voice joined")
    p.add_argument("--hours", type=positive, default=1.0, help="hours of train audio for --profile librispeech")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="--out holds an earlier build: delete it first")
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
    """Training, evaluation, export and measuring commands (their modules import MindSpore lazily)."""
    try:
        from ds2_helpers import cli_measure, cli_model
    except ImportError:  # pragma: no cover - only while the package is half-installed
        return
    cli_model.add_commands(sub)
    cli_measure.add_commands(sub)


OS_ERROR_FIXES = {
    errno.EACCES: "no permission: choose a folder you can write to (or ask its owner)",
    errno.EPERM: "not permitted: choose a folder you can write to (or ask its owner)",
    errno.ENOSPC: "the disk is full: free space or write to another disk",
    errno.EDQUOT: "your disk quota is used up: free space or write to another disk",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another path",
    errno.EISDIR: "this is a folder, a file is needed: give a file path",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.ENOENT: "check the path (and that the earlier step that makes this file has run)",
    errno.EEXIST: "a file stands where a folder is needed: move it or choose another path",
}


def os_error_line(exc: OSError, fallback: str | None = None) -> str:
    """One line for an operating-system error: the file (`fallback`, the command's --out, when the error does
    not name one), what happened, the fix."""
    where = exc.filename if exc.filename is not None else fallback or "(the output)"
    fix = OS_ERROR_FIXES.get(exc.errno, exc.strerror or str(exc))
    return f"{where}: {exc.strerror or exc}; {fix}" if exc.errno in OS_ERROR_FIXES else f"{where}: {fix}"


def keep_dumps_out_of_cwd() -> None:
    """MindSpore writes `rank_0/om/analyze_fail.ir` into the current folder when a graph fails to compile;
    send them (MS_OM_PATH, read when it writes them) to runs/mindspore-dumps (DS2_RUNS moves runs/) instead,
    unless the user chose a folder."""
    import os

    os.environ.setdefault("MS_OM_PATH", str(paths.runs_dir() / "mindspore-dumps"))


def main(argv: list[str] | None = None) -> int:
    """Parse and run. Every failure is one `error:` line (exit 2) naming the file and the fix; `--debug` shows
    the Python traceback instead."""
    args = build_parser().parse_args(argv)
    keep_dumps_out_of_cwd()
    import warnings

    warnings.formatwarning = lambda message, category, *rest, **kw: f"warning: {message}\n"  # no source lines
    from ds2_helpers.errors import USER_ERRORS

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted; checkpoints and results written so far are kept (train: --resume continues)",
              file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns every failure into one line
        if args.debug:
            raise
        if isinstance(exc, USER_ERRORS) and not (isinstance(exc, OSError) and exc.errno):
            line = str(exc)
        elif isinstance(exc, OSError):
            line = os_error_line(exc, getattr(args, "out", None))
        else:
            first = next((l.strip() for l in str(exc).splitlines() if l.strip()), "")
            line = (f"{type(exc).__name__}: {first[:300]} (unexpected: rerun with --debug for the traceback and "
                    "report it)")
        print(f"error: {line}", file=sys.stderr)
        return 2
