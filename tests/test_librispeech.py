import hashlib
import http.server
import io
import os
import shutil
import stat
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ds2_helpers import download as dl
from ds2_helpers import librispeech as ls


def make_tree(root: Path) -> Path:
    """A LibriSpeech-layout subset with one of each problem a real download can have."""
    chap = root / "dev-clean" / "84" / "121123"
    chap.mkdir(parents=True)
    lines = []
    for i, (seconds, text) in enumerate([(1.0, "HELLO WORLD"), (0.5, "SHORT ONE"), (0.7, "ROOM 101"),
                                         (0.6, ""), (0.8, "BROKEN AUDIO")]):
        utt = f"84-121123-{i:04d}"
        if text != "BROKEN AUDIO":
            sf.write(chap / f"{utt}.flac", np.zeros(int(seconds * 16000), np.float32), 16000)
        else:
            (chap / f"{utt}.flac").write_bytes(b"truncated")
        lines.append(f"{utt} {text}")
    sf.write(chap / "84-121123-0009.flac", np.zeros(16000, np.float32), 16000)  # no transcript line
    (chap / "84-121123.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_manifest_skips_and_reports_each_bad_file(tmp_path):
    root = make_tree(tmp_path / "LibriSpeech")
    out = tmp_path / "dev.csv"
    report = ls.build_manifest(root, "dev-clean", out)
    frame = ls.read_manifest(out)
    assert list(frame.columns) == ls.MANIFEST_COLUMNS
    assert list(frame.transcript) == ["SHORT ONE", "HELLO WORLD"]  # sorted by duration
    assert list(frame.duration) == [0.5, 1.0] and frame.speaker[0] == "84" and frame.chapter[0] == "121123"
    text = "\n".join(report.problems)
    assert "84-121123-0002.flac: transcript has characters outside the alphabet '01'" in text
    assert "empty transcript for 84-121123-0003" in text
    assert "84-121123-0004.flac: unreadable audio" in text
    assert "84-121123-0009.flac: no transcript line" in text
    assert len(report.problems) == 4


def test_strict_fails_and_keeps_the_old_manifest(tmp_path):
    root = make_tree(tmp_path)
    out = tmp_path / "dev.csv"
    out.write_text("previous manifest\n")
    with pytest.raises(ls.ManifestError, match="4 problem"):
        ls.build_manifest(root, "dev-clean", out, strict=True)
    assert out.read_text() == "previous manifest\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_subset_names_the_download_command(tmp_path):
    with pytest.raises(ls.ManifestError, match="librispeech download --subset test-other"):
        ls.build_manifest(tmp_path, "test-other", tmp_path / "x.csv")


def test_mini_corpus_manifest_and_zoo_csv(tiny_corpus, tmp_path):
    frame = ls.read_manifest(tiny_corpus / "train.csv")
    assert frame.duration.is_monotonic_increasing and Path(frame.audio_path[0]).exists()
    zoo = ls.write_zoo_manifest(frame, tmp_path / "zoo.csv")
    lines = zoo.read_text().splitlines()
    assert len(lines) == len(frame)
    wav, txt = lines[0].split(",")
    assert Path(wav).exists() and Path(txt).read_text() == frame.transcript[0]


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static server that honours Range requests, like openslr's."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_resumes_a_partial_file_and_checks_md5(server, tmp_path):
    root, url = server
    payload = bytes(range(256)) * 1000
    (root / "blob.bin").write_bytes(payload)
    dest = tmp_path / "dl" / "blob.bin"
    dest.parent.mkdir()
    (dest.parent / "blob.bin.part").write_bytes(payload[:1234])  # an interrupted earlier run
    md5 = hashlib.md5(payload).hexdigest()
    assert dl.download(f"{url}/blob.bin", dest, md5=md5, progress=False).read_bytes() == payload
    assert not (dest.parent / "blob.bin.part").exists()
    with pytest.raises(dl.DownloadError, match="does not match"):
        dl.download(f"{url}/blob.bin", tmp_path / "other.bin", md5="0" * 32, progress=False)
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.download(f"{url}/missing.bin", tmp_path / "m.bin", progress=False)


def test_download_subset_fetches_verifies_and_extracts(server, tmp_path, monkeypatch):
    root, url = server
    tree = make_tree(tmp_path / "src" / "LibriSpeech")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tree, arcname="LibriSpeech")
    (root / "dev-clean.tar.gz").write_bytes(buf.getvalue())
    monkeypatch.setattr(ls, "OPENSLR", url)
    monkeypatch.setitem(ls.SUBSETS, "dev-clean", hashlib.md5(buf.getvalue()).hexdigest())
    target = ls.download_subset("dev-clean", tmp_path / "data", progress=False)
    assert target == tmp_path / "data" / "LibriSpeech" / "dev-clean"
    assert (target / "84" / "121123" / "84-121123.trans.txt").exists()
    report = ls.build_manifest(tmp_path / "data", "dev-clean", tmp_path / "m.csv")  # finds LibriSpeech/ itself
    assert len(report.rows) == 2
    shutil.rmtree(target)  # extraction is skipped only when the marker exists


def test_subset_urls_are_openslr():
    assert ls.subset_url("train-clean-100") == "https://www.openslr.org/resources/12/train-clean-100.tar.gz"
    with pytest.raises(ValueError, match="unknown subset"):
        ls.subset_url("train-clean-999")


def test_pretrained_checkpoint_download_checks_its_size(server, tmp_path):
    from ds2_helpers import checkpoint

    root, url = server
    (root / "DeepSpeech.ckpt").write_bytes(b"\x00" * 5000)
    got = checkpoint.download_pretrained(tmp_path / "DeepSpeech.ckpt", url=f"{url}/DeepSpeech.ckpt",
                                         expected_size=5000, progress=False)
    assert got.stat().st_size == 5000
    with pytest.raises(dl.DownloadError, match="expected 6000"):
        checkpoint.download_pretrained(tmp_path / "other.ckpt", url=f"{url}/DeepSpeech.ckpt", expected_size=6000,
                                       progress=False)
    assert (tmp_path / "other.ckpt.part").exists()  # kept, so the next run resumes


def one_chapter(root: Path, lines: list[str], audio: list[str]) -> Path:
    """root/dev-clean/84/121123 with these .trans.txt lines and one second of audio per listed utterance id."""
    chap = root / "dev-clean" / "84" / "121123"
    chap.mkdir(parents=True)
    for utt in audio:
        sf.write(chap / f"{utt}.flac", np.zeros(16000, np.float32), 16000)
    (chap / "84-121123.trans.txt").write_text("".join(f"{line}\n" for line in lines))
    return chap


def test_a_repeated_utterance_id_is_reported_not_silently_replaced(tmp_path, capsys):
    from ds2_helpers import cli

    one_chapter(tmp_path, ["84-121123-0000 HELLO WORLD", "84-121123-0001 SAME TWICE", "84-121123-0002 FIRST TEXT",
                           "84-121123-0001 SAME TWICE", "84-121123-0002 OTHER TEXT"],
                ["84-121123-0000", "84-121123-0001", "84-121123-0002"])
    report = ls.build_manifest(tmp_path, "dev-clean", tmp_path / "m.csv")
    assert [r["utterance_id"] for r in report.rows] == ["84-121123-0000"]  # neither copy is guessed at
    assert len(report.problems) == 2
    assert report.problems[1].endswith("84-121123.trans.txt:5: 84-121123-0002 is listed again "
                                       f"(first at {tmp_path}/dev-clean/84/121123/84-121123.trans.txt:3); "
                                       "delete one of the two lines")
    assert cli.main(["manifest", "--root", str(tmp_path), "--subset", "dev-clean", "--out", str(tmp_path / "n.csv"),
                     "--quiet"]) == 0
    assert capsys.readouterr().err.count("skipped: ") == 2
    assert cli.main(["manifest", "--root", str(tmp_path), "--subset", "dev-clean", "--out", str(tmp_path / "s.csv"),
                     "--strict", "--quiet"]) == 2
    assert "2 problem(s)" in capsys.readouterr().err and not (tmp_path / "s.csv").exists()


def test_unknown_subset_lists_the_real_names_before_any_download(tmp_path, capsys, monkeypatch):
    from ds2_helpers import cli

    monkeypatch.setattr(ls, "download", lambda *a, **k: pytest.fail("no download for an unknown subset"))
    assert cli.main(["librispeech", "download", "--subset", "dev-clean", "train", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown subset 'train'; choose from train-clean-100, dev-clean, dev-other")
    assert len(err.splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_a_missing_folder_suggests_only_commands_that_exist(tmp_path):
    """`manifest --subset train` (a mini corpus split) must not suggest `librispeech download --subset train`."""
    with pytest.raises(ls.ManifestError) as info:
        ls.build_manifest(tmp_path, "train", tmp_path / "x.csv")
    message = str(info.value)
    assert "librispeech download" not in message and "minicorpus --out" in message and "train-clean-100" in message


@pytest.mark.parametrize("text", ["", ",".join(ls.MANIFEST_COLUMNS) + "\n"])
def test_an_empty_manifest_names_the_file(tmp_path, text):
    (tmp_path / "empty.csv").write_text(text)
    with pytest.raises(ls.ManifestError, match=r"empty\.csv: .*python -m ds2_helpers manifest"):
        ls.read_manifest(tmp_path / "empty.csv")


def test_a_scan_that_skips_everything_says_what_it_skipped(tmp_path, capsys):
    from ds2_helpers import cli

    one_chapter(tmp_path, ["84-121123-0000 ROOM 101"], ["84-121123-0000", "84-121123-0001"])
    out = tmp_path / "m.csv"
    assert cli.main(["manifest", "--root", str(tmp_path), "--subset", "dev-clean", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}/dev-clean: no usable utterances, all 2 problem(s) skipped")
    assert "84-121123-0000.flac: transcript has characters" in err and "84-121123-0001.flac: no transcript" in err
    assert "Traceback" not in err and not out.exists()
    (tmp_path / "empty" / "dev-clean" / "84").mkdir(parents=True)
    with pytest.raises(ls.ManifestError, match="empty/dev-clean: no utterances found .* check --root and --subset"):
        ls.build_manifest(tmp_path / "empty", "dev-clean", out)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_manifests_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    one_chapter(tmp_path, ["84-121123-0000 HELLO"], ["84-121123-0000"])
    old = os.umask(umask)
    try:
        ls.build_manifest(tmp_path, "dev-clean", tmp_path / "m.csv")
        ls.write_zoo_manifest(ls.read_manifest(tmp_path / "m.csv"), tmp_path / "zoo.csv")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.csv").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "zoo.csv").stat().st_mode) == mode


def test_an_unwritable_output_is_one_clear_error(tmp_path, capsys, monkeypatch):
    from ds2_helpers import cli

    one_chapter(tmp_path, ["84-121123-0000 HELLO"], ["84-121123-0000"])
    (tmp_path / "file.txt").write_text("keep me\n")
    args = ["manifest", "--root", str(tmp_path), "--subset", "dev-clean", "--quiet", "--out"]
    assert cli.main(args + [str(tmp_path / "file.txt" / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {tmp_path}/file.txt/x.csv: cannot be written, {tmp_path}/file.txt is a file and not a "
                   "folder; choose another path\n")
    assert (tmp_path / "file.txt").read_text() == "keep me\n"
    assert cli.main(args + [str(tmp_path)]) == 2
    assert "is a folder; give a file name for the manifest" in capsys.readouterr().err

    def denied(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ls, "atomic_write_text", denied)  # as a read-only folder would (tests may run as root)
    assert cli.main(args + [str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}/m.csv: cannot be written (Permission denied); check that folder's")
    assert "Traceback" not in err


def test_download_subset_marks_only_a_finished_extraction(server, tmp_path, monkeypatch):
    root, url = server
    monkeypatch.setattr(ls, "OPENSLR", url)

    def publish(members: dict[str, bytes]) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                if name.endswith("/link"):
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc"
                tar.addfile(info, io.BytesIO(data))
        (root / "dev-clean.tar.gz").write_bytes(buf.getvalue())
        (tmp_path / "data" / "dev-clean.tar.gz").unlink(missing_ok=True)
        monkeypatch.setitem(ls.SUBSETS, "dev-clean", hashlib.md5(buf.getvalue()).hexdigest())

    target = tmp_path / "data" / "LibriSpeech" / "dev-clean"
    publish({"LibriSpeech/dev-clean/84/121123/a.txt": b"x", "LibriSpeech/dev-clean/84/link": b""})
    with pytest.raises(dl.DownloadError, match="'LibriSpeech/dev-clean/84/link' is a symbolic link"):
        ls.download_subset("dev-clean", tmp_path / "data", progress=False)
    assert not (target / ".extracted").exists() and not (target / "84").exists()
    with pytest.raises(ls.ManifestError, match="extraction did not finish; run .*librispeech download --subset "
                                               f"dev-clean --root {tmp_path / 'data'}` again"):
        ls.build_manifest(tmp_path / "data", "dev-clean", tmp_path / "m.csv")
    publish({"LibriSpeech/dev-other/84/121123/a.txt": b"x"})
    with pytest.raises(dl.DownloadError, match="holds no LibriSpeech/dev-clean/"):
        ls.download_subset("dev-clean", tmp_path / "data", progress=False)
    assert not (target / ".extracted").exists()
    publish({"LibriSpeech/dev-clean/84/121123/a.txt": b"x"})
    assert ls.download_subset("dev-clean", tmp_path / "data", progress=False) == target
    assert sorted(p.name for p in target.iterdir()) == [".extracted", "84"]


def test_an_utterance_id_without_speaker_and_chapter_is_reported(tmp_path):
    chap = one_chapter(tmp_path, ["84-121123-0000 HELLO WORLD", "oddname SOME TEXT"], ["84-121123-0000"])
    sf.write(chap / "oddname.flac", np.zeros(16000, np.float32), 16000)
    report = ls.build_manifest(tmp_path, "dev-clean", tmp_path / "m.csv")
    assert [r["utterance_id"] for r in report.rows] == ["84-121123-0000"]
    assert len(report.problems) == 1 and "'oddname' is not <speaker>-<chapter>-<number>" in report.problems[0]
