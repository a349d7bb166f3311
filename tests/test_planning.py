"""Planning the DAG (`snakemake -n`) imports neither torch nor altair, and the built-ins' options that
validation reads from source text (without importing torch) are exactly their signatures."""

import inspect
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, SNAKEMAKE

from landscope.factories import factory_text, import_factory
from landscope.problem.registry import DATASETS, MODELS

HEAVY = ("torch", "altair")

# Imported at startup by every Python process that has its folder on PYTHONPATH: at exit it writes the
# names of all modules the process imported to $LANDSCOPE_MODULES_OUT.
HOOK = """import atexit, os, sys
_out = os.environ.get("LANDSCOPE_MODULES_OUT")
if _out:
    atexit.register(lambda: open(_out, "w").write("\\n".join(sorted(sys.modules))))
"""


def imported_modules(cmd: list[str], tmp_path, cwd) -> tuple[subprocess.CompletedProcess, set[str]]:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    out_file = tmp_path / "modules.txt"
    out_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
           "LANDSCOPE_MODULES_OUT": str(out_file)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert out_file.is_file(), f"the module hook wrote nothing: {proc.stderr[-2000:]}"
    return proc, set(out_file.read_text().split())


def test_the_hook_sees_a_heavy_import(tmp_path):
    """The check below can fail: a process that imports torch is seen importing it."""
    _, modules = imported_modules([sys.executable, "-c", "import torch"], tmp_path, tmp_path)
    assert "torch" in modules


@pytest.mark.parametrize("config", ["smoke.yaml", "config.yaml"])
def test_snakemake_dry_run_imports_neither_torch_nor_altair(config, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    cmd = [*SNAKEMAKE, "-n", "--cores", "1", "--configfile", str(ROOT / "config" / config),
           "-d", str(work), "-s", str(ROOT / "Snakefile")]
    proc, modules = imported_modules(cmd, tmp_path, work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout + proc.stderr, flags=re.M))
    assert int(jobs["train"]) > 0 and int(jobs["evaluate"]) > 0  # the DAG was planned
    assert {"snakemake", "landscope.config", "landscope.problem.sources", "landscope.report.claims"} <= modules
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"planning imported {heavy[:10]}"


# ----------------------------------------------------------------------------------- options from source
def _signature_options(fn) -> dict[str, str | None]:
    params = inspect.signature(fn).parameters.values()
    return {p.name: None if p.default is inspect.Parameter.empty else repr(p.default)
            for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


@pytest.mark.parametrize("table, name", [(MODELS, n) for n in MODELS] + [(DATASETS, n) for n in DATASETS])
def test_builtin_options_read_from_source_are_the_signature(table, name):
    builtin = table[name]
    assert callable(import_factory(builtin.factory, "name"))
    fn = import_factory(builtin.options_from or builtin.factory, "name")
    options, doc = builtin.text()
    assert options == _signature_options(fn)
    assert doc == inspect.getdoc(fn)


def test_factory_text_reads_defaults_kinds_and_classes(tmp_path, monkeypatch):
    (tmp_path / "lsfactories.py").write_text(
        "LIMIT = 3\n\n"
        "def f(a, /, b, c=1.5, *args, d, e=(1, 2), g=LIMIT, **kw):\n    '''Doc of f.\n\n    More.'''\n\n"
        "class K:\n    '''A class.'''\n\n    def helper(self, z=0):\n        pass\n\n"
        "    def __init__(self, n: int, flag: bool = True, name: str = 'x', **_):\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import lsfactories

    f_text = factory_text("lsfactories:f")
    assert f_text.options == {"b": None, "c": "1.5", "d": None, "e": "(1, 2)", "g": "LIMIT"}
    assert f_text.doc == inspect.getdoc(lsfactories.f) == "Doc of f.\n\nMore."
    k_text = factory_text("lsfactories:K")
    assert k_text.options == _signature_options(lsfactories.K) == {"n": None, "flag": "True", "name": "'x'"}
    assert k_text.doc == "A class."
    with pytest.raises(LookupError, match="no top-level function or class 'nope'"):
        factory_text("lsfactories:nope")
