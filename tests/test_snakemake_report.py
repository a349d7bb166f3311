"""`snakemake --report`: after a run, the report holds the workflow description, the study's pages
(byte for byte) under their categories, and each page's caption rendered for its experiment."""

import json
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


def _snakemake(work, *args):
    return run_snakemake(work, work / "study.yaml", *args)


@pytest.mark.slow
def test_snakemake_report_has_the_pages_with_captions_and_categories(tmp_path):
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(STUDY))
    _snakemake(tmp_path)
    _snakemake(tmp_path, "--report", str(tmp_path / "report.zip"))
    with zipfile.ZipFile(tmp_path / "report.zip") as z:
        names = z.namelist()
        pages = {n.rsplit("/", 1)[1]: z.read(n) for n in names if n.startswith("report/data/raw/")}
        main = z.read("report/report.html").decode()
    # exactly the three flagged pages, identical to the ones the workflow wrote
    assert sorted(pages) == ["index.html", "table2.html", "tinyrep.html"]
    for name, data in pages.items():
        assert data == (tmp_path / "reports" / name).read_bytes(), name
    # the report's own data: each page's category, labels and rendered caption (workflow/report/*.rst)
    results = json.loads(re.search(r"var results = (\{.*?\});\n", main).group(1))
    categories = json.loads(re.search(r"var categories = (\{.*?\});\n", main).group(1))
    assert categories == {"Overview": {"Other": ["reports/index.html", "reports/table2.html"]},
                          "Experiments": {"Other": ["reports/tinyrep.html"]}}
    assert {k: v["labels"] for k, v in results.items()} == {
        "reports/index.html": {"page": "index"}, "reports/table2.html": {"page": "Table 2"},
        "reports/tinyrep.html": {"experiment": "tinyrep", "page": "report"}}
    caption = {k: v["caption"] for k, v in results.items()}
    # the experiment's name filled in by Jinja
    assert caption["reports/tinyrep.html"].startswith(
        '<p>Experiment <tt class="docutils literal">tinyrep</tt>: the min-T heatmaps')
    assert "landscope figures tinyrep" in caption["reports/tinyrep.html"]
    assert "Table 2, measured" in caption["reports/table2.html"]
    assert "verdict per sweep point" in caption["reports/index.html"]
    # the workflow description, with the study's size from the config
    assert "1 experiment(s) in the config" in main
