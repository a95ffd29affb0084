"""Downloading a public set's files at their pinned commit, verified against their git blob ids.

A file is fetched to `<name>.part` beside its place in the cache and gets its own name only once its git blob
id (sha1 over `blob <size>\\0` and the bytes) matches the registry's: a file with its own name is a verified
one, and a later run trusts nothing else. A transfer cut short keeps its `.part`, and the next fetch resumes
it with an HTTP range request; a file that arrives whole but with another hash is deleted. Files downloaded by
hand are verified the same way (`copy_verified`).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from mbkit.utils import progress_bar

BASE_URL = "https://raw.githubusercontent.com"  # the repositories' raw files; MBKIT_FETCH_URL replaces it
_CHUNK = 1 << 20


class FetchError(ValueError):
    """A file could not be fetched or verified; the message says what to do."""


def base_url() -> str:
    return os.environ.get("MBKIT_FETCH_URL", BASE_URL).rstrip("/")


def git_blob_id(path: str | os.PathLike) -> str:
    """The git blob id of a file: sha1 over b"blob <size>\\0" followed by its bytes."""
    path = Path(path)
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verify(part: Path, final: Path, blob: str, what: str) -> None:
    got = git_blob_id(part)
    if got != blob:
        part.unlink()
        raise FetchError(f"{what} does not match its pinned git blob id (expected {blob}, got {got}): it is not the "
                         "file of the pinned commit, and it was not kept; fetch it again, or check the file you "
                         "downloaded by hand")
    part.replace(final)


def download(url: str, final: Path, blob: str, size: int | None, progress: bool | str = "auto") -> Path:
    """Fetch `url` into `final` unless a verified copy is there, resuming a `.part` left by a cut transfer."""
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part is already whole: verify it
            _verify(part, final, blob, url)
            return final
        raise FetchError(f"{url}: the server answered {e.code} {e.reason}; check that the registry's commit and path "
                         "still exist there, or download the file by hand and use --from") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise FetchError(f"could not reach {url.split('/')[2]} ({reason}); check the network, or download the set's "
                         "files by hand and run `python -m mbkit data fetch NAME --from DIR`") from None
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None else size
        bar = progress_bar(progress, total=expected, initial=have, unit="B", unit_scale=True, desc=final.name)
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (http.client.IncompleteRead, OSError):
                        break
                    if not chunk:
                        break
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    got = part.stat().st_size
    if expected is not None and got < expected:
        raise FetchError(f"the download of {url} stopped after {got:,} of {expected:,} bytes; the part is kept in "
                         f"{part}: run the same command again to resume it")
    _verify(part, final, blob, url)
    return final


def copy_verified(source: Path, final: Path, blob: str) -> Path:
    """Copy a file downloaded by hand into the cache, verified against `blob` (nothing unverified is kept)."""
    if not source.is_file():
        raise FetchError(f"{source}: no such file; the folder given with --from must hold the set's files under their "
                         "repository paths")
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    shutil.copyfile(source, part)
    _verify(part, final, blob, str(source))
    return final
