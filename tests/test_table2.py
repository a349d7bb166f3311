"""The Table 2 page: direction classifier on hand-made sequences, sequences from a config, and the
page on a synthetic condition_summary whose numbers are chosen by hand."""

import json
import re

import polars as pl
import pytest
from conftest import make_study

from landscope import store
from landscope.report import claims
from landscope.report import table2 as t2


@pytest.mark.parametrize("values, expected", [
    ([1, 2, 3], "rises"),
    ([3, 2, 1], "falls"),
    ([1, 3, 2], "rises then falls"),
    ([1, 3, 3, 2], "rises then falls"),
    ([3, 1, 2], "falls then rises"),
    ([1, 3, 1, 3], "mixed"),
    ([2, 2, 2], "flat"),
    ([1.0, 1.01, 0.99], "flat"),  # within 5% of max|value| = 1.01
    ([1.0, 1.2, 0.99], "rises then falls"),  # +0.2 and -0.21 exceed 0.06
    ([1, None, float("nan"), 3], "rises"),  # missing values dropped
    ([None, 4.0], "n/a"),
    ([], "n/a"),
    ([-3, -2, -1], "rises"),
])
def test_classify_direction(values, expected):
    assert claims.classify_direction(values) == expected


def test_classify_direction_tolerance():
    assert claims.classify_direction([1.0, 1.04, 1.08], rtol=0.05) == "flat"  # each step 0.04 < 0.054
    assert claims.classify_direction([1.0, 1.04, 1.08], rtol=0.01) == "rises"
    with pytest.raises(ValueError, match="rtol"):
        claims.classify_direction([1, 2], rtol=-1)


def test_optimizer_ordering_and_agreement():
    assert claims.optimizer_ordering(["sgd", "sgdm", "adam"], [3.0, 2.0, 1.0]) == "adam < sgdm < sgd"
    assert claims.optimizer_ordering(["sgd", "sgdm", "adam"], [3.0, 1.02, 1.0]) == "adam ≈ sgdm < sgd"
    assert claims.ordering_agrees(["sgd", "sgdm", "adam"], [3.0, 2.0, 1.0]) == "yes"
    assert claims.ordering_agrees(["sgd", "sgdm", "adam"], [1.0, 2.0, 3.0]) == "no"
    assert claims.ordering_agrees(["sgdm", "adam"], [2.0, 1.0]) == "yes"
    assert claims.ordering_agrees(["sgd", "lion"], [2.0, 1.0]) is None  # one claimed kind only
    assert claims.optimizer_kind({"name": "sgd", "momentum": 0.9}) == "sgdm"
    assert claims.optimizer_kind({"name": "sgd", "momentum": 0.0}) == "sgd"
    assert claims.optimizer_kind({"name": "nadamw"}) == "adam"
    assert claims.agreement("rises", "rises then falls") == "partly"
    assert claims.agreement("falls", "falls") == "yes" and claims.agreement("flat", "falls") == "no"
    assert claims.agreement("n/a", "falls") is None


def test_spread_direction():
    # consecutive intervals apart: a direction; touching or overlapping: not resolved
    assert claims.spread_direction([(1, 2), (3, 4), (2.1, 2.9)], 2) == "rises then falls"
    assert claims.spread_direction([(3, 4), (1, 2)], 3) == "falls"
    assert claims.spread_direction([(1, 2), (2, 3)], 2) == "not resolved with 2 seeds"  # touching at 2
    assert claims.spread_direction([(1, 2), (1.5, 3), (5, 6)], 2) == "not resolved with 2 seeds"
    assert claims.spread_direction([(1, 1), (2, 2)], 1) == "not resolved with 1 seed"  # no spread from one seed
    assert claims.spread_direction([(1, 2), (None, None), (float("nan"), 3.0), (5, 6)], 2) == "rises"
    assert claims.spread_direction([(1, 2)], 2) == "n/a"
    assert claims.interval_order((1, 2), (0, 0.5)) == -1 and claims.interval_order((1, 2), (None, 3)) is None


def test_ordering_with_seed_spread():
    kinds = ["sgd", "sgdm", "adam"]
    apart = [(3, 3.5), (2, 2.5), (1, 1.5)]
    assert claims.ordering_resolved(kinds, apart, 2) == "yes"
    assert claims.ordering_resolved(kinds, apart[::-1], 2) == "no"
    assert claims.ordering_resolved(kinds, [(3, 3.5), (1.4, 2.5), (1, 1.5)], 2) == "not resolved with 2 seeds"
    assert claims.ordering_resolved(kinds, apart, 1) == "not resolved with 1 seed"
    assert claims.ordering_resolved(["sgd", "lion"], apart[:2], 2) is None


def test_constrained_points():
    points, bindings = ["a", "b", "c", "d", "e", "f"], ["data", "margin", "", None, "corner", "beta_nonneg"]
    assert claims.constrained_points(points, bindings) == ["e"]  # the smallest pair: the corner alone
    assert claims.constrained_points(points, bindings, claims.TERM_CONVENTION) == ["b", "e"]  # the term


def test_directions_one_seed_and_undetermined_precedence():
    seq = _seq("e", "model.depth", ["2", "4"], ["p2", "p4"])
    rows = pl.DataFrame([{"point": p, "value": v, "n_runs": 1, "n_seeds": 1, "binding": "data",
                          "final_full_loss_mean": 0.1, **{f"{q}{s}": x for q in ("alpha_min", "beta_min",
                                                                                  "nonvanishing_term")
                                                          for s, x in (("", b), ("_seed_lo", b), ("_seed_hi", b))}}
                         for p, v, b in (("p2", "2", 2.0), ("p4", "4", 1.0))])
    got = {d["quantity"]: (d["measured"], d["agrees"]) for d in t2.directions(seq, rows)}
    assert got["smallest β"] == ("falls (within the seed spread)", "not resolved with 1 seed")
    on_line = rows.with_columns(binding=pl.Series(["data", "margin"]))  # beta there is still the data's
    got = {d["quantity"]: (d["measured"], d["agrees"]) for d in t2.directions(seq, on_line)}
    assert got["smallest β"] == ("falls (within the seed spread)", "not resolved with 1 seed")
    rows = rows.with_columns(binding=pl.Series(["data", "corner"]),
                             nonvanishing_binding=pl.Series(["margin", "data"]))
    got = {d["quantity"]: (d["measured"], d["agrees"]) for d in t2.directions(seq, rows)}
    assert got["smallest β"] == ("1 of 2 points set by a constraint", "undetermined at this scale")
    assert got["min 2βσ²/(α−β)"] == ("1 of 2 points set by a constraint", "undetermined at this scale")


BASE = {"model": {"name": "mlp", "depth": 3, "width": 8}, "dataset": {"name": "digits", "n_train": 64},
        "optimizer": {"name": "sgd", "lr": 0.1}, "batch_size": 8, "steps": 4, "snapshot_every": 2,
        "seeds": [0, 1]}


def test_sweep_sequences_from_config():
    exp = make_study({**BASE, "figure": "4, 11", "sweep": {
        "optimizer": [{"label": "plain", "name": "sgd", "lr": 0.1},
                      {"label": "adam", "name": "adam", "lr": 1e-3},
                      {"label": "mom", "name": "sgd", "lr": 0.1, "momentum": 0.9}],
        "batch_size": [16, 8]}}).experiments["t"]
    seqs = claims.sweep_sequences(exp)
    by = {(s["key"], s["fixed"]): s for s in seqs}
    assert sorted(by) == [("batch_size", "optimizer=adam"), ("batch_size", "optimizer=mom"),
                          ("batch_size", "optimizer=plain"), ("optimizer", "batch_size=16"),
                          ("optimizer", "batch_size=8")]
    s = by[("optimizer", "batch_size=8")]
    assert s["values"] == ["plain", "adam", "mom"] and s["kinds"] == ["sgd", "adam", "sgdm"]
    assert s["points"] == ["optimizer=plain,batch_size=8", "optimizer=adam,batch_size=8",
                           "optimizer=mom,batch_size=8"]
    assert by[("batch_size", "optimizer=adam")]["values"] == ["16", "8"]  # config order, not sorted
    assert s["figure"] == "4, 11"
    plain = make_study({**BASE, "sweep": {"minimizer": ["last", "best"]}}).experiments["t"]
    assert claims.sweep_sequences(plain) == []  # minimizer is not a Table 2 axis


def _summary(results, exp, rows, n_seeds=2):
    """condition_summary of ``rows`` ({point: values}) and a seed_conditions table whose per-seed smallest beta
    spans the row's beta_min_seed_lo .. beta_min_seed_hi (seeds 0 and 1; more seeds repeat the middle)."""
    cols = {c: [] for c in store.SCHEMAS["condition_summary"]}
    seeds = {c: [] for c in store.SCHEMAS["seed_conditions"]}
    for point, vals in rows.items():
        vals = dict(vals)
        blo, bhi = vals.pop("beta_min_seed_lo"), vals.pop("beta_min_seed_hi")
        row = {c: None for c in cols}
        row.update(experiment=exp, point=point, sweep_json="{}", n_runs=n_seeds, n_seeds=n_seeds, feasible=True,
                   **vals)
        for c in cols:
            cols[c].append(row[c])
        for seed in range(n_seeds):
            beta = blo if seed == 0 else bhi if seed == 1 else (blo + bhi) / 2
            srow = {c: None for c in seeds}
            srow.update(experiment=exp, point=point, run=f"{point}_seed-{seed}", seed=seed, feasible=True,
                        beta_min=beta, binding=vals.get("binding"))
            for c in seeds:
                seeds[c].append(srow[c])
    store.write_table(store.part_path(results, "condition_summary", exp), "condition_summary", cols)
    store.write_table(store.part_path(results, "seed_conditions", exp), "seed_conditions", seeds)


def _row(amin, bmin, term, loss=0.1, spread=0.05, binding="data", term_binding=None):
    """One point: every constant with the seed interval value * (1 -+ spread)."""
    out = {"alpha_min": amin, "beta_at_alpha_min": bmin, "beta_min": bmin, "sigma_int_sq": 0.5,
           "nonvanishing_term": term, "nonvanishing_alpha": amin + 1, "nonvanishing_beta": bmin + 0.5,
           "final_full_loss_mean": loss, "binding": binding,
           "nonvanishing_binding": term_binding or ("corner" if binding == "corner" else "data")}
    for q, v in (("alpha_min", amin), ("beta_min", bmin), ("nonvanishing_term", term)):
        out[f"{q}_seed_lo"], out[f"{q}_seed_hi"] = v * (1 - spread), v * (1 + spread)
    return out


def _seq(exp, key, values, points, kinds=None, title=None):
    return {"experiment": exp, "title": title or exp, "figure": None, "key": key, "fixed": "", "values": values,
            "points": points, "kinds": kinds or values}


@pytest.fixture
def table2_results(tmp_path):
    results = tmp_path / "results"
    # width: beta 1 -> 3 -> 2 (rises then falls), term 0.8 -> 0.4 -> 0.1 (falls)
    _summary(results, "wide<x>", {"width=16": _row(2, 1, 0.8), "width=64": _row(4, 3, 0.4),
                                  "width=256": _row(3, 2, 0.1)})
    # optimizers: beta sgd 3 > adam 2 > sgdm 1: the paper's Adam < SGDM < SGD does not hold
    _summary(results, "opt", {"optimizer=sgd": _row(4, 3, 0.5), "optimizer=sgdm": _row(2, 1, 0.5),
                              "optimizer=adam": _row(3, 2, 0.5)})
    # resnet18 -> resnet34: higher final loss and larger beta (follows the loss), term rises
    _summary(results, "res", {"name=resnet18": _row(2, 1, 0.1, loss=0.2),
                              "name=resnet34": _row(3, 2, 0.3, loss=0.5)})
    # depth: all points at the corner (margin, 0): the constants are the constraints', not the data's
    corner = dict(_row(0.1, 0.0, 0.0, spread=0.0, binding="corner"))
    _summary(results, "corner", {"depth=2": corner, "depth=4": _row(0.3, 0.1, 0.2), "depth=8": corner})
    # batch size: beta 2.0 -> 1.8 -> 1.0 with seed spread 10 %: the first step's intervals [1.8, 2.2] and
    # [1.62, 1.98] overlap, so the fall is not resolved; the term 1 -> 0.5 -> 0.2 falls beyond the spread
    _summary(results, "noisy", {"batch_size=8": _row(3, 2.0, 1.0, spread=0.1),
                                "batch_size=16": _row(2.7, 1.8, 0.5, spread=0.1),
                                "batch_size=32": _row(2.0, 1.0, 0.2, spread=0.1)})
    seqs = [
        {"experiment": "wide<x>", "title": "<script>alert(1)</script>", "figure": "4 <i>", "key": "model.width",
         "fixed": "", "values": ["16", "64", "256"], "points": ["width=16", "width=64", "width=256"],
         "kinds": ["16", "64", "256"]},
        {"experiment": "opt", "title": "optimizers", "figure": None, "key": "optimizer", "fixed": "",
         "values": ["sgd", "sgdm", "adam"], "points": ["optimizer=sgd", "optimizer=sgdm", "optimizer=adam"],
         "kinds": ["sgd", "sgdm", "adam"]},
        {"experiment": "res", "title": "resnets", "figure": "17", "key": "model.name", "fixed": "batch_size=64",
         "values": ["resnet18", "resnet34"], "points": ["name=resnet18", "name=resnet34"],
         "kinds": ["resnet18", "resnet34"]},
        {"experiment": "missing", "title": "not run yet", "figure": None, "key": "batch_size", "fixed": "",
         "values": ["8"], "points": ["batch_size=8"], "kinds": ["8"]},
        _seq("corner", "model.depth", ["2", "4", "8"], ["depth=2", "depth=4", "depth=8"]),
        _seq("noisy", "batch_size", ["8", "16", "32"], ["batch_size=8", "batch_size=16", "batch_size=32"]),
    ]
    return results, seqs


def _direction_rows(page: str, quantity: str) -> list[list[str]]:
    pat = rf"<tr><td class=l>{re.escape(quantity)}</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>"
    return [list(m) for m in re.findall(pat, page)]


def test_table2_page(table2_results, tmp_path):
    results, seqs = table2_results
    page = t2.write_table2(results, seqs, tmp_path / "table2.html").read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "4 &lt;i&gt;" in page and 'href="wide&lt;x&gt;.html"' in page
    beta = _direction_rows(page, "smallest β")
    assert beta == [["rises then falls", "rises then falls", "yes"],  # agrees
                    ["sgdm &lt; adam &lt; sgd", "Adam &lt; SGDM &lt; SGD", "no"],  # disagrees, beyond the spread
                    ["rises", "rises (as the final loss)", "yes"],
                    ["2 of 3 points set by a constraint", "falls", "undetermined at this scale"],  # corner tie
                    ["falls (within the seed spread)", "falls", "not resolved with 2 seeds"]]
    term = _direction_rows(page, "min 2βσ²/(α−β)")
    assert term == [["falls", "falls", "yes"], ["flat (within the seed spread)", "n/a", "—"], ["rises", "falls", "no"],
                    ["2 of 3 points set by a constraint", "falls", "undetermined at this scale"],
                    ["falls", "falls", "yes"]]
    alpha = _direction_rows(page, "smallest α")
    assert alpha[3:] == [["2 of 3 points set by a constraint", "falls", "undetermined at this scale"],
                         ["falls (within the seed spread)", "falls", "not resolved with 2 seeds"]]
    assert "at the corner α = margin, β = 0: set by the constraints, not by the data" in page
    assert "do not overlap" in page  # the page says how a direction is called
    # the width table lists values in config order with their numbers
    assert re.search(r"<td class=l>16</td><td>2</td><td>2</td><td>1.9 – 2.1</td><td>1</td><td>set by the data</td>"
                     r"<td>1</td><td>0.95 – 1.05</td><td>0.5</td><td>0.8</td><td>\(3, 1.5\)</td><td>0.76 – 0.84</td>", page)
    assert page.index("<td class=l>64</td>") < page.index("<td class=l>256</td>")
    assert "No condition summary yet" in page  # the experiment that has not run
    specs = [json.loads(m) for m in re.findall(r"^vegaEmbed\('#table[a-z]+', (.*), \{actions: false\}\);$",
                                                page, re.M)]
    assert len(specs) == 5
    data = list(specs[0]["datasets"].values())
    assert sorted(len(d) for d in data) == [3, 3]  # beta_min and the term, three widths each
    assert specs[0]["hconcat"][0]["encoding"]["x"]["sort"] == ["16", "64", "256"]


def test_table2_page_without_sequences(tmp_path):
    (tmp_path / "results").mkdir()
    page = t2.write_table2(tmp_path / "results", [], tmp_path / "t.html").read_text()
    assert "No experiment of this study varies" in page and "<script" not in page


def test_sequence_rows_order(table2_results):
    results, seqs = table2_results
    with store.connect(results) as con:
        rows = t2.sequence_rows(con, seqs[0])
    assert rows["value"].to_list() == ["16", "64", "256"] and rows["beta_min"].to_list() == [1, 3, 2]
    assert isinstance(rows, pl.DataFrame)
