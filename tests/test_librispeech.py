import hashlib
import http.server
import io
import shutil
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
