"""`librispeech.extract` checks every member before writing anything: archives that try to leave are refused."""

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ds2_helpers import librispeech as ls
from ds2_helpers.download import DownloadError


def add(tar: tarfile.TarFile, name: str, *, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"") -> None:
    """Append one member of any type, as a hostile archive would hold it."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mode = kind, link, len(data), 0o755 if kind == tarfile.DIRTYPE else 0o644
    tar.addfile(info, io.BytesIO(data) if data else None)


def archive(path: Path, build) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return path


@pytest.fixture
def folders(tmp_path):
    """dest/ to extract into, and outside/ beside it that must stay empty."""
    (tmp_path / "dest").mkdir()
    (tmp_path / "outside").mkdir()
    return tmp_path / "dest", tmp_path / "outside"


def refused(path: Path, dest: Path, outside: Path, member: str) -> str:
    with pytest.raises(DownloadError) as info:
        ls.extract(path, dest, progress=False)
    message = str(info.value)
    assert str(path) in message and member in message and "download it again" in message
    assert list(dest.iterdir()) == [], "nothing may be extracted from a refused archive"
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted(["dest", "outside", path.name])
    return message


def test_realpath_overflow_symlink_chain_is_refused(folders, tmp_path):
    """CVE-2025-4517: symlinks whose expansion overflows PATH_MAX fool filter="data" (Python < 3.11.13) into
    writing through `escape` into the folder beside the destination."""
    dest, outside = folders
    steps = "abcdefghijklmnop"
    component = "d" * ((os.pathconf(tmp_path, "PC_PATH_MAX") - len(str(dest.resolve())) - 1) // (len(steps) + 1))

    def build(tar):
        path = ""
        for step in steps:
            add(tar, os.path.join(path, component), kind=tarfile.DIRTYPE)
            add(tar, os.path.join(path, step), kind=tarfile.SYMTYPE, link=component)
            path = os.path.join(path, component)
        top = os.path.join(*steps, "l" * 254)
        add(tar, top, kind=tarfile.SYMTYPE, link=os.path.join(*[".."] * len(steps)))  # really dest itself
        add(tar, "escape", kind=tarfile.SYMTYPE, link=os.path.join(top, "..", "outside"))
        add(tar, "escape/newfile", data=b"written outside the destination")

    refused(archive(tmp_path / "cve.tar.gz", build), dest, outside, "'a'")


@pytest.mark.parametrize("name, kind, link, member", [
    ("/tmp/ds2-absolute-path-test", tarfile.REGTYPE, "", "/tmp/ds2-absolute-path-test"),
    ("LibriSpeech/../../outside/x.txt", tarfile.REGTYPE, "", "LibriSpeech/../../outside/x.txt"),
    ("LibriSpeech/hard", tarfile.LNKTYPE, "LibriSpeech/README.TXT", "LibriSpeech/hard"),
    ("LibriSpeech/soft", tarfile.SYMTYPE, "README.TXT", "LibriSpeech/soft"),
    ("LibriSpeech/fifo", tarfile.FIFOTYPE, "", "LibriSpeech/fifo"),
    ("LibriSpeech/" + "x" * 256, tarfile.REGTYPE, "", "xxxx"),
])
def test_unsafe_members_refuse_the_whole_archive(folders, tmp_path, name, kind, link, member):
    dest, outside = folders

    def build(tar):
        add(tar, "LibriSpeech", kind=tarfile.DIRTYPE)
        add(tar, "LibriSpeech/README.TXT", data=b"read me\n")  # a good member first: it must not be written either
        add(tar, name, kind=kind, link=link, data=b"x" if kind == tarfile.REGTYPE else b"")

    refused(archive(tmp_path / "bad.tar.gz", build), dest, outside, member)
    assert not Path("/tmp/ds2-absolute-path-test").exists()


def test_damaged_archive_is_a_download_error(folders, tmp_path):
    dest, _ = folders
    (tmp_path / "cut.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    with pytest.raises(DownloadError, match="cut.tar.gz.*download it again"):
        ls.extract(tmp_path / "cut.tar.gz", dest, progress=False)


def test_a_librispeech_layout_archive_still_extracts(folders, tmp_path):
    dest, outside = folders
    src = tmp_path / "src" / "LibriSpeech" / "dev-clean" / "84" / "121123"
    src.mkdir(parents=True)
    sf.write(src / "84-121123-0000.flac", np.zeros(16000, np.float32), 16000)
    (src / "84-121123.trans.txt").write_text("84-121123-0000 HELLO WORLD\n")
    with tarfile.open(tmp_path / "ok.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "LibriSpeech", arcname="LibriSpeech")
    ls.extract(tmp_path / "ok.tar.gz", dest, progress=False)
    chapter = dest / "LibriSpeech" / "dev-clean" / "84" / "121123"
    assert (chapter / "84-121123.trans.txt").read_text() == "84-121123-0000 HELLO WORLD\n"
    assert sf.info(str(chapter / "84-121123-0000.flac")).frames == 16000
    assert list(outside.iterdir()) == []


def test_a_link_already_in_the_destination_is_not_followed(folders, tmp_path):
    """Plain members are refused too when a symlink already in `dest` would carry them outside it."""
    dest, outside = folders
    (dest / "LibriSpeech").symlink_to(outside)
    path = archive(tmp_path / "plain.tar.gz", lambda tar: add(tar, "LibriSpeech/README.TXT", data=b"read me\n"))
    with pytest.raises(DownloadError, match="'LibriSpeech/README.TXT' is a path that a symbolic link already in"):
        ls.extract(path, dest, progress=False)
    assert list(outside.iterdir()) == []
