"""Components named in a config: a built-in name or an importable factory 'package.module:function'."""

from __future__ import annotations

import importlib
import inspect
import os
import sys


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


def check_component(name: str, builtin, kind: str, where: str) -> None:
    """A built-in name of ``kind`` or an importable factory path; else a ConfigError listing both."""
    if ":" in name:
        import_factory(name, where)
    elif name not in builtin:
        raise ConfigError(f"config key '{where}': unknown {kind} {name!r}; built-in {kind}s: "
                          f"{', '.join(sorted(builtin))}, or a factory 'package.module:function'")


def check_keywords(section: dict, factory, kind: str, where: str, implicit: tuple[str, ...] = ()) -> None:
    """The keys of a built-in component section must be keyword arguments of its factory: a typo
    (``seq_len`` for ``bptt``) is an error naming the allowed keys, not a silently ignored option."""

    params = inspect.signature(factory).parameters.values()
    allowed = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - set(implicit)
    unknown = sorted(set(section) - {"name"} - allowed)
    if unknown:
        raise ConfigError(f"config key '{where}': unknown option(s) {', '.join(map(repr, unknown))} for {kind} "
                          f"{section['name']!r}; its options: {', '.join(sorted(allowed)) or '(none)'}")
