"""Reports open in a real browser: headless Chromium, no network, every chart drawn, no error.

Each page is copied next to itself with a small probe script put first in <head>; the probe records
uncaught errors, rejected promises, console.error calls and every resource the page loaded into a
<pre> element, which `--dump-dom` then returns together with the rendered charts. Chromium's own
console log (stderr) is scanned for "Uncaught" as a second witness.

Without chromium the tests skip, except in CI (CI=true), where `make test` installs it.
"""

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_snakemake
from test_cli import tiny_results  # noqa: F401  (module fixture: a real results folder of one run)
from test_promises import write_promise_tables

PROBE = """<script>
(function () {
  var state = {errors: [], resources: []};
  function flush() {
    var pre = document.getElementById('__probe');
    if (!pre && document.body) { pre = document.createElement('pre'); pre.id = '__probe'; document.body.appendChild(pre); }
    state.resources = performance.getEntriesByType('resource').map(function (r) { return r.name; });
    if (pre) pre.textContent = JSON.stringify(state);
  }
  function record(text) { state.errors.push(String(text)); flush(); }
  window.addEventListener('error', function (e) { record('error: ' + e.message); });
  window.addEventListener('unhandledrejection', function (e) { record('unhandled rejection: ' + e.reason); });
  var original = console.error;
  console.error = function () { record('console.error: ' + Array.prototype.join.call(arguments, ' ')); original.apply(console, arguments); };
  window.addEventListener('load', function () { flush(); setTimeout(flush, 1000); setTimeout(flush, 4000); });
})();
</script>"""

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",  # no network at all
    "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--dump-dom",
]


def chromium() -> str:
    """The Chromium executable; skip (or, in CI, fail) when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but no chromium on PATH: `make test` installs it as root "
                    "(apt-get install -y -qq chromium); install it before running the tests")
    pytest.skip("chromium not installed (apt-get install chromium); this test runs in CI")


class ChartScan(HTMLParser):
    """For every element id in ``targets``: whether a Vega SVG (svg.marks) or a canvas was drawn
    inside it. Tracks nesting by counting <div>s, which the serialized DOM always closes."""

    def __init__(self, targets: set[str]):
        super().__init__()
        self.targets, self.drawn = targets, {}
        self.current, self.depth = None, 0
        self.probe, self._in_probe = "", False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "pre" and a.get("id") == "__probe":
            self._in_probe = True
        if self.current is None and tag == "div" and a.get("id") in self.targets:
            self.current, self.depth = a["id"], 0
            self.drawn.setdefault(self.current, False)
        if self.current is None:
            return
        if tag == "div":
            self.depth += 1
        drawn_svg = tag == "svg" and "marks" in (a.get("class") or "").split() and float(a.get("width") or 0) > 0
        if drawn_svg or tag == "canvas":
            self.drawn[self.current] = True

    def handle_endtag(self, tag):
        if tag == "pre":
            self._in_probe = False
        if self.current is not None and tag == "div":
            self.depth -= 1
            if self.depth == 0:
                self.current = None

    def handle_data(self, text):
        if self._in_probe:
            self.probe += text


def embed_targets(html: str) -> set[str]:
    """The element ids that the page asks vega-embed to fill."""
    return set(re.findall(r"vegaEmbed\('#([\w-]+)'", html))


def render(page: Path, work: Path) -> dict:
    """Open a probed copy of ``page`` in headless Chromium; return what was drawn and reported."""
    html = page.read_text(encoding="utf-8")
    assert "<head>" in html, f"{page}: no <head>"
    copy = work / page.name
    copy.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={work / ('profile-' + page.stem)}", copy.as_uri()]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"chromium failed on {page} ({proc.returncode}): {proc.stderr[-3000:]}"
    targets = embed_targets(html)
    scan = ChartScan(targets)
    scan.feed(proc.stdout)
    assert scan.probe, f"{page}: the probe never reported (page did not load?); DOM starts {proc.stdout[:300]!r}"
    probe = json.loads(scan.probe)
    uncaught = [line for line in proc.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    return {"targets": targets, "drawn": {t for t, ok in scan.drawn.items() if ok}, "errors": probe["errors"],
            "uncaught": uncaught, "resources": probe["resources"], "dom": proc.stdout}


def assert_renders(page: Path, work: Path, min_charts: int = 0) -> dict:
    got = render(page, work)
    assert len(got["targets"]) >= min_charts, f"{page}: {len(got['targets'])} charts, expected >= {min_charts}"
    assert got["drawn"] == got["targets"], f"{page}: charts not drawn: {sorted(got['targets'] - got['drawn'])}"
    assert got["errors"] == [] and got["uncaught"] == [], f"{page}: {got['errors'] + got['uncaught']}"
    remote = [r for r in got["resources"] if not r.startswith(("file:", "data:", "blob:"))]
    assert remote == [], f"{page} asked the network for {remote}"
    return got


def test_probe_sees_errors_missing_charts_and_network_requests(tmp_path):
    """The checker itself: a page with a throwing script, a chart div that nothing fills and an
    external image fails each check."""
    chromium()
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><title>bad</title></head><body>"
                    "<div class=chart id='lonely'></div><img src='http://example.invalid/x.png'>"
                    "<script>function vegaEmbed() {}; vegaEmbed('#lonely', {});"
                    "console.error('boom'); null.f();</script></body></html>")
    work = tmp_path / "work"
    work.mkdir()
    got = render(page, work)
    assert got["targets"] == {"lonely"} and got["drawn"] == set()
    assert any("console.error: boom" in e for e in got["errors"])
    assert any(e.startswith("error: ") and "null" in e for e in got["errors"])
    assert any("Uncaught TypeError" in line for line in got["uncaught"])
    assert "http://example.invalid/x.png" in got["resources"]


def test_report_pages_render_in_chromium(tiny_results, tmp_path):  # noqa: F811 (fixture)
    """An experiment page and the index, written by the report module from a real run."""
    from landscope.report import index as index_page
    from landscope.report import page as experiment_page

    chromium()
    pages = tmp_path / "reports"
    work = tmp_path / "work"
    pages.mkdir()
    work.mkdir()
    experiment_page.write_experiment_report(tiny_results, "tiny", pages / "tiny.html", title="tiny")
    index_page.write_index(tiny_results, ["tiny"], pages / "index.html")
    got = assert_renders(pages / "tiny.html", work, min_charts=5)
    assert {"heat", "loss", "gnorm", "angle", "aiming"} <= got["drawn"]
    assert_promises_section(got["dom"], "tiny")
    index = assert_renders(pages / "index.html", work)
    assert "Classical conditions</b> along the trajectories" in index["dom"]


PROMISES_HEADING = "<h2 id=\"promises\">Which conditions hold here, and what they promise</h2>"


def assert_promises_section(dom: str, name: str):
    """The conditions section is in the rendered page, with its constants table (one row per condition)."""
    assert PROMISES_HEADING in dom, f"{name}: no conditions section"
    section = dom[dom.index(PROMISES_HEADING):]
    for header in ("constant, full batch", "fails from, mini-batch", "bound after K steps, or why none"):
        assert re.search(f"<th[^>]*>{header}</th>", section), f"{name}: no column {header!r}"
    for condition in ("α-β-condition", "Polyak-Łojasiewicz (PL)", "Aiming", "quadratic growth (QG)"):
        assert re.search(rf"<td[^>]*>{re.escape(condition)}</td>", section), f"{name}: no {condition} row"


def test_promise_section_charts_render_in_chromium(tmp_path):
    """The bound and constants charts (faceted by condition, log axes) drawn from hand-written tables."""
    from landscope.report import page as experiment_page

    chromium()
    results, work = tmp_path / "results", tmp_path / "work"
    work.mkdir()
    exp = write_promise_tables(results)
    page = experiment_page.write_experiment_report(results, exp, tmp_path / f"{exp}.html")
    got = assert_renders(page, work, min_charts=2)
    assert {"promisea", "promiseb"} <= got["drawn"]
    assert_promises_section(got["dom"], exp)
    assert "μ = 1.00e-09 (log10 μ = -9.00)" in got["dom"] and "promises almost nothing" in got["dom"]


@pytest.fixture(scope="module")
def smoke_reports(tmp_path_factory):
    """reports/ of the whole smoke DAG (config/smoke.yaml), built by Snakemake."""
    work = tmp_path_factory.mktemp("smoke-browser")
    (work / "smoke.yaml").write_text((ROOT / "config" / "smoke.yaml").read_text())
    run_snakemake(work, work / "smoke.yaml", timeout=1200)
    return work / "reports"


@pytest.mark.slow
def test_every_smoke_report_renders_in_chromium(smoke_reports, tmp_path):
    chromium()
    smoke = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    pages = sorted(smoke_reports.glob("*.html"))
    assert {p.stem for p in pages} >= {"index", *smoke["experiments"]}
    # once the study writes bound curves, every experiment page must draw them (chart promisea)
    bounds = any((smoke_reports.parent / "results" / "tables" / "condition_bound_curve").rglob("part-*.parquet"))
    drawn = 0
    for page in pages:
        got = assert_renders(page, tmp_path, min_charts=1 if page.stem in smoke["experiments"] else 0)
        drawn += len(got["drawn"])
        if page.stem in smoke["experiments"]:
            assert_promises_section(got["dom"], page.stem)
            assert not bounds or "promisea" in got["drawn"], f"{page.stem}: bound chart not drawn"
            # smoke.yaml turns curvature.blocks on for every experiment (vega-embed adds classes to the div)
            block = re.search(r"<h3>Sharpness per block</h3>(?:<p[^>]*>.*?</p>)?<div[^>]*\bid=\"(\w+)\"", got["dom"])
            assert block and block.group(1) in got["drawn"], f"{page.stem}: per-block chart not drawn"
        elif page.stem == "index":
            assert got["dom"].count("Classical conditions</b> along the trajectories") == len(smoke["experiments"])
    assert drawn >= 5 * len(smoke["experiments"])
