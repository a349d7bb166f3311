"""The library's architecture, checked: layers, no import circles, no private names across modules, short
modules, function-local imports only with a reason, thin workflow scripts, and docs that cite modules that ship.

Layers from the bottom (README, "Layout"): spec, factories, jobs, jobserver < settings, store, problem/ < config <
trajectory/ < measures/ < report/ < cli. A module imports only from its own layer or lower ones, at module level
and inside functions alike. ``landscope/__init__.py`` is the public face: it may import lazily from anywhere,
and the library imports nothing from it but ``__version__``.

Run as a script (``python tests/test_layers.py``) it prints every violation; under pytest each kind is a test.
The self-tests feed the checker a synthetic package with one violation of each kind, so a checker that stopped
seeing them fails too.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "landscope"

LAYERS = [  # from the bottom; a module belongs to the layer of its longest listed prefix
    ("landscope.spec", "landscope.factories", "landscope.jobs", "landscope.jobserver"),
    ("landscope.settings", "landscope.store", "landscope.problem"),
    ("landscope.config",),
    ("landscope.trajectory",),
    ("landscope.measures",),
    ("landscope.report",),
    ("landscope.cli", "landscope.progress", "landscope.snakemake_main"),
]
FACE_LAYER = len(LAYERS)  # `from landscope import Recorder` inside the library reaches over every layer
MAX_LINES = 600
SCRIPT_STATEMENTS = 5  # statements of a workflow script besides its docstring and imports


@dataclass(frozen=True)
class Import:
    """One import statement's edge to another landscope module."""

    module: str  # the importing module
    path: Path
    line: int
    text: str  # the statement, unparsed
    target: str  # the landscope module imported from (or imported)
    names: tuple[str, ...]  # names taken from ``target`` (empty for ``import landscope.x``)
    local: bool  # inside a function


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(src: Path, package: str = PACKAGE) -> dict[str, Path]:
    """{dotted name: file} of every module of ``package`` under ``src``."""
    return {module_name(p, src): p for p in sorted((src / package).rglob("*.py"))}


def layer_of(module: str, layers=LAYERS) -> int | None:
    """The layer index of ``module`` (None: placed in no layer)."""
    best, found = -1, None
    for i, prefixes in enumerate(layers):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, found = len(p), i
    return found


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _in_function(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` statement names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, module: str, known: set[str], package: str = PACKAGE):
    """(landscope imports [Import], function-local imports of anything [(line, text, has comment)],
    names bound to landscope modules {name: module}, the parsed tree) of one file."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, str(path))
    lines = source.splitlines()
    parents = _parents(tree)
    out, local, bound = [], [], {}
    for node in sorted(ast.walk(tree), key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0))):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        inside = _in_function(node, parents)
        text = ast.unparse(node)
        if inside:
            commented = any("#" in lines[i - 1] for i in range(node.lineno, (node.end_lineno or node.lineno) + 1))
            local.append((node.lineno, text, commented))
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    out.append(Import(module, path, node.lineno, text, alias.name, (), inside))
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        bound[package] = package
            continue
        source_module = _resolve_from(node, module, path.name == "__init__.py")
        if not (source_module == package or source_module.startswith(package + ".")):
            continue
        plain = []
        for alias in node.names:
            sub = f"{source_module}.{alias.name}"
            if sub in known:  # `from landscope.report import base`: an edge to the module itself
                out.append(Import(module, path, node.lineno, text, sub, (), inside))
                bound[alias.asname or alias.name] = sub
            else:
                plain.append(alias.name)
        if plain:
            out.append(Import(module, path, node.lineno, text, source_module, tuple(plain), inside))
    return out, local, bound, tree


def private_attributes(tree: ast.AST, bound: dict[str, str]) -> list[tuple[int, str]]:
    """(line, expression) of every ``mod._name`` where ``mod`` names an imported landscope module."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, inner = [node.attr], node.value
        while isinstance(inner, ast.Attribute):
            chain.append(inner.attr)
            inner = inner.value
        if not isinstance(inner, ast.Name) or inner.id not in bound:
            continue
        attr = node.attr
        if attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__")):
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one node (import circles)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check_tree(src: Path, layers=LAYERS, package: str = PACKAGE, max_lines: int = MAX_LINES,
               root: Path | None = None) -> dict[str, list[str]]:
    """Every violation under ``src/<package>``, by kind: upward, cycle, private, length, local."""
    root = root or src.parent
    mods = modules(src, package)
    known = set(mods)
    found = {k: [] for k in ("upward", "cycle", "private", "length", "local")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        rel = path.relative_to(root)
        n_lines = len(path.read_text(encoding="utf-8").splitlines())
        if n_lines > max_lines:
            found["length"].append(f"{rel}: {n_lines} lines (at most {max_lines})")
        edges, local, bound, tree = imports_of(path, mod, known, package)
        for line, text, commented in local:
            if not commented:
                found["local"].append(f"{rel}:{line}: `{text}` inside a function without a reason (a comment) "
                                      "on its line")
        face = mod == package
        own = layer_of(mod, layers)
        if own is None and not face:
            found["upward"].append(f"{rel}: module {mod} is in no layer (add it to LAYERS in tests/test_layers.py)")
        for imp in edges:
            where = f"{rel}:{imp.line}: `{imp.text}`"
            privates = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
            if privates and imp.target != mod:
                found["private"].append(f"{where} takes private {', '.join(privates)} from {imp.target}")
            if face:
                continue  # the public face imports lazily from anywhere
            if imp.target == package:
                target = 0 if set(imp.names) <= {"__version__"} else FACE_LAYER
            else:
                target = layer_of(imp.target, layers)
            if own is not None and target is not None and target > own:
                found["upward"].append(f"{where} imports from a higher layer ({imp.target}: layer {target} "
                                       f"above {mod}: layer {own})")
            if imp.target != mod and imp.target in graph:
                graph[mod].add(imp.target)
        for line, expr in private_attributes(tree, bound):
            found["private"].append(f"{rel}:{line}: `{expr}` reads a private name of another landscope module")
    graph.pop(package, None)  # the face's lazy imports run at call time, never while importing
    for comp in strongly_connected(graph):
        found["cycle"].append("import circle: " + " -> ".join(comp))
    return found


def check_scripts(folder: Path, limit: int = SCRIPT_STATEMENTS) -> list[str]:
    """Workflow scripts are thin adapters: no def, class or lambda, and at most ``limit`` statements besides
    the docstring and imports (one library call in a job_logging block, and the values it takes)."""
    found = []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                found.append(f"{path.name}:{node.lineno}: a {type(node).__name__} (logic belongs in the library)")
        body = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        if len(body) > limit:
            found.append(f"{path.name}: {len(body)} statements besides imports (at most {limit})")
    return found


CITED = re.compile(r"\blandscope(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
NOT_MODULES = {"landscope.duckdb", "landscope.yaml", "landscope.html"}  # file names: results/landscope.duckdb


def cited_modules(paths: list[Path], known: set[str]) -> list[str]:
    """Every ``landscope.x.y`` cited in ``paths`` that names no module (nor a name in one)."""
    found = []
    for path in paths:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in CITED.finditer(line):
                name = m.group(0)
                if name in NOT_MODULES or name in known:
                    continue
                parent = name.rsplit(".", 1)[0]
                if parent in known:  # a name inside a module: it must be defined there
                    src = (SRC / Path(*parent.split("."))).with_suffix(".py")
                    if not src.exists():
                        src = SRC / Path(*parent.split(".")) / "__init__.py"
                    attr = name.rsplit(".", 1)[1]
                    if re.search(rf"^(def |class |){re.escape(attr)}\b|[\"']{re.escape(attr)}[\"']",
                                 src.read_text(encoding="utf-8"), re.M):
                        continue
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.append(f"{where}:{i}: `{name}` names no module or definition")
    return found


# ----------------------------------------------------------------------------------- the real tree
def _report(kind: str) -> list[str]:
    return check_tree(SRC)[kind]


@pytest.mark.parametrize("kind", ["upward", "cycle", "private", "length", "local"], ids=[
    "no import from a higher layer", "no import circles", "no private names across modules",
    "modules stay short", "function-local imports say why"])
def test_layering_rule(kind):
    found = _report(kind)
    assert not found, "\n".join(found)


def test_every_module_is_in_a_layer():
    missing = [m for m in modules(SRC) if m != PACKAGE and layer_of(m) is None]
    assert missing == []


def private_uses(paths: list[Path], known: set[str]) -> list[str]:
    """``from landscope.x import _y`` and ``x._y`` on a landscope module in files outside the library."""
    found = []
    for path in paths:
        edges, _, bound, tree = imports_of(path, path.stem, known)
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        found += [f"{where}:{imp.line}: `{imp.text}`" for imp in edges
                  if any(n.startswith("_") and not n.startswith("__") for n in imp.names)]
        found += [f"{where}:{line}: `{expr}`" for line, expr in private_attributes(tree, bound)]
    return found


def test_tests_benchmarks_and_examples_use_no_private_names():
    """What a test or a benchmark needs is public (named, documented); an underscore means "this file only"."""
    paths = [p for d in ("tests", "benchmarks", "examples") for p in sorted((ROOT / d).rglob("*.py"))]
    found = private_uses(paths, set(modules(SRC)))
    assert not found, "\n".join(found)


def test_workflow_scripts_are_thin():
    found = check_scripts(ROOT / "workflow" / "scripts")
    assert not found, "\n".join(found)


def test_docs_cite_modules_that_ship():
    """Every `landscope.x.y` in the docs, the workflow, the schema, the examples, the benchmarks and the
    library's own docstrings and messages names a module (or a name defined in one) that exists."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "workflow").rglob("*.py")),
            *sorted((ROOT / "workflow" / "rules").glob("*.smk")), *sorted((SRC / PACKAGE).rglob("*.py")),
            *sorted((SRC / PACKAGE).rglob("*.yaml")), *sorted((ROOT / "examples").glob("*.py")),
            *sorted((ROOT / "benchmarks").glob("*.py"))]
    found = cited_modules(docs, set(modules(SRC)))
    assert not found, "\n".join(found)


def test_docs_cite_only_what_ships():
    """No pointer to design notes that are not in the repository, nor a temporary path of the machine
    something was measured on."""
    bad = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((SRC / PACKAGE).rglob("*.py")),
                 *sorted((ROOT / "workflow").rglob("*.*"))]:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"DESIGN\.md|PAPER\.md|(?<![\w.])/tmp/", line):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------------------------- the checker itself
SYNTHETIC = {  # one violation of each kind, each in a file of its own
    "__init__.py": "def __getattr__(name):\n    from pkg.top import thing  # lazy: the face may reach up\n"
                   "    return thing\n",
    "low.py": "from pkg.top import thing\n",  # upward, at module level
    "mid.py": "def f():\n    from pkg import top  # a reason, but still upward\n    return top._hidden\n",
    "a.py": "import pkg.b\n",  # a and b: a circle within one layer
    "b.py": "from pkg import a\n",
    "top.py": "from pkg.low import _secret\nthing = 1\n",  # private name taken
    "long.py": "x = 1\n" * 11,  # longer than 10 lines
    "local.py": "def f():\n    import json\n    return json\n",  # local import, no reason
    "ok.py": "def f():\n    import json  # keeps json off the import path\n    from pkg.low import g  # likewise\n"
             "    return json, g\n",
}
SYNTHETIC_LAYERS = [("pkg.low", "pkg.a", "pkg.b", "pkg.local", "pkg.long", "pkg.ok"), ("pkg.mid",), ("pkg.top",)]


def test_checker_reports_each_kind_of_violation(tmp_path):
    for name, text in SYNTHETIC.items():
        (tmp_path / "pkg").mkdir(exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    found = check_tree(tmp_path, SYNTHETIC_LAYERS, package="pkg", max_lines=10, root=tmp_path)
    assert found["upward"] == [
        "pkg/low.py:1: `from pkg.top import thing` imports from a higher layer "
        "(pkg.top: layer 2 above pkg.low: layer 0)",
        "pkg/mid.py:2: `from pkg import top` imports from a higher layer (pkg.top: layer 2 above pkg.mid: layer 1)"]
    assert found["cycle"] == ["import circle: pkg.a -> pkg.b", "import circle: pkg.low -> pkg.top"]
    assert found["private"] == ["pkg/mid.py:3: `top._hidden` reads a private name of another landscope module",
                                "pkg/top.py:1: `from pkg.low import _secret` takes private _secret from pkg.low"]
    assert found["length"] == ["pkg/long.py: 11 lines (at most 10)"]
    assert found["local"] == ["pkg/local.py:2: `import json` inside a function without a reason (a comment) "
                              "on its line"]


def test_checker_resolves_every_import_form(tmp_path):
    """`import pkg.x`, `import pkg.x as y`, `from pkg import x`, `from pkg.x import y` and relative imports
    all reach the same module, at module level and inside functions."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "top.py").write_text("thing = 1\n")
    forms = ["import pkg.top", "import pkg.top as t", "from pkg import top", "from pkg.top import thing",
             "from .. import top", "from ..top import thing"]
    for i, form in enumerate(forms):
        (tmp_path / "pkg" / "sub" / f"m{i}.py").write_text(f"def f():\n    {form}  # why\n")
    found = check_tree(tmp_path, [("pkg.sub",), ("pkg.top",)], package="pkg", root=tmp_path)
    assert [line.split(":")[0] for line in found["upward"]] == [f"pkg/sub/m{i}.py" for i in range(len(forms))]
    assert found["cycle"] == found["private"] == found["local"] == []


def test_script_checker_refuses_logic(tmp_path):
    (tmp_path / "thin.py").write_text('"""doc"""\nfrom x import f\n\nf(1)\n')
    (tmp_path / "thick.py").write_text("import x\n\ndef g():\n    pass\n" + "x.a()\n" * 6)
    assert check_scripts(tmp_path) == ["thick.py:3: a FunctionDef (logic belongs in the library)",
                                       "thick.py: 7 statements besides imports (at most 5)"]


def test_cited_module_checker(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("landscope.store and landscope.store.connect, landscope.duckdb; not landscope.nothing_here "
                   "nor landscope.store.no_such_function\n")
    got = [line.split(": ", 1)[1] for line in cited_modules([doc], set(modules(SRC)))]
    assert got == ["`landscope.nothing_here` names no module or definition",
                   "`landscope.store.no_such_function` names no module or definition"]


if __name__ == "__main__":
    report = check_tree(SRC)
    report["scripts"] = check_scripts(ROOT / "workflow" / "scripts")
    report["private outside src"] = private_uses(
        [p for d in ("tests", "benchmarks", "examples") for p in sorted((ROOT / d).rglob("*.py"))], set(modules(SRC)))
    for kind, lines in report.items():
        print(f"{kind}: {len(lines)}")
        for line in lines:
            print("  " + line)
    sys.exit(1 if any(report.values()) else 0)
