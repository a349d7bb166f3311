"""landscope.snakemake_main: Snakemake's scheduler keeps at most one pending wake-up timer (a daemon), so its
loop no longer runs once per finished job per second; the patch finds the method it replaces."""

import threading
import time

from landscope import snakemake_main


class FakeScheduler:
    """What the patched method touches: the loop's semaphore."""

    def __init__(self):
        self._open_jobs = threading.Semaphore(0)


def wakeups(s: FakeScheduler, wait: float) -> int:
    n = 0
    deadline = time.monotonic() + wait
    while s._open_jobs.acquire(timeout=max(0.0, deadline - time.monotonic())):
        n += 1
    return n


def test_many_requests_while_one_waits_give_one_wakeup():
    s = FakeScheduler()
    before = threading.active_count()
    for _ in range(50):  # Snakemake asks once per loop pass
        snakemake_main.schedule_reevaluation_once(s, 0.2)
    assert threading.active_count() - before == 1
    pending = s._landscope_wakeup
    assert pending.daemon  # Snakemake's exit does not wait for it
    assert wakeups(s, 1.0) == 1
    # after it fired, the next request starts a new one
    snakemake_main.schedule_reevaluation_once(s, 0.05)
    assert s._landscope_wakeup is not None and s._landscope_wakeup is not pending
    assert wakeups(s, 1.0) == 1


def test_the_patch_replaces_snakemakes_method():
    from snakemake.scheduling.job_scheduler import JobScheduler

    original = JobScheduler._schedule_reevalutation
    try:
        assert snakemake_main.patch_scheduler()
        assert JobScheduler._schedule_reevalutation is snakemake_main.schedule_reevaluation_once
    finally:
        JobScheduler._schedule_reevalutation = original


def test_unpatched_snakemake_starts_a_timer_per_request():
    """What the patch is for: Snakemake's own method starts a new timer on every call."""
    from snakemake.scheduling.job_scheduler import JobScheduler

    s = FakeScheduler()
    for _ in range(5):
        JobScheduler._schedule_reevalutation(s, 0.1)
    assert wakeups(s, 1.0) == 5
