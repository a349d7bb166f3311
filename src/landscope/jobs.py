"""Glue for running library functions as pipeline jobs: one concise log file per job."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger("landscope")


@contextlib.contextmanager
def job_logging(log_path: str | Path | None, what: str):
    """Log to ``log_path`` (and stderr); record the exception, with its message, before re-raising."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(logging.INFO)
    t0 = time.perf_counter()
    log.info("start %s", what)
    try:
        yield log
    except Exception as exc:
        log.error("%s failed: %s: %s", what, type(exc).__name__, exc)
        raise
    else:
        log.info("done %s in %.2f s", what, time.perf_counter() - t0)
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()


def progress_bar(enabled: bool, total: int, initial: int, desc: str):
    """A tqdm bar of ``total`` steps, or None when disabled."""
    if not enabled:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", mininterval=1.0)
