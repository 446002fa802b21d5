"""LibriSpeech: download and verify archives, scan any LibriSpeech-layout tree into manifests."""

from __future__ import annotations

import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import soundfile as sf

from ds2_helpers.atomic import atomic_write_text  # the project's one atomic writer
from ds2_helpers.download import DownloadError, download
from ds2_helpers.labels import normalise_text, unknown_characters

OPENSLR = "https://www.openslr.org/resources/12"
#: Published MD5s (openslr.org/resources/12/md5sum.txt).
SUBSETS: dict[str, str] = {
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
}
AUDIO_EXTENSIONS = (".flac", ".wav")
MANIFEST_COLUMNS = ["audio_path", "transcript", "duration", "speaker", "chapter", "utterance_id"]


class ManifestError(ValueError):
    """Problems found while scanning a corpus; each line names a file and the fix."""


@dataclass
class ScanReport:
    """What a scan kept and what it skipped, one message per bad file."""

    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def subset_url(subset: str) -> str:
    """The openslr URL of a LibriSpeech subset archive."""
    if subset not in SUBSETS:
        raise ManifestError(f"unknown subset {subset!r}; choose from {', '.join(SUBSETS)}")
    return f"{OPENSLR}/{subset}.tar.gz"


def download_subset(subset: str, root: str | Path, *, progress: bool = True, keep_archive: bool = True) -> Path:
    """Download (resumable, MD5-checked) and extract a subset; returns root/LibriSpeech/<subset>.

    `.extracting` in the target marks an extraction under way (a scan refuses that folder); it becomes
    `.extracted` only once every member is written, so an interrupted run extracts again next time."""
    root = Path(root)
    archive = download(subset_url(subset), root / f"{subset}.tar.gz", md5=SUBSETS[subset], progress=progress)
    target = root / "LibriSpeech" / subset
    done = target / ".extracted"
    if not done.exists():
        target.mkdir(parents=True, exist_ok=True)
        (target / ".extracting").touch()
        extract(archive, root, progress=progress)
        if not any(p.name != ".extracting" for p in target.iterdir()):
            raise DownloadError(f"{archive}: holds no LibriSpeech/{subset}/, so it is not the {subset} archive; "
                                "delete it and download it again")
        (target / ".extracting").replace(done)
    if not keep_archive:
        archive.unlink()
    return target


MAX_COMPONENT_BYTES, MAX_PATH_BYTES = 255, 4096  # NAME_MAX and PATH_MAX on Linux
NOT_LIBRISPEECH = ("LibriSpeech archives hold only plain files and folders, so this one is damaged or not a "
                   "LibriSpeech archive: delete it and download it again")


def _unsafe(member: tarfile.TarInfo, dest: str) -> str | None:
    """What is wrong with `member` and the fix, or None for a plain file or folder inside the real folder `dest`."""
    name = member.name
    if name.startswith(("/", "\\")) or os.path.isabs(name):
        return f"an absolute path; {NOT_LIBRISPEECH}"
    if ".." in name.replace("\\", "/").split("/"):
        return f"a path with a '..' component; {NOT_LIBRISPEECH}"
    if member.issym() or member.islnk():
        return f"a {'symbolic' if member.issym() else 'hard'} link; {NOT_LIBRISPEECH}"
    if not (member.isfile() or member.isdir()):
        return f"a device, fifo or other special file; {NOT_LIBRISPEECH}"
    if len(os.fsencode(name)) > MAX_PATH_BYTES or any(len(os.fsencode(c)) > MAX_COMPONENT_BYTES
                                                        for c in name.split("/")):
        return (f"a name longer than {MAX_COMPONENT_BYTES} bytes per folder or {MAX_PATH_BYTES} in all; "
                f"{NOT_LIBRISPEECH}")
    if os.path.commonpath([os.path.realpath(os.path.join(dest, name)), dest]) != dest:
        return (f"a path that a symbolic link already in {dest} sends outside it; remove that link or "
                "extract into a plain folder")
    return None


def extract(archive: str | Path, dest: str | Path, *, progress: bool = True) -> None:
    """Extract a .tar.gz of plain files and folders into `dest`, after checking every member.

    Anything else - absolute paths, `..`, links of any kind, devices, over-long names, a path resolving outside
    `dest` - refuses the whole archive before a byte is written (LibriSpeech archives hold none of these);
    tarfile's filter="data" stays on as a second line of defence."""
    from tqdm.auto import tqdm

    archive, dest = Path(archive), Path(dest)
    real_dest = os.path.realpath(dest)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = list(tqdm(tar, desc=f"checking {archive.name}", unit="file", disable=not progress))
            for member in members:
                why = _unsafe(member, real_dest)
                if why:
                    shown = member.name if len(member.name) <= 120 else f"{member.name[:60]}...{member.name[-40:]}"
                    raise DownloadError(f"{archive}: refused, nothing extracted - member {shown!r} is {why}")
            for member in tqdm(members, desc=f"extracting {archive.name}", unit="file", disable=not progress):
                tar.extract(member, dest, filter="data")
    except (tarfile.ReadError, EOFError, zlib.error) as exc:
        raise DownloadError(f"{archive}: not a readable .tar.gz ({exc}); delete it and download it again") from exc


def resolve_subset_dir(root: str | Path, subset: str) -> Path:
    """root/subset, or root/LibriSpeech/subset as the archives extract."""
    root = Path(root)
    for candidate in (root / subset, root / "LibriSpeech" / subset):
        if candidate.is_dir():
            return candidate
    if subset in SUBSETS:
        raise ManifestError(f"{root / subset}: no such folder; download it with "
                            f"`python -m ds2_helpers librispeech download --subset {subset} --root {root}` "
                            "or build the mini corpus with `python -m ds2_helpers minicorpus`")
    from ds2_helpers.minicorpus import SPLITS

    raise ManifestError(f"{root / subset}: no such folder; --subset is a LibriSpeech subset ({', '.join(SUBSETS)}) "
                        f"or a mini corpus split ({', '.join(SPLITS)}, built by "
                        f"`python -m ds2_helpers minicorpus --out {root}`): check --root and --subset")


def _read_transcripts(trans_files: list[Path], report: ScanReport) -> dict[str, str]:
    """utterance id -> normalised transcript for one chapter's .trans.txt files.

    An id listed twice is reported and kept with an empty transcript, so its audio is skipped, not guessed at."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}  # utterance id -> file:line of its first line
    for trans in trans_files:
        try:
            text_of_file = trans.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            report.problems.append(f"{trans}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 "
                                   "or extract the archive again")
            continue
        for n, line in enumerate(text_of_file.splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            if utt in seen:
                report.problems.append(f"{trans}:{n}: {utt} is listed again (first at {seen[utt]}); "
                                       "delete one of the two lines")
                out[utt] = ""
                continue
            seen[utt] = f"{trans}:{n}"
            out[utt] = normalise_text(text)
            if not out[utt]:
                report.problems.append(f"{trans}:{n}: empty transcript for {utt}; fix the line or delete the audio")
    return out


def scan_chapter(chapter: Path, report: ScanReport) -> None:
    """Add a chapter's good utterances to `report.rows` and each bad file to `report.problems`."""
    trans_files = sorted(chapter.glob("*.trans.txt"))
    audio = {p.stem: p for p in sorted(chapter.iterdir()) if p.suffix.lower() in AUDIO_EXTENSIONS}
    if not trans_files:
        if audio:
            report.problems.append(f"{chapter}: {len(audio)} audio files but no .trans.txt; re-extract the archive")
        return
    transcripts = _read_transcripts(trans_files, report)
    for utt in sorted(set(audio) - set(transcripts)):
        report.problems.append(f"{audio[utt]}: no transcript line for {utt} in {trans_files[0].name}")
    for utt, text in sorted(transcripts.items()):
        path = audio.get(utt)
        if path is None:
            report.problems.append(f"{trans_files[0]}: {utt} has a transcript but no audio file; re-extract")
            continue
        if not text:
            continue
        bad = unknown_characters(text)
        if bad:
            report.problems.append(f"{path}: transcript has characters outside the alphabet "
                                   f"{''.join(sorted(bad))!r}; edit {trans_files[0].name} or skip it")
            continue
        try:
            info = sf.info(str(path))
            duration = info.frames / info.samplerate
        except Exception as exc:  # noqa: BLE001 - libsndfile raises several types
            report.problems.append(f"{path}: unreadable audio ({exc}); re-extract the archive")
            continue
        if duration <= 0:
            report.problems.append(f"{path}: no samples; re-extract the archive")
            continue
        parts = utt.split("-")
        if len(parts) < 3:
            report.problems.append(f"{path}: utterance id {utt!r} is not <speaker>-<chapter>-<number> as in "
                                   "LibriSpeech; rename the file and its transcript line")
            continue
        speaker, chapter_id = parts[:2]
        report.rows.append({"audio_path": str(path.resolve()), "transcript": text, "duration": round(duration, 4),
                            "speaker": speaker, "chapter": chapter_id, "utterance_id": utt})


def scan(root: str | Path, subset: str, *, progress: bool = False) -> ScanReport:
    """Scan root/<subset>/<speaker>/<chapter>/ into manifest rows plus a list of problems."""
    from tqdm.auto import tqdm

    base = resolve_subset_dir(root, subset)
    if (base / ".extracting").exists():
        raise ManifestError(f"{base}: its extraction did not finish; run `python -m ds2_helpers librispeech download "
                            f"--subset {subset} --root {base.parent.parent}` again")
    report = ScanReport()
    chapters = sorted(p for p in base.glob("*/*") if p.is_dir())
    for chapter in tqdm(chapters, desc=f"scanning {subset}", unit="chapter", disable=not progress):
        scan_chapter(chapter, report)
    report.rows.sort(key=lambda r: (r["duration"], r["utterance_id"]))
    return report


def build_manifest(root: str | Path, subset: str, out: str | Path, *, strict: bool = False,
                   progress: bool = False) -> ScanReport:
    """Scan and write the manifest CSV atomically; `strict` raises on any problem instead of skipping."""
    _check_writable(out)  # before a scan of minutes, not after it
    report = scan(root, subset, progress=progress)
    if strict and report.problems:
        raise ManifestError(f"{len(report.problems)} problem(s) in {subset} (nothing written to {out}):\n  "
                            + "\n  ".join(report.problems))
    if not report.rows:
        base = resolve_subset_dir(root, subset)
        if not report.problems:
            raise ManifestError(f"{base}: no utterances found (nothing written to {out}); it holds no "
                                "<speaker>/<chapter>/ folders with audio and a .trans.txt - check --root and --subset")
        shown = report.problems[:20] + [f"... and {len(report.problems) - 20} more"] * (len(report.problems) > 20)
        raise ManifestError(f"{base}: no usable utterances, all {len(report.problems)} problem(s) skipped "
                            f"(nothing written to {out}):\n  " + "\n  ".join(shown))
    frame = pd.DataFrame(report.rows, columns=MANIFEST_COLUMNS)
    _write(out, frame.to_csv(index=False))
    return report


def _check_writable(out: str | Path) -> None:
    """Raise a ManifestError naming the fix when `out` cannot be written: a folder, under a file, no permission."""
    out = Path(out)
    if out.is_dir():
        raise ManifestError(f"{out}: is a folder; give a file name for the manifest, such as {out / 'dev.csv'}")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ManifestError(f"{out}: cannot be written, {folder} is a file and not a folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ManifestError(f"{out}: no permission to write in {folder}; choose a folder you can write to")


def _write(out: str | Path, text: str) -> None:
    """`atomic_write_text`, with any failure to write (permission, disk full, a file in the way) as a ManifestError."""
    try:
        atomic_write_text(out, text)
    except OSError as exc:
        raise ManifestError(f"{out}: cannot be written ({exc.strerror or exc}); check that folder's permissions "
                            "and free space, or choose another path") from exc


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Load a manifest CSV written by `build_manifest`, checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest; build it with `python -m ds2_helpers manifest`")
    try:
        frame = pd.read_csv(path, dtype={"speaker": str, "chapter": str, "utterance_id": str, "transcript": str},
                            keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not a manifest CSV ({exc}); rebuild it with "
                            "`python -m ds2_helpers manifest`") from exc
    missing = set(MANIFEST_COLUMNS) - set(frame.columns)
    if missing:
        raise ManifestError(f"{path}: missing columns {sorted(missing)}; rebuild it with "
                            "`python -m ds2_helpers manifest`")
    if frame.empty:
        raise ManifestError(f"{path}: lists no utterances, only the header; rebuild it with "
                            "`python -m ds2_helpers manifest` and read the `skipped:` lines it prints")
    _check_rows(path, frame)
    return frame


def _row(path: Path, frame: pd.DataFrame, i: int) -> str:
    """'FILE, row N (utterance ID)' for the i-th data row: N counts lines as an editor shows them (header = 1)."""
    return f"{path}, row {i + 2} (utterance {frame.utterance_id.iloc[i]})"


def _check_rows(path: Path, frame: pd.DataFrame) -> None:
    """Durations must be positive numbers and transcripts speakable by the 29-symbol alphabet; else one
    ManifestError naming the first bad row and how many more there are. Turns durations into floats."""
    seconds = pd.to_numeric(frame.duration, errors="coerce")
    bad = [i for i, s in enumerate(seconds) if not 0 < s < float("inf")]  # NaN (not a number) fails too
    if bad:
        more = f" ({len(bad) - 1} more rows like it)" if len(bad) > 1 else ""
        raise ManifestError(f"{_row(path, frame, bad[0])}: duration {frame.duration.iloc[bad[0]]!r} is not a "
                            f"finite positive number of seconds{more}; rebuild the manifest with "
                            "`python -m ds2_helpers manifest`, which reads each duration from its audio file")
    frame["duration"] = seconds.astype(float)
    unknown = [(i, unknown_characters(normalise_text(t))) for i, t in enumerate(frame.transcript)]
    unknown = [(i, chars) for i, chars in unknown if chars]
    if unknown:
        i, chars = unknown[0]
        more = f" ({len(unknown) - 1} more rows like it)" if len(unknown) > 1 else ""
        hint = "spell numbers out as LibriSpeech does (12 -> TWELVE)" if any(c.isdigit() for c in chars) else \
            "rewrite them with letters, spaces and apostrophes"
        raise ManifestError(f"{_row(path, frame, i)}: the transcript {frame.transcript.iloc[i]!r} has characters "
                            f"the model's alphabet cannot write ({' '.join(sorted(chars))}){more}; {hint}, or "
                            "remove the row (`python -m ds2_helpers manifest` skips such utterances)")


def write_zoo_manifest(manifest: pd.DataFrame, out: str | Path, txt_dir: str | Path | None = None) -> Path:
    """The model zoo's two-column `wav_path,txt_path` CSV (no header), one transcript file per utterance."""
    out = Path(out)
    txt_dir = Path(txt_dir) if txt_dir else out.with_suffix("").with_name(out.stem + "_txt")
    _check_writable(out)
    lines = []
    try:
        txt_dir.mkdir(parents=True, exist_ok=True)
        for row in manifest.itertuples(index=False):
            txt = txt_dir / f"{row.utterance_id}.txt"
            txt.write_text(row.transcript, encoding="utf-8")
            lines.append(f"{row.audio_path},{txt.resolve()}\n")
    except OSError as exc:
        raise ManifestError(f"{txt_dir}: cannot write the transcript files ({exc.strerror or exc}); "
                            "pass a folder you can write to") from exc
    _write(out, "".join(lines))
    return out


def manifest_summary(manifest: pd.DataFrame) -> dict[str, float]:
    """Counts a student checks first: utterances, hours, speakers, mean and max duration."""
    return {"utterances": int(len(manifest)), "hours": float(manifest.duration.sum() / 3600),
            "speakers": int(manifest.speaker.nunique()), "mean_seconds": float(manifest.duration.mean()),
            "max_seconds": float(manifest.duration.max())}


