"""LibriSpeech: download and verify archives, scan any LibriSpeech-layout tree into manifests."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import soundfile as sf

from ds2_helpers.atomic import atomic_write_text  # the project's one atomic writer
from ds2_helpers.download import download
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
        raise ValueError(f"unknown subset {subset!r}; choose from {', '.join(SUBSETS)}")
    return f"{OPENSLR}/{subset}.tar.gz"


def download_subset(subset: str, root: str | Path, *, progress: bool = True, keep_archive: bool = True) -> Path:
    """Download (resumable, MD5-checked) and extract a subset; returns root/LibriSpeech/<subset>."""
    root = Path(root)
    archive = download(subset_url(subset), root / f"{subset}.tar.gz", md5=SUBSETS[subset], progress=progress)
    target = root / "LibriSpeech" / subset
    done = target / ".extracted"
    if not done.exists():
        extract(archive, root, progress=progress)
        done.touch()
    if not keep_archive:
        archive.unlink()
    return target


def extract(archive: str | Path, dest: str | Path, *, progress: bool = True) -> None:
    """Extract a .tar.gz safely (no paths escaping `dest`), with a progress bar over members."""
    from tqdm.auto import tqdm

    dest = Path(dest)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tqdm(tar, desc=f"extracting {Path(archive).name}", unit="file", disable=not progress):
            tar.extract(member, dest, filter="data")


def resolve_subset_dir(root: str | Path, subset: str) -> Path:
    """root/subset, or root/LibriSpeech/subset as the archives extract."""
    root = Path(root)
    for candidate in (root / subset, root / "LibriSpeech" / subset):
        if candidate.is_dir():
            return candidate
    raise ManifestError(f"{root / subset}: no such folder; download it with "
                        f"`python -m ds2_helpers librispeech download --subset {subset} --root {root}` "
                        "or build the mini corpus with `python -m ds2_helpers minicorpus`")


def _read_transcripts(trans: Path, report: ScanReport) -> dict[str, str]:
    """utterance id -> normalised transcript for one chapter's .trans.txt."""
    out = {}
    for n, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        utt, _, text = line.strip().partition(" ")
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
    transcripts: dict[str, str] = {}
    for trans in trans_files:
        transcripts.update(_read_transcripts(trans, report))
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
        speaker, chapter_id = utt.split("-")[:2]
        report.rows.append({"audio_path": str(path.resolve()), "transcript": text, "duration": round(duration, 4),
                            "speaker": speaker, "chapter": chapter_id, "utterance_id": utt})


def scan(root: str | Path, subset: str, *, progress: bool = False) -> ScanReport:
    """Scan root/<subset>/<speaker>/<chapter>/ into manifest rows plus a list of problems."""
    from tqdm.auto import tqdm

    base = resolve_subset_dir(root, subset)
    report = ScanReport()
    chapters = sorted(p for p in base.glob("*/*") if p.is_dir())
    for chapter in tqdm(chapters, desc=f"scanning {subset}", unit="chapter", disable=not progress):
        scan_chapter(chapter, report)
    report.rows.sort(key=lambda r: (r["duration"], r["utterance_id"]))
    return report


def build_manifest(root: str | Path, subset: str, out: str | Path, *, strict: bool = False,
                   progress: bool = False) -> ScanReport:
    """Scan and write the manifest CSV atomically; `strict` raises on any problem instead of skipping."""
    report = scan(root, subset, progress=progress)
    if strict and report.problems:
        raise ManifestError(f"{len(report.problems)} problem(s) in {subset} (nothing written to {out}):\n  "
                            + "\n  ".join(report.problems))
    if not report.rows:
        raise ManifestError(f"{resolve_subset_dir(root, subset)}: no usable utterances found")
    frame = pd.DataFrame(report.rows, columns=MANIFEST_COLUMNS)
    atomic_write_text(out, frame.to_csv(index=False))
    return report


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Load a manifest CSV written by `build_manifest`, checking its columns."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: no such manifest; build it with `python -m ds2_helpers manifest`")
    frame = pd.read_csv(path, dtype={"speaker": str, "chapter": str, "utterance_id": str, "transcript": str},
                        keep_default_na=False)
    missing = set(MANIFEST_COLUMNS) - set(frame.columns)
    if missing:
        raise ManifestError(f"{path}: missing columns {sorted(missing)}; rebuild it with "
                            "`python -m ds2_helpers manifest`")
    return frame


def write_zoo_manifest(manifest: pd.DataFrame, out: str | Path, txt_dir: str | Path | None = None) -> Path:
    """The model zoo's two-column `wav_path,txt_path` CSV (no header), one transcript file per utterance."""
    out = Path(out)
    txt_dir = Path(txt_dir) if txt_dir else out.with_suffix("").with_name(out.stem + "_txt")
    txt_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in manifest.itertuples(index=False):
        txt = txt_dir / f"{row.utterance_id}.txt"
        txt.write_text(row.transcript, encoding="utf-8")
        lines.append(f"{row.audio_path},{txt.resolve()}\n")
    atomic_write_text(out, "".join(lines))
    return out


def manifest_summary(manifest: pd.DataFrame) -> dict[str, float]:
    """Counts a student checks first: utterances, hours, speakers, mean and max duration."""
    return {"utterances": int(len(manifest)), "hours": float(manifest.duration.sum() / 3600),
            "speakers": int(manifest.speaker.nunique()), "mean_seconds": float(manifest.duration.mean()),
            "max_seconds": float(manifest.duration.max())}


