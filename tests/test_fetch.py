"""Fetching datasets through a real HTTP server on 127.0.0.1 (a thread of the test), serving fixtures in
each publisher's exact format: success, resume after a cut connection (with and without Range support),
a bad checksum, a truncated file, 404, a timeout, a full disk, two fetches at once, the CLI, and the DAG
(`if_data_missing: fetch`) that fetches, trains and reports. The registry rows keep their real checksums;
each test points a copy of a row at the fixtures (same file names, folder and archive type)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import json
import logging
import struct
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_snakemake
from test_data_formats import Py2Pickler

from landscope.problem import catalog, sources
from landscope.problem.catalog import CATALOG, Remote
from landscope.problem.fetch import WORK, FetchError, fetch_source


# ----------------------------------------------------------------------------------- the server
class Served:
    """What the server holds and how it misbehaves; every request is recorded as (path, Range header)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges = True  # honour Range requests
        self.cuts: dict[str, list[int]] = {}  # path -> bytes sent before closing, one entry per request
        self.delay_s = 0.0  # before the body
        self.chunk_delay_s = 0.0  # between 64 KiB chunks of the body
        self.requests: list[tuple[str, str | None]] = []
        self.bytes_sent = 0


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        served: Served = self.server.served
        rng = self.headers.get("Range")
        served.requests.append((self.path, rng))
        body = served.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng and served.ranges else 0
        if start >= len(body) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        time.sleep(served.delay_s)
        cuts = served.cuts.get(self.path)
        if cuts:
            payload = payload[:cuts.pop(0)]  # then the connection closes before Content-Length bytes
        for i in range(0, len(payload), 1 << 16):
            self.wfile.write(payload[i:i + (1 << 16)])
            served.bytes_sent += len(payload[i:i + (1 << 16)])
            time.sleep(served.chunk_delay_s)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.served = Served()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.served.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd.served
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def isolated_locations(tmp_path, monkeypatch):
    monkeypatch.delenv("LANDSCOPE_DATA", raising=False)
    monkeypatch.delenv(catalog.SOURCES_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    # Debian's Fashion-MNIST (`sudo make data`) where the tests expect nothing installed
    monkeypatch.setattr(sources, "FASHION_SYSTEM_DIR", str(tmp_path / "no-system-install"))


# ----------------------------------------------------------------------------------- fixtures in the real formats
def md5(raw: bytes) -> str:
    return hashlib.md5(raw, usedforsecurity=False).hexdigest()


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def idx(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def py2_pickle(obj) -> bytes:
    """What Python 2's cPickle wrote for the CIFAR files (test_data_formats.Py2Pickler)."""
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_batch(n: int, label_key: bytes, n_classes: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"fixture", b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
             label_key: [int(v) for v in rng.integers(0, n_classes, size=n)], b"filenames": [b"x.png"] * n}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [int(v) for v in rng.integers(0, 20, size=n)]
    return py2_pickle(batch)


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    return buf.getvalue()


PTB_TEXT = {"ptb.train.txt": " the cat sat on the mat \n the N dogs <unk> \n" * 40,
            "ptb.valid.txt": " the cat sat \n" * 10, "ptb.test.txt": " the N mat \n" * 10}
WT2_TEXT = {"wiki.train.tokens": " \n = Title = \n the cat @-@ sat \n" * 40, "wiki.valid.tokens": " the cat \n" * 10,
            "wiki.test.tokens": " = Title = \n" * 10}


def fixture_files(name: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(remote file -> bytes served, unpacked file -> bytes) of dataset ``name`` in its publisher's format."""
    if name == "fashion_mnist":
        rng = np.random.default_rng(0)
        content = {"train-images-idx3-ubyte": idx(rng.integers(0, 256, (12, 28, 28))),
                   "train-labels-idx1-ubyte": idx(np.arange(12) % 10),
                   "t10k-images-idx3-ubyte": idx(rng.integers(0, 256, (4, 28, 28))),
                   "t10k-labels-idx1-ubyte": idx(np.arange(4))}
        files = {f"{stem}.gz": gzip.compress(raw, mtime=0) for stem, raw in content.items()}
        return files, files
    if name == "cifar10":
        inner = {f"data_batch_{i}": cifar_batch(4, b"labels", 10, i) for i in range(1, 6)}
        inner["test_batch"] = cifar_batch(4, b"labels", 10, 9)
        inner["batches.meta"] = py2_pickle({b"num_cases_per_batch": 4, b"num_vis": 3072,
                                            b"label_names": [f"c{i}".encode() for i in range(10)]})
        archive = tar_gz({**{f"cifar-10-batches-py/{k}": v for k, v in inner.items()},
                          "cifar-10-batches-py/readme.html": b"<html></html>"})
        return {"cifar-10-python.tar.gz": archive}, inner
    if name == "cifar100":
        inner = {"train": cifar_batch(6, b"fine_labels", 100, 1), "test": cifar_batch(2, b"fine_labels", 100, 2),
                 "meta": py2_pickle({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                     b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})}
        archive = tar_gz({**{f"cifar-100-python/{k}": v for k, v in inner.items()}, "cifar-100-python/file.txt~": b""})
        return {"cifar-100-python.tar.gz": archive}, inner
    if name == "ptb":
        files = {k: v.encode() for k, v in PTB_TEXT.items()}
        return files, files
    inner = {k: v.encode() for k, v in WT2_TEXT.items()}
    archive = zipped({**{f"wikitext-2/{k}": v for k, v in inner.items()}, "wikitext-2/README": b"x"})
    return {"wikitext-2-v1.zip": archive}, inner


def fixture_row(name: str, served: Served, prefix: str = "/pub"):
    """A copy of the registry row of ``name`` whose URL is the test server and whose checksums are the
    fixture's (file names, folder, archive type unchanged); the fixture files are put on the server."""
    real = CATALOG[name]
    files, unpacked = fixture_files(name)
    assert set(files) == {r.file for r in real.remotes} and set(unpacked) == set(real.files)
    for file, raw in files.items():
        served.files[f"{prefix}/{file}"] = raw
    remotes = tuple(Remote(r.file, len(files[r.file]), md5(files[r.file]), sha256(files[r.file]),
                           sha256(gzip.decompress(files[r.file])) if r.content_sha256 else None) for r in real.remotes)
    return dataclasses.replace(real, url=served.url + prefix, mirrors=(), remotes=remotes,
                               files={f: md5(unpacked[f]) if m else None for f, m in real.files.items()})


DATASETS = ["fashion_mnist", "cifar10", "cifar100", "ptb", "wikitext2"]


def leftovers(base: Path) -> list[str]:
    """Files in the working folder besides the lock files."""
    return sorted(p.name for p in (base / WORK).iterdir() if not p.name.endswith(".lock"))


# ----------------------------------------------------------------------------------- the registry
def test_registry_rows_hold_the_published_values():
    """One row per downloadable dataset, each with URL, size, checksums, licence and provenance; the
    archive checksums are the published ones (spot-checked against the values copied in DATA.md)."""
    assert sorted(CATALOG) == sorted(DATASETS) and all(sources.SOURCES[n].downloads for n in CATALOG)
    for row in CATALOG.values():
        assert row.url.startswith(("http://", "https://")) and row.licence and row.provenance and row.manual
        for r in row.remotes:
            assert r.size > 0 and len(r.md5) == 32 and (r.sha256 is None or len(r.sha256) == 64)
    assert CATALOG["cifar10"].remotes[0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert CATALOG["cifar100"].remotes[0].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert CATALOG["fashion_mnist"].remotes[0].md5 == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert sources.FASHION_SHA256["t10k-labels-idx1-ubyte"].startswith("0402a96d")
    assert CATALOG["wikitext2"].urls(CATALOG["wikitext2"].remotes[0]) == [
        "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
        "https://wikitext.smerity.com/wikitext-2-v1.zip"]
    assert all(catalog.Source.from_dict(row.to_dict()) == row for row in CATALOG.values())


def test_sources_file_replaces_rows(tmp_path, monkeypatch, server):
    row = fixture_row("ptb", server)
    path = tmp_path / "sources.json"
    path.write_text(json.dumps({"ptb": row.to_dict()}))
    monkeypatch.setenv(catalog.SOURCES_ENV, str(path))
    assert catalog.source("ptb") == row and catalog.source("cifar10") == CATALOG["cifar10"]
    path.write_text("{not json")
    with pytest.raises(ValueError, match="LANDSCOPE_SOURCES=.*not a readable JSON file"):
        catalog.source("ptb")


# ----------------------------------------------------------------------------------- success
@pytest.mark.parametrize("name", DATASETS)
def test_fetch_each_format_then_the_loader_reads_it(name, server, tmp_path):
    from landscope.problem import data  # torch: only to read what was fetched

    row = fixture_row(name, server)
    base = sources.fetch_home(None)  # no data_dir, no $LANDSCOPE_DATA: the user cache
    assert base == tmp_path / "xdg-cache" / "landscope"
    assert sources.availability_problem({"name": name}, None) is not None
    record = fetch_source(row, base, progress=False)
    assert sources.availability_problem({"name": name}, None) is None  # the loaders look where it landed
    folder = base / row.folder
    assert record["path"] == str(folder) and sorted(p.name for p in folder.iterdir()) == sorted(row.files)
    assert [d["url"] for d in record["downloads"]] == [f"{server.url}/pub/{r.file}" for r in row.remotes]
    assert leftovers(base) == []  # archives and staging folders are gone
    _, unpacked = fixture_files(name)
    assert all((folder / f).read_bytes() == raw for f, raw in unpacked.items())
    if name == "fashion_mnist":
        images = data.read_idx(folder / "train-images-idx3-ubyte.gz", row.remotes[0].content_sha256)
        assert images.shape == (12, 28, 28)
    else:
        ds = data.load_dataset({"name": name, **({"bptt": 3} if name in ("ptb", "wikitext2") else {})})
        # PTB: 40 x 12 tokens with <eos>, (480 - 1) // 3 windows; WikiText-2: 40 x (1 + 4 + 5) tokens
        assert len(ds) == {"cifar10": 20, "cifar100": 6, "ptb": 159, "wikitext2": 133}[name]
    n_requests = len(server.requests)
    assert fetch_source(row, base, progress=False)["downloads"] == [] and len(server.requests) == n_requests


def test_a_recompressed_gz_passes_by_its_content(server, tmp_path):
    """A mirror (or Debian) that recompressed Fashion-MNIST: other .gz bytes, the same IDX content."""
    row = fixture_row("fashion_mnist", server)
    for path, raw in list(server.files.items()):
        buf = io.BytesIO()
        with gzip.GzipFile(path.rsplit("/", 1)[1].removesuffix(".gz"), "wb", 1, buf, mtime=12345) as gz:
            gz.write(gzip.decompress(raw))  # a header with the file name, another level: other bytes, other size
        server.files[path] = buf.getvalue()
    assert any(len(server.files[f"/pub/{r.file}"]) != r.size for r in row.remotes)  # other sizes too
    folder = Path(fetch_source(row, tmp_path, progress=False)["path"])
    assert (folder / "t10k-labels-idx1-ubyte.gz").read_bytes() == server.files["/pub/t10k-labels-idx1-ubyte.gz"]


# ----------------------------------------------------------------------------------- interruptions
def test_resume_after_a_cut_connection_with_range(server, tmp_path, caplog):
    row = fixture_row("cifar10", server)
    size = row.remotes[0].size
    server.cuts["/pub/cifar-10-python.tar.gz"] = [size // 3]
    with caplog.at_level(logging.INFO, logger="landscope"):
        fetch_source(row, tmp_path, progress=False)
    assert server.requests == [("/pub/cifar-10-python.tar.gz", None),
                               ("/pub/cifar-10-python.tar.gz", f"bytes={size // 3}-")]
    assert server.bytes_sent == size  # nothing sent twice
    assert f"resuming from byte {size // 3}" in caplog.text
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_resume_in_a_later_run_keeps_the_partial_file(server, tmp_path):
    row = fixture_row("wikitext2", server)
    size = row.remotes[0].size
    server.cuts["/pub/wikitext-2-v1.zip"] = [size // 2]
    with pytest.raises(FetchError) as err:
        fetch_source(row, tmp_path, attempts=1, progress=False)
    text = str(err.value)
    assert text.startswith(f"fetch wikitext2: {server.url}/pub/wikitext-2-v1.zip: ")
    assert f"got {size // 2} of {size} bytes" in text and "run the same command again to resume" in text
    assert "--url BASE" in text and "wikitext.smerity.com" in text  # the mirror and the manual steps
    part = tmp_path / WORK / "wikitext-2-v1.zip.part"
    assert part.stat().st_size == size // 2 and not (tmp_path / "wikitext-2").exists()
    fetch_source(row, tmp_path, progress=False)
    assert server.requests[-1] == ("/pub/wikitext-2-v1.zip", f"bytes={size // 2}-") and not part.exists()
    assert (tmp_path / "wikitext-2" / "wiki.test.tokens").read_text() == WT2_TEXT["wiki.test.tokens"]


def test_a_server_without_range_support_restarts_from_zero(server, tmp_path, caplog):
    server.ranges = False
    row = fixture_row("cifar100", server)
    size = row.remotes[0].size
    server.cuts["/pub/cifar-100-python.tar.gz"] = [size // 2]
    with caplog.at_level(logging.INFO, logger="landscope"):
        fetch_source(row, tmp_path, progress=False)
    assert [r[1] for r in server.requests] == [None, f"bytes={size // 2}-"]
    assert server.bytes_sent == size // 2 + size  # the second answer was the whole file
    assert "does not resume (HTTP 200); starting again from byte 0" in caplog.text
    assert (tmp_path / "cifar-100-python" / "train").read_bytes() == fixture_files("cifar100")[1]["train"]


# ----------------------------------------------------------------------------------- faults
def test_a_checksum_mismatch_changes_nothing(server, tmp_path):
    row = fixture_row("cifar10", server)
    (tmp_path / "ptb").mkdir(parents=True)
    (tmp_path / "ptb" / "ptb.train.txt").write_text("already here\n")
    raw = bytearray(server.files["/pub/cifar-10-python.tar.gz"])
    raw[100] ^= 0xFF
    server.files["/pub/cifar-10-python.tar.gz"] = bytes(raw)
    with pytest.raises(FetchError) as err:
        fetch_source(row, tmp_path, progress=False)
    text = str(err.value)
    remote = row.remotes[0]
    assert text.startswith(f"fetch cifar10: {server.url}/pub/cifar-10-python.tar.gz: the file is not the published one")
    assert f"expected {remote.size} bytes, SHA-256 {remote.sha256}, MD5 {remote.md5}" in text
    assert f"got {remote.size} bytes, SHA-256 {sha256(bytes(raw))}, MD5 {md5(bytes(raw))}" in text
    assert "landscope data fetch cifar10 --url BASE" in text and "extract it so that" in text
    assert not (tmp_path / "cifar-10-batches-py").exists() and leftovers(tmp_path) == []
    assert (tmp_path / "ptb" / "ptb.train.txt").read_text() == "already here\n"


def test_an_unpacked_file_with_the_wrong_md5_is_not_moved_into_place(server, tmp_path):
    row = fixture_row("cifar100", server)
    row = dataclasses.replace(row, files={**row.files, "meta": "0" * 32})
    with pytest.raises(FetchError, match=r"fetch cifar100: unpacked meta has MD5 [0-9a-f]{32}, expected 0{32}"):
        fetch_source(row, tmp_path, progress=False)
    assert not (tmp_path / "cifar-100-python").exists()
    assert leftovers(tmp_path) == ["cifar-100-python.tar.gz"]  # verified: the next attempt does not download it


def test_a_truncated_file_on_the_server_is_reported(server, tmp_path):
    row = fixture_row("ptb", server)
    server.files["/pub/ptb.valid.txt"] = server.files["/pub/ptb.valid.txt"][:-7]
    with pytest.raises(FetchError) as err:
        fetch_source(row, tmp_path, progress=False)
    size = row.remotes[1].size
    assert f"no URL served ptb.valid.txt ({size} bytes" in str(err.value)
    assert f"ptb.valid.txt: serves {size - 7} bytes, the published file has {size}" in str(err.value)
    assert not (tmp_path / "ptb").exists() and leftovers(tmp_path) == ["ptb.train.txt"]  # verified, kept
    server.files["/pub/ptb.valid.txt"] = PTB_TEXT["ptb.valid.txt"].encode()
    server.requests.clear()
    fetch_source(row, tmp_path, progress=False)
    assert [r[0] for r in server.requests] == ["/pub/ptb.valid.txt", "/pub/ptb.test.txt"]  # train not again


def test_a_404_then_the_mirror(server, tmp_path):
    row = fixture_row("wikitext2", server, prefix="/mirror")
    gone = dataclasses.replace(row, url=server.url + "/original", mirrors=(server.url + "/mirror",))
    fetch_source(gone, tmp_path, progress=False)
    assert [r[0] for r in server.requests] == ["/original/wikitext-2-v1.zip", "/mirror/wikitext-2-v1.zip"]
    nowhere = dataclasses.replace(row, url=server.url + "/original", mirrors=())
    with pytest.raises(FetchError) as err:
        fetch_source(nowhere, tmp_path / "other", progress=False)
    assert (f"fetch wikitext2: no URL served wikitext-2-v1.zip ({row.remotes[0].size} bytes, SHA-256 "
            f"{row.remotes[0].sha256}") in str(err.value)
    assert f"{server.url}/original/wikitext-2-v1.zip: HTTP 404 Not Found" in str(err.value)
    assert "by hand: get wikitext-2-v1.zip" in str(err.value)


def test_a_timeout(server, tmp_path):
    row = fixture_row("ptb", server)
    server.delay_s = 1.0
    with pytest.raises(FetchError) as err:
        fetch_source(row, tmp_path, timeout_s=0.2, attempts=2, progress=False)
    assert f"fetch ptb: {server.url}/pub/ptb.train.txt: timed out (no data for 0.2 s)" in str(err.value)
    assert f"2 attempts got 0 of {row.remotes[0].size} bytes" in str(err.value) and not (tmp_path / "ptb").exists()


def test_a_full_disk(server, tmp_path):
    """Writing the download hits ENOSPC (its partial file is /dev/full): an error, nothing in place."""
    row = fixture_row("ptb", server)
    (tmp_path / WORK).mkdir(parents=True)
    (tmp_path / WORK / "ptb.train.txt.part").symlink_to("/dev/full")
    with pytest.raises(FetchError) as err:
        fetch_source(row, tmp_path, progress=False)
    assert "fetch ptb: no space left on the device of" in str(err.value) and "--dest DIR" in str(err.value)
    assert not (tmp_path / "ptb").exists()


def test_too_little_free_space_stops_before_downloading(server, tmp_path, monkeypatch):
    row = fixture_row("cifar10", server)
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": 10})())
    with pytest.raises(FetchError, match=r"has 0.0 MB free, cifar10 needs about 0.1 MB .*nothing was downloaded"):
        fetch_source(row, tmp_path, progress=False)
    assert server.requests == []


def test_an_incomplete_folder_already_in_place_is_left_alone(server, tmp_path):
    row = fixture_row("cifar100", server)
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"mine")
    with pytest.raises(FetchError, match=r"cifar-100-python exists but lacks meta, test; it was left as it is"):
        fetch_source(row, tmp_path, progress=False)
    assert (tmp_path / "cifar-100-python" / "train").read_bytes() == b"mine" and server.requests == []


def test_two_fetches_at_once_download_once(server, tmp_path, caplog):
    row = fixture_row("cifar10", server)
    server.chunk_delay_s = 0.05  # a slow transfer, so the second fetch starts while the first runs
    results, errors = [], []

    def run():
        try:
            results.append(fetch_source(row, tmp_path, progress=False))
        except FetchError as exc:  # reported below
            errors.append(exc)

    with caplog.at_level(logging.INFO, logger="landscope"):
        threads = [threading.Thread(target=run) for _ in range(2)]
        threads[0].start()
        while not server.requests:
            time.sleep(0.01)
        threads[1].start()
        for t in threads:
            t.join(60)
    assert errors == [] and len(server.requests) == 1
    assert sorted(len(r["downloads"]) for r in results) == [0, 1]
    assert "another process is fetching it" in caplog.text and "cifar10: already in" in caplog.text


def test_an_air_gapped_copy_through_a_file_url(tmp_path, server):
    """--url file:///folder: the publisher's files copied by hand, verified like a download."""
    row = fixture_row("cifar100", server)
    copy = tmp_path / "usb"
    copy.mkdir()
    (copy / "cifar-100-python.tar.gz").write_bytes(server.files["/pub/cifar-100-python.tar.gz"])
    fetch_source(row, tmp_path / "data", copy.as_uri(), progress=False)
    assert (tmp_path / "data" / "cifar-100-python" / "meta").is_file() and server.requests == []


def test_other_url_schemes_are_refused(tmp_path):
    with pytest.raises(FetchError, match="--url must be an http.s.:// or file:// URL, got 'ftp://x'"):
        fetch_source(CATALOG["ptb"], tmp_path, "ftp://x", progress=False)


# ----------------------------------------------------------------------------------- command line and DAG
def run_cli(capsys, *args):
    from landscope.cli import main  # imported here: the CLI's import also loads vl_convert

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def write_sources(tmp_path, rows) -> Path:
    path = tmp_path / "sources.json"
    path.write_text(json.dumps({r.name: r.to_dict() for r in rows}))
    return path


def test_cli_fetch_without_url_uses_the_registry_and_url_a_mirror(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(catalog.SOURCES_ENV, str(write_sources(tmp_path, [fixture_row("ptb", server)])))
    rc, out, err = run_cli(capsys, "data", "fetch", "ptb", "--data-dir", tmp_path / "d")
    assert rc == 0, err
    assert out.strip() == str(tmp_path / "d" / "ptb")
    rc, out, _ = run_cli(capsys, "data", "check", "ptb", "--data-dir", tmp_path / "d")
    assert rc == 0 and out.startswith(f"ptb: ok: {tmp_path / 'd' / 'ptb'} (verified: published MD5 of every file")
    rc, out, err = run_cli(capsys, "data", "fetch", "ptb", "--data-dir", tmp_path / "d")
    assert rc == 0 and "already here" in err and out.strip() == str(tmp_path / "d" / "ptb")
    (tmp_path / "d" / "ptb" / "ptb.test.txt").write_text(" the N mat \n" * 9 + " the N cat \n")
    rc, out, _ = run_cli(capsys, "data", "check", "ptb", "--data-dir", tmp_path / "d")
    assert rc == 1 and out.startswith(f"ptb: FAILED: {tmp_path / 'd' / 'ptb' / 'ptb.test.txt'}: MD5 ")
    server.files.update({f"/elsewhere/{k}": v for k, v in fixture_files("ptb")[0].items()})
    rc, out, err = run_cli(capsys, "data", "fetch", "ptb", "--dest", tmp_path / "e", "--url", server.url + "/elsewhere")
    assert rc == 0, err
    assert server.requests[-1][0] == "/elsewhere/ptb.test.txt"
    rc, _, err = run_cli(capsys, "data", "fetch", "ptb", "--dest", tmp_path / "f", "--url", server.url + "/gone")
    assert rc == 1 and "landscope data fetch ptb: fetch ptb: no URL served ptb.train.txt" in err
    assert "HTTP 404" in err and not (tmp_path / "f" / "ptb").exists()


def test_cli_list_shows_source_url_and_checksum(capsys):
    rc, out, _ = run_cli(capsys, "data", "list")
    assert rc == 0
    sources_table = out.split("\n\n")[1]
    for name, row in CATALOG.items():
        for r in row.remotes:
            line = next(line for line in sources_table.splitlines() if f"/{r.file}" in line)
            assert line.split()[0] == name and f"{row.url}/{r.file}" in line
            assert (f"sha256:{r.sha256}" if r.sha256 else f"md5:{r.md5}") in line


def test_availability_with_fetch(tmp_path, monkeypatch):
    """With fetch, a missing dataset that can be downloaded is no problem; one that cannot stays one."""
    assert "cifar-10-python.tar.gz" in sources.availability_problem({"name": "cifar10"}, str(tmp_path))
    assert sources.availability_problem({"name": "cifar10"}, str(tmp_path), fetch=True) is None
    monkeypatch.setattr(sources, "MNIST1D_PACKAGES", ("not_installed_mnist1d",))
    assert "pip install mnist1d" in sources.availability_problem({"name": "mnist1d"}, str(tmp_path), fetch=True)


@pytest.mark.slow
def test_dag_fetches_trains_and_reports(server, tmp_path, monkeypatch):
    """`if_data_missing: fetch`: the fetch_data job downloads CIFAR-10 from the local server (a copy of
    the registry row names it), the train jobs wait for it, and the study runs to its report."""
    row = fixture_row("cifar10", server)
    config = {"device": "cpu", "data_dir": str(tmp_path / "data"), "experiments": {"tiny_cifar": {
        "if_data_missing": "fetch", "model": {"name": "cnn", "c1": 2, "channels": 2},
        "dataset": {"name": "cifar10", "n_train": 16}, "optimizer": {"name": "sgd", "lr": 0.05}, "batch_size": 4,
        "steps": 8, "snapshot_every": 4, "seeds": [0, 1], "curvature": {"enabled": False},
        "surfaces": {"enabled": False}}}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv(catalog.SOURCES_ENV, str(write_sources(tmp_path, [row])))  # reaches the jobs
    dry = run_snakemake(work, path, "-n")
    jobs = dict(line.split() for line in dry.stdout.splitlines() if line.startswith(("fetch_data ", "train ")))
    assert jobs == {"fetch_data": "1", "train": "2"}
    run_snakemake(work, path)
    assert len(server.requests) == 1
    record = json.loads((work / "resources" / "data" / "cifar10.json").read_text())
    assert record["path"] == str(tmp_path / "data" / "cifar-10-batches-py") and record["found"] is False
    assert (work / "reports" / "tiny_cifar.html").is_file()
    again = run_snakemake(work, path, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr  # the data now found: nothing re-runs
