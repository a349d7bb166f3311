"""Components named in a config: a built-in name or an importable factory 'package.module:function'.

A built-in's options are read from its factory's source text (:func:`factory_text`), not from the
imported function: validating a config, and so planning the DAG, never imports torch."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from functools import lru_cache
from typing import Iterable, NamedTuple


class ConfigError(ValueError):
    """A configuration problem, phrased as: where, what was given, what is allowed."""


def import_factory(path: str, where: str):
    """Resolve a factory named 'package.module:function'; errors name the config key.

    The working directory is importable (as with ``python -m``), so a study folder's own modules
    resolve in every job process without setting PYTHONPATH.
    """

    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    module, _, attr = path.partition(":")
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix
        raise ConfigError(f"config key '{where}': cannot import module '{module}' of factory "
                          f"'{path}': {type(exc).__name__}: {exc}. Is it installed / on PYTHONPATH?") from exc
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ConfigError(f"config key '{where}': module '{module}' has no callable '{attr}'")
    return fn


def check_component(name: str, builtin: Iterable[str], kind: str, where: str) -> None:
    """A built-in name of ``kind`` or an importable factory path; else a ConfigError listing both."""
    if ":" in name:
        import_factory(name, where)
    elif name not in builtin:
        raise ConfigError(f"config key '{where}': unknown {kind} {name!r}; built-in {kind}s: "
                          f"{', '.join(sorted(builtin))}, or a factory 'package.module:function'")


def check_keywords(section: dict, options: Iterable[str], kind: str, where: str,
                   implicit: tuple[str, ...] = ()) -> None:
    """The keys of a built-in component section must be among its factory's ``options`` (keyword
    names): a typo (``seq_len`` for ``bptt``) is an error naming the allowed keys, not a silently
    ignored option. ``implicit`` options are filled in by the library, not by the config."""

    allowed = set(options) - set(implicit)
    unknown = sorted(set(section) - {"name"} - allowed)
    if unknown:
        raise ConfigError(f"config key '{where}': unknown option(s) {', '.join(map(repr, unknown))} for {kind} "
                          f"{section['name']!r}; its options: {', '.join(sorted(allowed)) or '(none)'}")


# ----------------------------------------------------------------------------------- reading a factory's source
class FactoryText(NamedTuple):
    """What a factory's source says about it: its keyword options in order, each with the repr of
    its default (None: no default), and its docstring. For a class, those of its ``__init__``."""

    options: dict[str, str | None]
    doc: str


@lru_cache(maxsize=None)
def _module_tree(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)  # imports the parent packages only, never the module
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise LookupError(f"no Python source for module {module!r}")
    with open(spec.origin, encoding="utf-8") as fh:
        return ast.parse(fh.read(), spec.origin)


def _default_text(node: ast.expr) -> str:
    try:
        return repr(ast.literal_eval(node))
    except ValueError:  # not a literal (a name, a call): shown as written
        return ast.unparse(node)


@lru_cache(maxsize=None)
def factory_text(path: str) -> FactoryText:
    """Options and docstring of the top-level function or class named by ``path`` ('module:name'),
    read from the module's source without importing it (tests/test_planning.py checks the result
    against ``inspect.signature`` of every built-in)."""
    module, _, name = path.partition(":")
    found = [n for n in _module_tree(module).body
             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name]
    if not found:
        raise LookupError(f"{module} defines no top-level function or class {name!r}")
    node = found[-1]
    doc = ast.get_docstring(node) or ""
    if isinstance(node, ast.ClassDef):
        inits = [n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
        if not inits:
            raise LookupError(f"{path}: the class defines no __init__ to read its options from")
        node = inits[-1]
    args = node.args
    positional = args.posonlyargs + args.args  # defaults belong to the last of these
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    keyword = [*zip(positional, defaults)][len(args.posonlyargs):] + [*zip(args.kwonlyargs, args.kw_defaults)]
    options: dict[str, str | None] = {}
    for arg, default in keyword:
        if arg.arg not in ("self", "cls"):
            options[arg.arg] = None if default is None else _default_text(default)
    return FactoryText(options, doc)
