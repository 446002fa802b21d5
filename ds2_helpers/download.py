"""Resumable HTTP downloads with progress, size and MD5 checks (LibriSpeech archives, DeepSpeech.ckpt)."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path


class DownloadError(RuntimeError):
    """A download that failed its checks; the partial file is kept so the next call resumes."""


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    """MD5 of a file, read in chunks (archives are gigabytes)."""
    digest = hashlib.md5()  # noqa: S324 - matches the publisher's checksum list
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _remote_size(response) -> int | None:
    """Total size from Content-Range (resumed) or Content-Length (fresh)."""
    content_range = response.headers.get("Content-Range")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def download(url: str, dest: str | Path, *, md5: str | None = None, expected_size: int | None = None,
             progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest`, resuming a `.part` file; verify size and MD5 before the final rename."""
    from tqdm.auto import tqdm

    dest = Path(dest)
    if dest.exists() and (md5 is None or md5sum(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - fixed https URLs
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range not satisfiable: the part is already complete
            response = None
        else:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL or try again later") from exc
    except OSError as exc:
        raise DownloadError(f"{url}: {exc}; check the network and run the same command again to resume") from exc
    total = expected_size
    if response is not None:
        with response:
            if have and response.status != 206:  # server ignored the range: start again
                have = 0
            total = total or _remote_size(response)
            mode = "ab" if have else "wb"
            with open(part, mode) as fh, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                             desc=dest.name, disable=not progress) as bar:
                while block := response.read(1 << 16):
                    fh.write(block)
                    bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"{part}: {size} bytes, expected {total}; run the same command again to resume")
    if md5 is not None:
        got = md5sum(part)
        if got != md5:
            part.unlink()
            raise DownloadError(f"{url}: MD5 {got} does not match the published {md5}; "
                                "the corrupt file was removed, run the command again")
    part.replace(dest)
    return dest
