"""The `landscope report`, `figures` and `data` commands, on a real (tiny) results folder and real
or deliberately corrupted dataset files."""

import gzip
import math
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import make_study, run_pipeline

from landscope import cli, store
from landscope.problem import sources
from landscope.problem.registry import DATASETS

FASHION_SYSTEM = Path(sources.FASHION_SYSTEM_DIR)


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    """One digits run (train, snapshot, x_K, replay, curvature) and its conditions: a real results
    folder."""
    import glob

    from landscope.measures.conditions import experiment_conditions
    from landscope.measures.curvature import curvature_run

    exp = make_study({"model": {"name": "logistic_regression"}, "dataset": {"name": "digits", "n_train": 200},
                      "batch_size": 16, "steps": 12, "snapshot_every": 4, "seeds": [0],
                      "optimizer": {"name": "sgd", "lr": 0.5}, "conditions": {"grid_size": 6},
                      "curvature": {"eval_samples": 64, "lanczos_iters": 6, "hutchinson_probes": 2,
                                    "flatness_directions": 2, "llc_steps": 10}},
                     name="tiny").experiments["tiny"]
    root = tmp_path_factory.mktemp("cli")
    results, ckpt, _ = run_pipeline(exp.runs[0], root)
    curvature_run(exp.runs[0], ckpt, ckpt / "minimizer.pt", results, exp.raw["curvature"])
    parts = {t: sorted(glob.glob(f"{results}/tables/{t}/experiment=tiny/*/*.parquet"))
             for t in ("steps", "directions", "drift")}
    experiment_conditions(exp, results, parts["steps"], parts["directions"], parts["drift"])
    return results


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ----------------------------------------------------------------------------------- report
def test_report_prints_the_page_and_opens_it(tmp_path, capsys, monkeypatch):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "index.html").write_text("<html></html>")
    (reports / "halfspace.html").write_text("<html></html>")
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    assert run(capsys, "report", "--reports", reports) == (0, f"{reports / 'index.html'}\n", "")
    rc, out, _ = run(capsys, "report", "--open", "--reports", reports, "halfspace")
    assert rc == 0 and out.strip() == str(reports / "halfspace.html")
    assert opened == [(reports / "halfspace.html").resolve().as_uri()]


def test_report_not_built_says_how_to_build_it(tmp_path, capsys):
    rc, out, err = run(capsys, "report", "--reports", tmp_path / "nothing")
    assert rc == 2 and out == ""
    assert "not built yet; run snakemake --cores all first" in err
    (tmp_path / "index.html").write_text("<html></html>")
    (tmp_path / "digits_mlp.html").write_text("<html></html>")
    rc, _, err = run(capsys, "report", "--reports", tmp_path, "halfspace")
    assert rc == 2 and "no report for experiment 'halfspace'" in err and "built: digits_mlp" in err


def test_report_open_without_a_browser_fails_clearly(tmp_path, capsys, monkeypatch):
    (tmp_path / "index.html").write_text("<html></html>")
    monkeypatch.setattr("webbrowser.open", lambda url: False)
    rc, out, err = run(capsys, "report", "--open", "--reports", tmp_path)
    assert rc == 1 and out.strip() == str(tmp_path / "index.html") and "no web browser" in err


# ----------------------------------------------------------------------------------- figures
def _svg_size(path: Path) -> tuple[float, float]:
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return float(root.get("width")), float(root.get("height"))


def _png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def test_figures_writes_every_chart_of_the_page_as_svg_and_png(tiny_results, tmp_path, capsys):
    from landscope.report import page as report

    con = store.connect(tiny_results)
    sections = report.page_charts(con, "tiny", tiny_results)
    con.close()
    expected = {s.id: s.heading for s in sections if s.chart is not None}
    assert {"heat", "loss", "gnorm", "angle", "aiming"} <= set(expected)  # the run fills these tables
    assert any(cid.startswith("curv") for cid in expected)  # and the curvature tables
    rc, out, err = run(capsys, "figures", "--results", tiny_results, "--out", tmp_path / "svg", "tiny")
    assert rc == 0, err
    listed = dict(line.split("\t") for line in out.splitlines())
    assert listed == {str(tmp_path / "svg" / f"tiny-{cid}.svg"): h for cid, h in expected.items()}
    rc, out, err = run(capsys, "figures", "--results", tiny_results, "--out", tmp_path / "png",
                       "--format", "png", "--scale", "2", "tiny")
    assert rc == 0, err
    for cid in expected:
        svg, png = tmp_path / "svg" / f"tiny-{cid}.svg", tmp_path / "png" / f"tiny-{cid}.png"
        w, h = _svg_size(svg)
        assert w > 100 and h > 100
        assert _png_size(png) == (round(2 * w), round(2 * h))  # the same drawing, twice the pixels
    heat = (tmp_path / "svg" / "tiny-heat.svg").read_text()
    assert "min T: all" in heat  # the single sweep point's heatmap panel


def test_figures_export_exactly_the_charts_the_page_draws(tiny_results, tmp_path, capsys):
    """One file per chart on the experiment page, curvature sections included, with the page's ids."""
    from landscope.report import page as report

    page = report.write_experiment_report(tiny_results, "tiny", tmp_path / "tiny.html").read_text()
    divs = re.findall(r"<div class=chart id='([a-z]+)'></div>", page)
    embedded = re.findall(r"vegaEmbed\('#([a-z]+)'", page)
    assert divs and sorted(divs) == sorted(set(divs))
    assert any(d.startswith("curv") for d in divs) and "<h2>Curvature</h2>" in page
    rc, out, err = run(capsys, "figures", "--results", tiny_results, "--out", tmp_path / "svg", "tiny")
    assert rc == 0, err
    files = sorted(p.name for p in (tmp_path / "svg").iterdir())
    assert files == sorted(f"tiny-{d}.svg" for d in divs)
    assert sorted(embedded) == sorted(divs)  # each div gets its chart
    listed = [line.split("\t")[0] for line in out.splitlines()]
    assert listed == [str(tmp_path / "svg" / f"tiny-{d}.svg") for d in divs]  # in page order


def test_figures_of_an_unknown_experiment_names_the_known_ones(tiny_results, tmp_path, capsys):
    rc, out, err = run(capsys, "figures", "--results", tiny_results, "--out", tmp_path, "nope")
    assert rc == 2 and out == "" and "no experiment 'nope'" in err and "known: tiny" in err
    assert not list(tmp_path.iterdir())
    rc, _, err = run(capsys, "figures", "--results", tmp_path / "none", "tiny")
    assert rc == 2 and "run `snakemake --cores all` first" in err
    rc, _, err = run(capsys, "figures", "--results", tiny_results, "--format", "png", "--scale", "0", "tiny")
    assert rc == 2 and "--scale must be a positive number" in err


# ----------------------------------------------------------------------------------- data
def test_every_builtin_dataset_has_a_source():
    assert set(sources.SOURCES) == set(DATASETS)


def _list_rows(text: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in text.split("\n\n")[0].splitlines()[2:-1]:  # the first table (the second lists the files)
        name, available, where = re.split(r"\s{2,}", line.strip(), maxsplit=2)
        rows[name] = (available, where)
    return rows


def test_data_list_says_where_each_dataset_is_or_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LANDSCOPE_DATA", raising=False)
    (tmp_path / "ptb").mkdir()
    for split in ("train", "valid", "test"):
        (tmp_path / "ptb" / f"ptb.{split}.txt").write_text("a b c\n")
    rc, out, _ = run(capsys, "data", "list", "--data-dir", tmp_path)
    rows = _list_rows(out)
    assert rc == 0 and set(rows) == set(DATASETS)
    assert rows["ptb"] == ("yes", str(tmp_path / "ptb"))
    assert rows["digits"][0] == "yes" and rows["digits"][1].endswith("digits.csv.gz")
    available, where = rows["cifar10"]
    assert available == "no" and f"looked in: {tmp_path / 'cifar-10-batches-py'}" in where
    assert "cifar-10-python.tar.gz" in where
    rc, out, _ = run(capsys, "data", "list", "wikitext2")
    assert list(_list_rows(out)) == ["wikitext2"]
    rc, _, err = run(capsys, "data", "list", "mnist")
    assert rc == 2 and "unknown dataset 'mnist'" in err and "fashion_mnist" in err


def _write_idx(path: Path, dims: tuple[int, ...]) -> None:
    n = math.prod(dims)
    header = b"\x00\x00\x08" + bytes([len(dims)]) + struct.pack(">" + "I" * len(dims), *dims)
    path.write_bytes(gzip.compress(header + bytes(i % 251 for i in range(n))))


def _fake_fashion(folder: Path) -> Path:
    """Four well-formed IDX files that are not the official ones."""
    folder.mkdir(parents=True)
    for stem in sources.FASHION_SHA256:
        _write_idx(folder / f"{stem}.gz", (10, 28, 28) if "images" in stem else (10,))
    return folder


def test_data_check_catches_a_corrupted_fashion_mnist(tmp_path, capsys):
    _fake_fashion(tmp_path / "fashion-mnist")
    rc, out, _ = run(capsys, "data", "check", "fashion_mnist", "--data-dir", tmp_path)
    assert rc == 1 and out.startswith(f"fashion_mnist: FAILED: {tmp_path / 'fashion-mnist'}")
    assert "SHA-256 of the decompressed content is" in out and "not the official one" in out


def test_data_check_missing_named_dataset_fails_with_howto(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LANDSCOPE_DATA", raising=False)
    rc, out, _ = run(capsys, "data", "check", "wikitext2", "--data-dir", tmp_path)
    assert rc == 1 and out.startswith("wikitext2: missing: get wikitext-2-v1.zip")


@pytest.mark.skipif(not FASHION_SYSTEM.is_dir(), reason="Fashion-MNIST not installed (make data)")
def test_data_fetch_fashion_from_a_url_verifies_before_it_lands(tmp_path, capsys):
    bad = _fake_fashion(tmp_path / "mirror")
    rc, _, err = run(capsys, "data", "fetch", "fashion_mnist", "--dest", tmp_path / "d", "--url", bad.as_uri())
    assert rc == 1 and "SHA-256" in err and "apt-get install -y dataset-fashion-mnist" in err and "--url" in err
    assert not (tmp_path / "d" / "fashion-mnist").exists()  # nothing wrong was left behind
    rc, out, err = run(capsys, "data", "fetch", "fashion_mnist", "--dest", tmp_path / "d",
                       "--url", FASHION_SYSTEM.as_uri())
    assert rc == 0, err
    assert out.strip() == str(tmp_path / "d" / "fashion-mnist")
    assert sorted(p.name for p in (tmp_path / "d" / "fashion-mnist").iterdir()) == sorted(
        f"{s}.gz" for s in sources.FASHION_SHA256)
    rc, out, _ = run(capsys, "data", "check", "fashion_mnist", "--data-dir", tmp_path / "d")
    assert rc == 0 and out.startswith(f"fashion_mnist: ok: {tmp_path / 'd' / 'fashion-mnist'}")


def test_data_fetch_refuses_other_schemes_and_unfetchable_datasets(tmp_path, capsys):
    rc, _, err = run(capsys, "data", "fetch", "fashion_mnist", "--dest", tmp_path, "--url", "ftp://x/y")
    assert rc == 1 and "http(s):// or file:// URL" in err
    rc, _, err = run(capsys, "data", "fetch", "digits", "--dest", tmp_path)
    assert rc == 1 and "cannot be fetched automatically" in err and "pip install scikit-learn" in err
    rc, _, err = run(capsys, "data", "fetch")
    assert rc == 2 and "name a dataset" in err


def test_data_fetch_mnist1d_generates_the_cache_that_check_then_verifies(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mnist1d", reason="mnist1d not installed (pip install mnist1d)")
    monkeypatch.delenv("LANDSCOPE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # no cache from an earlier run
    rc, out, _ = run(capsys, "data", "check", "mnist1d", "--data-dir", tmp_path)
    assert rc == 1 and out.startswith("mnist1d: missing: not cached yet")
    rc, out, err = run(capsys, "data", "fetch", "mnist1d", "--dest", tmp_path)
    assert rc == 0, err
    cache = Path(out.strip())
    assert cache.parent == tmp_path / "mnist1d" and cache.is_file()
    rc, out, _ = run(capsys, "data", "check", "mnist1d", "--data-dir", tmp_path)
    assert rc == 0 and out.startswith(f"mnist1d: ok: {cache}") and "pinned generation arguments" in out


def test_tables_lists_every_table_and_the_derived_views(capsys):
    rc, out, _ = run(capsys, "tables")
    names = [line.split(":")[0] for line in out.splitlines()]
    assert rc == 0 and names == [*store.SCHEMAS, *(f"{v} (view)" for v in store.DERIVED_VIEWS)]
    assert out.splitlines()[-1] == ("condition_steps (view): experiment VARCHAR, point VARCHAR, run VARCHAR, "
                                    "scope VARCHAR, step BIGINT, condition VARCHAR, value DOUBLE, holds BOOLEAN")


def test_db_without_results_and_validate_on_invalid_yaml_answer_with_a_message(tmp_path, capsys):
    rc, _, err = run(capsys, "db", "--results", tmp_path / "nothing")
    assert rc == 2 and f"no results in {tmp_path / 'nothing'}/tables" in err
    (tmp_path / "bad.yaml").write_text("experiments: [unclosed\n  - : x\n")
    rc, _, err = run(capsys, "validate", tmp_path / "bad.yaml")
    assert rc == 1 and "is not valid YAML" in err and "line 2, column 5" in err
