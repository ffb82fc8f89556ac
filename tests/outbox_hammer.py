"""A process that hammers the outbox's multi-row UPDATEs for the deadlock test on PostgreSQL
and MariaDB: ``python -m tests.outbox_hammer ROLE SECONDS``. It prints one line:
``deadlocks N ops M``.

``keeper`` claims due rows with a short lease, renews them a few times (now and then after
the lease lapsed, so rows are taken over as in a stalled worker) and gives them back;
``pauser`` postpones and resumes the pixel, as rate limits and token changes do.
"""

import os
import random
import sys
import time
from datetime import timedelta

import django


def main() -> None:
    role, seconds = sys.argv[1], float(sys.argv[2])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from django.db import OperationalError
    from psycopg.errors import DeadlockDetected

    from django_capi import outbox
    from django_capi.client import GraphResult
    from tests.factories import PIXEL

    answer = GraphResult(http_status=503, duration_ms=1)
    chance = random.Random(os.getpid())
    deadlocks = ops = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if role == "keeper":
                lease = outbox.claim(
                    limit=chance.randint(50, 400), lease_seconds=1, using="default"
                )
                rows = lease.rows
                for _ in range(3):
                    if chance.random() < 0.05:
                        time.sleep(1.1)  # stalled past the lease: another keeper takes over
                    chance.shuffle(rows)
                    rows = outbox.keep(lease, rows[: chance.randint(1, len(rows) or 1)], 1)
                    ops += 1
                outbox.release(lease, lease.rows, delay=timedelta(0), error="x", result=answer)
            else:
                outbox.postpone_pixel("default", PIXEL, timedelta(seconds=chance.randint(1, 60)))
                outbox.resume_pixel("default", PIXEL)
            ops += 1
        except OperationalError as exc:
            # PostgreSQL's deadlock, or InnoDB's (MariaDB: error 1213) that outlived retries.
            if not (isinstance(exc.__cause__, DeadlockDetected) or exc.args[:1] == (1213,)):
                raise
            deadlocks += 1
    print(f"deadlocks {deadlocks} ops {ops}", flush=True)


if __name__ == "__main__":
    main()
