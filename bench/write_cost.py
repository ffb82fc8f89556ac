"""What the outbox's two hot writes cost the PostgreSQL server, index entries included.

Run after ``bench/outbox_at_scale.py`` has filled ``capi_bench`` (its indexes then hold a
million rows, as in service). It captures the statements the library itself runs, then
times each with ``EXPLAIN (ANALYZE, BUFFERS, WAL)`` inside a transaction that is rolled back
(nothing stays written), several times, and prints the medians:

- the checkout's outbox INSERT: a registered paid ``Order`` saved once (rolled back) gives
  the statement; each run gives it a new ``event_id``;
- a delivered write-back of 1,000 rows: ``outbox.claim`` leases 1,000 due rows (committed),
  ``outbox.mark_delivered`` of them gives the statement (rolled back); the rows are released
  at the end.

    .venv/bin/python bench/write_cost.py --runs 15
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = "postgres://postgres@127.0.0.1:5432/capi_bench"
OUTBOX = "django_capi_outboxevent"


class Rollback(Exception):
    """Leaves the transaction whose statements were captured."""


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["DATABASE_URL"] = DATABASE_URL
    import django

    django.setup()


def captured(run: Any, prefix: str) -> str:
    """The first statement starting with ``prefix`` that ``run`` executes, as sent (the
    driver binds parameters client-side); nothing ``run`` wrote stays."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        try:
            with transaction.atomic():
                run()
                raise Rollback
        except Rollback:
            pass
    return next(q["sql"] for q in queries.captured_queries if q["sql"].startswith(prefix))


def insert_statement() -> tuple[str, str]:
    from tests.shop.models import Order

    def save() -> None:
        Order.objects.create(
            email="bench@example.com", status="paid", total=42, user_agent="UA/1", ip="203.0.113.9"
        )

    sql = captured(save, f'INSERT INTO "{OUTBOX}"')
    # The third value is the event id (pixel, name, id lead the columns); the payload repeats it.
    found = re.search(r"VALUES \('[^']*', '[^']*', '([^']+)'", sql)
    if found is None:
        raise SystemExit("the outbox INSERT no longer starts with pixel, name and event id")
    return sql, found.group(1)


def writeback_statement(rows: int) -> tuple[str, Any]:
    from django_capi import outbox
    from django_capi.client import GraphResult

    lease = outbox.claim(limit=rows, lease_seconds=3600, using="default")
    if len(lease.rows) < rows:
        raise SystemExit(f"only {len(lease.rows)} due rows: fill capi_bench first")
    answer = GraphResult(http_status=200, duration_ms=80, events_received=rows, fbtrace_id="A1")

    def deliver() -> None:
        outbox.mark_delivered(lease, lease.rows, answer)

    return captured(deliver, f'UPDATE "{OUTBOX}"'), lease


def explain(conn: psycopg.Connection[Any], sql: str) -> dict[str, Any]:
    plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) " + sql).fetchone()
    conn.rollback()
    assert plan is not None  # noqa: S101 - EXPLAIN always answers
    return plan[0][0]  # type: ignore[no-any-return]


def runs(sql: str, count: int, fresh: Any = None) -> list[dict[str, Any]]:
    """``count`` plans of ``sql`` on one connection, after one run that warms its caches
    (a new connection first loads the table's and each index's catalog entries)."""
    with psycopg.connect(DATABASE_URL) as conn:
        return [explain(conn, fresh(sql) if fresh else sql) for _ in range(count + 1)][1:]


def summary(name: str, plans: list[dict[str, Any]]) -> str:
    def median(key: str) -> float:
        return statistics.median(float(p["Plan"].get(key, 0)) for p in plans)

    ms = statistics.median(p["Execution Time"] for p in plans)
    return (
        f"| {name} | {ms:.3f} | {median('WAL Records'):.0f} | {median('WAL Bytes') / 1024:.1f} "
        f"| {median('Shared Hit Blocks') + median('Shared Dirtied Blocks'):.0f} |"
    )


def indexes() -> list[str]:
    with psycopg.connect(DATABASE_URL) as conn:
        return [
            name
            for (name,) in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = %s ORDER BY 1", [OUTBOX]
            )
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each statement (15)")
    parser.add_argument("--rows", type=int, default=1000, help="rows per write-back (1000)")
    args = parser.parse_args()
    setup_django()

    insert, event_id = insert_statement()
    inserts = runs(insert, args.runs, lambda sql: sql.replace(event_id, f"b-{uuid.uuid4()}"))
    update, lease = writeback_statement(args.rows)
    try:
        updates = runs(update, args.runs)
    finally:
        with psycopg.connect(DATABASE_URL) as conn:
            conn.execute(
                f"UPDATE {OUTBOX} SET leased_until = NULL, lease_token = NULL,"  # noqa: S608
                " attempts = attempts - 1 WHERE lease_token = %s",
                [lease.token],
            )
    print(f"Indexes of {OUTBOX}: {', '.join(indexes())}")
    print(f"Medians of {args.runs} runs, EXPLAIN (ANALYZE, BUFFERS, WAL), rolled back:\n")
    print("| Statement | Execution ms | WAL records | WAL kB | Buffers hit + dirtied |")
    print("|---|---:|---:|---:|---:|")
    print(summary("checkout's outbox INSERT (1 row)", inserts))
    print(summary(f"delivered write-back ({args.rows} rows)", updates))
    print("\nRaw (ms):", json.dumps([round(p["Execution Time"], 3) for p in inserts]))
    print("Raw (ms):", json.dumps([round(p["Execution Time"], 3) for p in updates]))


if __name__ == "__main__":
    main()
