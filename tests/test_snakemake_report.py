"""`snakemake --report`: after a run, the report holds the workflow description and the study's pages
(byte for byte) in one folder under one entry with its caption, so that every page's links lead to
pages inside the zip."""

import json
import posixpath
import re
import zipfile

import pytest
import yaml
from conftest import run_snakemake

STUDY = {"device": "cpu", "experiments": {"tinyrep": {
    "title": "snakemake --report test", "model": {"name": "logistic_regression"},
    "dataset": {"name": "digits", "n_train": 128}, "optimizer": {"name": "sgd", "lr": 0.5},
    "batch_size": 16, "steps": 16, "snapshot_every": 8, "seeds": [0], "conditions": {"grid_size": 6},
    "curvature": {"enabled": False}, "surfaces": {"enabled": False}}}}
SITE = "results/report/study"  # report_site's folder (workflow/rules/report.smk)


def _snakemake(work, *args):
    return run_snakemake(work, work / "study.yaml", *args)


def links(html: str) -> list[str]:
    """The relative links of a page (href values that are neither anchors nor absolute URLs)."""
    return [h for h in re.findall(r"""href=["']([^"']+)["']""", html) if not re.match(r"[a-z]+:|#|/", h)]


@pytest.mark.slow
def test_snakemake_report_holds_the_pages_linked_to_one_another(tmp_path):
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(STUDY))
    _snakemake(tmp_path)  # the default target: the pages, and the folder for the report
    _snakemake(tmp_path, "--report", str(tmp_path / "report.zip"))
    with zipfile.ZipFile(tmp_path / "report.zip") as z:
        names = set(z.namelist())
        raw = {n: z.read(n) for n in names if n.startswith("report/data/raw/")}
        main = z.read("report/report.html").decode()
    # the study pages and the experiment page together in one folder, as the workflow wrote them
    (site,) = {n.rsplit("/", 1)[0] for n in raw}
    assert sorted(n.rsplit("/", 1)[1] for n in raw) == ["generalization.html", "index.html", "table2.html",
                                                         "tinyrep.html"]
    for n, data in raw.items():
        assert data == (tmp_path / "reports" / n.rsplit("/", 1)[1]).read_bytes(), n
    # every link of every page resolves to a file of the zip
    for n, data in raw.items():
        for href in links(data.decode()):
            assert posixpath.normpath(f"{site}/{href}") in names, (n, href)
    assert sorted(links(raw[f"{site}/index.html"].decode())) == ["generalization.html", "table2.html", "tinyrep.html"]
    assert links(raw[f"{site}/tinyrep.html"].decode()) == ["index.html"]  # back to all experiments
    # the report's own data: the entry's category, labels and caption (workflow/report/index.rst)
    results = json.loads(re.search(r"var results = (\{.*?\});\n", main).group(1))
    categories = json.loads(re.search(r"var categories = (\{.*?\});\n", main).group(1))
    assert categories == {"Overview": {"Other": [f"{SITE}/index.html"]}}
    assert {k: v["labels"] for k, v in results.items()} == {f"{SITE}/index.html": {"page": "index"}}
    caption = " ".join(results[f"{SITE}/index.html"]["caption"].split())
    assert "verdict per sweep point" in caption and "Table 2" in caption and "landscope figures" in caption
    # the workflow description, with the study's size from the config
    assert "1 experiment(s) in the config" in main
