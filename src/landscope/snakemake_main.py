"""``python -m landscope.snakemake_main [ARGS]``: Snakemake's command line, as ``landscope run`` starts it, with
one fix to its scheduler loop.

Snakemake 9's scheduler (snakemake.scheduling.job_scheduler.JobScheduler) wakes itself after each pass
with a timer of ``--max-jobs-per-timespan``'s timespan (1 s by default), and every pass starts another
timer: each finished job's wake-up starts one more chain of them, so after N finished jobs the loop runs
about N times a second, and each pass re-evaluates every ready job's params and input sizes. On the default
study (308 jobs, ~50 waiting for a core) the Snakemake process had used 236 s of CPU 11 min 25 s into the run,
beside two cores' worth of jobs (13 s 8 min 15 s into the run with the fix; docs/performance.md). The fix
keeps at most one timer pending (one wake-up after the timespan is all the rate limit needs) and makes it a
daemon thread (Snakemake's exit no longer waits for it).

The fix is applied only where the method it replaces exists with the signature it expects; otherwise
Snakemake runs unchanged.
"""

from __future__ import annotations

import inspect
import threading

_lock = threading.Lock()  # guards each scheduler's pending timer


def schedule_reevaluation_once(self, delay) -> None:
    """One pending wake-up of the scheduler loop at most: a second request while one waits is redundant."""
    with _lock:
        if getattr(self, "_landscope_wakeup", None) is not None:
            return

        def fire():
            with _lock:
                self._landscope_wakeup = None
            self._open_jobs.release()

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        self._landscope_wakeup = timer
    timer.start()


def patch_scheduler() -> bool:
    """Replace JobScheduler._schedule_reevalutation (Snakemake's spelling) by
    :func:`schedule_reevaluation_once`; False (nothing changed) where Snakemake has no such method."""
    try:
        from snakemake.scheduling.job_scheduler import JobScheduler  # here: a test patches without running it
    except ImportError:
        return False
    original = getattr(JobScheduler, "_schedule_reevalutation", None)
    if original is None or list(inspect.signature(original).parameters) != ["self", "delay"]:
        return False
    JobScheduler._schedule_reevalutation = schedule_reevaluation_once
    return True


def main() -> None:
    from snakemake.cli import main as snakemake_cli  # here: importing this module must not load the CLI

    patch_scheduler()
    snakemake_cli()


if __name__ == "__main__":
    main()
