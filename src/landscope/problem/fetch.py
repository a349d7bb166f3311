"""Downloading a dataset so that a broken copy never lands: streamed to a partial file (progress bar in
bytes and rate), resumed with an HTTP Range request after an interruption (from zero when the server
ignores Range), verified against the registry's size and checksums before anything is unpacked,
unpacked into a staging folder and moved into place with one rename, all under a file lock so that two
jobs never fetch the same dataset at once. Any failure raises :class:`FetchError` naming the dataset,
the URL, what was expected and what was got, and what to do; what was already in place is not touched.

Torch-free and standard-library only (urllib). The rows come from :mod:`landscope.problem.catalog`.
Working files live in ``<data dir>/.landscope-fetch/``: ``<dataset>.lock``, ``<file>.part`` (kept after an
interruption, so the next attempt resumes) and the staging folders.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import http.client
import logging
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm.auto import tqdm

from landscope import __version__
from landscope.problem.catalog import Remote, Source, megabytes

WORK = ".landscope-fetch"
CHUNK = 1 << 20
# some hosts (the WikiText mirror) refuse urllib's default "Python-urllib/3.x" agent with 403
USER_AGENT = f"Mozilla/5.0 (compatible; landscope/{__version__}; dataset fetch)"
log = logging.getLogger("landscope")
RETRIABLE = (TimeoutError, socket.timeout, ConnectionError, http.client.IncompleteRead, http.client.RemoteDisconnected)


class FetchError(RuntimeError):
    """A dataset could not be fetched; the message says what, where, expected vs got and what to do."""


def what_to_do(src: Source, partial: Path | None = None) -> str:
    files = ", ".join(r.file for r in src.remotes)
    resume = f"run the same command again to resume from the partial file {partial}; " if partial else ""
    return (f"What to do: {resume}try again later, or fetch from a mirror that holds {files}: "
            f"`landscope data fetch {src.name} --url BASE` (downloads BASE/<file>, verified the same way); "
            f"or by hand: {src.manual}")


# ----------------------------------------------------------------------------------- public entry
def complete(folder: Path, src: Source) -> bool:
    return all((folder / f).is_file() for f in src.files)


def fetch_source(src: Source, base: Path, url: str | None = None, *, timeout_s: float = 60.0, attempts: int = 4,
                 progress: bool = True) -> dict:
    """Fetch dataset ``src`` into ``base/<src.folder>`` (``url``: a base URL used instead of the registry's).

    Returns a record (dataset, path, the verified downloads with URL and checksums, seconds). When another
    process holds the dataset's lock it waits, then returns at once if that process completed the folder.
    ``attempts`` counts the connections per URL (the later ones resume with Range).
    """
    if url is not None and urllib.parse.urlparse(url).scheme not in ("http", "https", "file"):
        raise FetchError(f"fetch {src.name}: --url must be an http(s):// or file:// URL, got {url!r}")
    target = base / src.folder
    work = base / WORK
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FetchError(f"fetch {src.name}: cannot create {work} ({err}); choose another place with --dest "
                         "(or the config's data_dir, or $LANDSCOPE_DATA)") from err
    t0 = time.perf_counter()
    with dataset_lock(work / f"{src.name}.lock", src.name):
        if complete(target, src):
            log.info(f"{src.name}: already in {target}")
            return {"dataset": src.name, "path": str(target), "downloads": [], "wall_s": time.perf_counter() - t0}
        if target.exists():
            missing = sorted(f for f in src.files if not (target / f).is_file())
            raise FetchError(f"fetch {src.name}: {target} exists but lacks {', '.join(missing)}; it was left as it "
                             f"is. Move it away (or complete it by hand) and fetch again. {what_to_do(src)}")
        _check_space(src, work)
        downloads = [_fetch_remote(src, r, work, url, timeout_s, attempts, progress) for r in src.remotes]
        stage = Path(tempfile.mkdtemp(dir=work, prefix=f"stage-{src.name}-"))
        try:
            _unpack(src, [Path(d["local"]) for d in downloads], stage / src.folder)
            _verify_unpacked(src, stage / src.folder)
            os.rename(stage / src.folder, target)  # one rename: the folder is complete or absent
        except OSError as err:
            raise FetchError(_os_message(src, err, stage)) from err
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        for d in downloads:
            Path(d.pop("local")).unlink(missing_ok=True)
    log.info(f"{src.name}: {megabytes(src.size)} verified and unpacked into {target}")
    return {"dataset": src.name, "path": str(target), "downloads": downloads, "wall_s": time.perf_counter() - t0}


@contextlib.contextmanager
def dataset_lock(path: Path, name: str):
    """An exclusive fcntl lock on ``path`` held for the block (the file stays: removing it would race)."""
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"{name}: another process is fetching it (lock {path}); waiting")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_space(src: Source, work: Path) -> None:
    need = src.size * 2 if src.archive != "none" else src.size  # the archive and what it unpacks to, roughly
    free = shutil.disk_usage(work).free
    if free < need:
        raise FetchError(f"fetch {src.name}: {work} has {megabytes(free)} free, {src.name} needs about "
                         f"{megabytes(need)} (download and unpacked files); nothing was downloaded. Free space or "
                         "fetch elsewhere with --dest DIR (and set the config's data_dir or $LANDSCOPE_DATA to DIR)")


def _os_message(src: Source, err: OSError, where: Path) -> str:
    if err.errno == errno.ENOSPC:
        return (f"fetch {src.name}: no space left on the device of {where} (needs about {megabytes(src.size)} "
                f"for the download plus the unpacked files); nothing was moved into place. Free space, or fetch "
                f"elsewhere with --dest DIR. {what_to_do(src)}")
    return f"fetch {src.name}: {where}: {err}; nothing was moved into place. {what_to_do(src)}"


# ----------------------------------------------------------------------------------- one remote file
def _fetch_remote(src: Source, remote: Remote, work: Path, base_url: str | None, timeout_s: float, attempts: int,
                  progress: bool) -> dict:
    """Download ``remote`` from the first URL that serves it; verify it. Returns its record with ``local``."""
    local = work / remote.file
    if local.is_file() and _verify(local, remote) is None:  # verified by an earlier attempt that stopped later
        return {"file": remote.file, "url": None, "size": remote.size, "md5": remote.md5, "sha256": remote.sha256,
                "local": str(local)}
    part = work / f"{remote.file}.part"
    failures = []
    for url in src.urls(remote, base_url):
        try:
            _download(url, part, remote, timeout_s, attempts, progress)
        except _Unreachable as err:
            failures.append(f"{url}: {err}")
            log.info(f"{src.name}: {url}: {err}")
            continue
        except _Interrupted as err:
            raise FetchError(f"fetch {src.name}: {url}: {err} (expected {remote.size} bytes). "
                             f"{what_to_do(src, part)}") from None
        except OSError as err:
            raise FetchError(_os_message(src, err, part)) from err
        got = _verify(part, remote)
        if got is not None:
            part.unlink(missing_ok=True)
            raise FetchError(f"fetch {src.name}: {url}: the file is not the published one: expected "
                             f"{_expected(remote)}; got {got}. The download was deleted; nothing in "
                             f"{work.parent} was changed. {what_to_do(src)}")
        os.replace(part, local)
        return {"file": remote.file, "url": url, "size": remote.size, "md5": remote.md5, "sha256": remote.sha256,
                "local": str(local)}
    raise FetchError(f"fetch {src.name}: no URL served {remote.file} ({_expected(remote)}): "
                     + "; ".join(failures) + f". {what_to_do(src)}")


class _Unreachable(Exception):
    """This URL does not serve the file (HTTP error, unknown host, refused): try the next one."""


class _Interrupted(Exception):
    """The transfer kept breaking off; the partial file is kept for the next attempt."""


def _download(url: str, part: Path, remote: Remote, timeout_s: float, attempts: int, progress: bool) -> None:
    """Stream ``url`` into ``part`` until it holds the whole file, resuming with Range after a break.

    The whole file is the published size; a server announcing another size is refused at once, except
    for a .gz whose content is checked (a recompressed copy may have another size: the announced one counts).
    """
    flexible = remote.content_sha256 is not None
    expected = None if flexible else remote.size
    reason = ""
    for attempt in range(attempts):
        have = part.stat().st_size if part.is_file() else 0
        if expected is not None and have > expected:
            part.unlink()
            have = 0
        if expected is not None and have == expected:
            return
        headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={have}-"} if have else {})}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
                resumed = bool(have) and resp.status == 206 and _range_start(resp) == have
                total = _announced_size(resp, resumed)
                if total is not None and total != remote.size and not flexible:
                    part.unlink(missing_ok=True)
                    raise _Unreachable(f"serves {total} bytes, the published file has {remote.size}")
                expected = total or expected or remote.size
                if have and not resumed:
                    log.info(f"{url}: the server does not resume (HTTP {resp.status}); starting again from byte 0")
                    have = 0
                with open(part, "ab" if resumed else "wb") as out, _bar(expected, have, remote.file, progress) as bar:
                    while chunk := resp.read(CHUNK):
                        out.write(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as err:
            if err.code == 416:  # nothing after byte `have`: the server's copy is shorter than the partial file
                part.unlink(missing_ok=True)
                if not flexible:
                    raise _Unreachable(f"truncated: the server has {have} bytes or fewer, the published file "
                                       f"{remote.size}; the partial file was deleted") from None
                reason = "the partial file is longer than the server's copy; deleted"
            elif err.code >= 500 and attempt + 1 < attempts:
                reason = f"HTTP {err.code} {err.reason}"
            else:
                raise _Unreachable(f"HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            if not isinstance(err.reason, RETRIABLE):
                raise _Unreachable(f"{err.reason}") from None
            reason = _describe(err.reason, timeout_s)
        except RETRIABLE as err:
            reason = _describe(err, timeout_s)
        else:
            got = part.stat().st_size
            if got == expected:
                return
            if got > expected:
                part.unlink()
                raise _Unreachable(f"sent {got} bytes, more than the {expected} announced; deleted")
            reason = f"the connection closed after {got} of {expected} bytes"
        have = part.stat().st_size if part.is_file() else 0
        if attempt + 1 < attempts:
            log.info(f"{url}: {reason}; resuming from byte {have} (attempt {attempt + 2} of {attempts})")
    have = part.stat().st_size if part.is_file() else 0
    raise _Interrupted(f"{reason}; {attempts} attempts got {have} of {expected or remote.size} bytes")


def _announced_size(resp, resumed: bool) -> int | None:
    """The whole file's size as the response states it (Content-Range total, else Content-Length)."""
    try:
        if resumed:
            return int(resp.headers.get("Content-Range", "").rsplit("/", 1)[1])
        return int(resp.headers["Content-Length"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def _describe(err: BaseException, timeout_s: float) -> str:
    if isinstance(err, (TimeoutError, socket.timeout)):
        return f"timed out (no data for {timeout_s:g} s)"
    return f"{type(err).__name__}: {err}"


def _range_start(resp) -> int | None:
    value = resp.headers.get("Content-Range", "")  # "bytes 100-999/1000"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _bar(total: int, have: int, desc: str, progress: bool):
    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not progress, mininterval=0.5 if interactive else 10.0, leave=interactive)


# ----------------------------------------------------------------------------------- verification
def file_hashes(path: Path) -> tuple[str, str]:
    """(MD5, SHA-256) of a file, read once in chunks."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _expected(remote: Remote) -> str:
    parts = [f"{remote.size} bytes"] + [f"{k} {v}" for k, v in (("SHA-256", remote.sha256), ("MD5", remote.md5)) if v]
    return ", ".join(parts)


def _verify(path: Path, remote: Remote) -> str | None:
    """None when ``path`` is the published file (size and every published checksum match, or, for a .gz
    whose archive checksums differ, its decompressed content has the published SHA-256); else what was got."""
    size = path.stat().st_size
    md5, sha = file_hashes(path)
    if size == remote.size and remote.sha256 in (None, sha) and remote.md5 in (None, md5):
        return None
    if remote.content_sha256 is not None:
        try:
            with gzip.open(path, "rb") as fh:
                content = hashlib.sha256()
                while chunk := fh.read(CHUNK):
                    content.update(chunk)
            if content.hexdigest() == remote.content_sha256:
                return None  # recompressed (a Debian copy, another mirror): the content is the published one
        except (OSError, EOFError):
            pass
    return f"{size} bytes, SHA-256 {sha}, MD5 {md5}"


def _verify_unpacked(src: Source, folder: Path) -> None:
    for name, md5 in src.files.items():
        path = folder / name
        if not path.is_file():
            raise FetchError(f"fetch {src.name}: the archive holds no {src.inside}/{name}: it is not the published "
                             f"archive. {what_to_do(src)}")
        if md5 is not None and (got := file_hashes(path)[0]) != md5:
            raise FetchError(f"fetch {src.name}: unpacked {name} has MD5 {got}, expected {md5}: not the published "
                             f"archive. Nothing was moved into place. {what_to_do(src)}")


# ----------------------------------------------------------------------------------- unpacking
def _unpack(src: Source, archives: list[Path], out: Path) -> None:
    """Write ``src.files`` into ``out``: the downloads themselves (archive none), or those members of the
    archive's ``src.inside`` folder (nothing else is extracted, so no member path can escape ``out``)."""
    out.mkdir(parents=True)
    if src.archive == "none":
        for path in archives:
            os.replace(path, out / path.name)
        return
    wanted = {f"{src.inside}/{name}": name for name in src.files}
    try:
        if src.archive == "tar.gz":
            with tarfile.open(archives[0], "r:gz") as tar:
                for member in tar:
                    name = wanted.get(member.name.removeprefix("./"))
                    if name is not None and member.isfile():
                        with tar.extractfile(member) as fh, open(out / name, "wb") as dst:
                            shutil.copyfileobj(fh, dst, CHUNK)
        else:
            with zipfile.ZipFile(archives[0]) as zf:
                for info in zf.infolist():
                    name = wanted.get(info.filename)
                    if name is not None and not info.is_dir():
                        with zf.open(info) as fh, open(out / name, "wb") as dst:
                            shutil.copyfileobj(fh, dst, CHUNK)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise FetchError(f"fetch {src.name}: {archives[0].name} cannot be unpacked ({type(err).__name__}: {err}); "
                         f"nothing was moved into place. {what_to_do(src)}") from err
