"""How the outbox's admin, health page, claim and alerts behave on a large outbox.

A benchmark, not a test: it fills its own PostgreSQL database (``capi_bench``) with N rows,
times each page and operation five times and writes ``bench/results.md`` and
``bench/plans.txt``. See bench/README.md.

    .venv/bin/python bench/outbox_at_scale.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SERVER_URL = "postgres://postgres@127.0.0.1:5432/"
DATABASE = "capi_bench"
DATABASE_URL = SERVER_URL + DATABASE
REPEAT = 5

#: Median targets in ms at 1M rows on the 2-core reference machine (see bench/README.md).
CHANGELIST_TARGET = 300
HEALTH_TARGET = 1000
CLAIM_TARGET = 200

# One INSERT ... SELECT: rows are generated inside PostgreSQL; {rows} and {order_type} are
# filled in as literals by psycopg.sql. Shares: 96 % delivered (created in the last 30 days,
# as the purge keeps them), 2 % failed, 1 % cancelled (both over 60 days), 1 % pending and
# due (recent). Unique (pixel_id, event_name, event_id): event_id embeds g.
FILL_SQL = """
INSERT INTO django_capi_outboxevent (
    pixel_id, event_name, event_id, event_time, action_source, payload, status,
    failure_reason, last_error, warnings, attempts, next_attempt_at, lease_token,
    leased_until, created_at, delivered_at, last_attempt_at, last_http_status,
    last_error_code, last_error_subcode, last_error_type, last_events_received,
    last_duration_ms, fbtrace_id, source_type_id, source_id
)
SELECT
    pixel_id, event_name, event_id, created_at, action_source,
    jsonb_build_object(
        'event_name', event_name,
        'event_time', floor(extract(epoch FROM created_at))::bigint,
        'event_id', event_id,
        'action_source', action_source,
        'event_source_url', 'https://shop.example.com/p/' || (g % 5000),
        'user_data', jsonb_strip_nulls(jsonb_build_object(
            'em', CASE WHEN g % 100 < 70 THEN jsonb_build_array(md5('em' || g)) END,
            'ph', CASE WHEN g % 100 < 45 THEN jsonb_build_array(md5('ph' || g)) END,
            'external_id', CASE WHEN g % 10 < 6 THEN jsonb_build_array(md5('x' || g)) END,
            'fbc', CASE WHEN g % 100 < 35 THEN 'fb.1.1700000000000.IwAR' || md5('c' || g) END,
            'fbp', CASE WHEN g % 100 < 80 THEN 'fb.1.1700000000000.' || g END,
            'client_ip_address', CASE WHEN g % 100 < 90
                THEN '203.0.' || (g % 256) || '.' || (g % 253 + 1) END,
            'client_user_agent', CASE WHEN g % 100 < 90
                THEN 'Mozilla/5.0 (X11; Linux x86_64) Chrome/12' || (g % 10) || '.0' END
        )),
        'custom_data', CASE WHEN event_name = 'Purchase' THEN jsonb_build_object(
            'currency', 'EUR', 'value', round((g % 20000) / 100.0, 2),
            'content_ids', jsonb_build_array('SKU-' || (g % 900)), 'content_type', 'product'
        ) ELSE jsonb_build_object() END
    ),
    status,
    CASE WHEN status = 'failed' THEN reason ELSE '' END,
    CASE
        WHEN status <> 'failed' THEN ''
        WHEN reason = 'invalid' THEN 'Invalid event: ' || (ARRAY[
            'event_time is in the future', 'no user data to match on',
            'custom_data.value is not a number', 'currency is missing'])[1 + g % 4]
        WHEN reason = 'expired' THEN 'Too old for Meta: event_time is more than 7 days ago'
        WHEN reason = 'rejected' THEN (ARRAY[
            'Invalid parameter: The parameter event_time is too far in the past',
            'Invalid parameter: Invalid email hash', 'Invalid parameter: fbc is malformed',
            'Invalid parameter: Unsupported action_source'])[1 + g % 4]
        ELSE (ARRAY[
            'HTTP 500: An unexpected error has occurred. Please retry your request later.',
            'HTTP 503: Service temporarily unavailable',
            'Connection timed out after 10 s', 'HTTP 429: Application request limit reached'
            ])[1 + g % 4]
    END,
    '[]'::jsonb,
    CASE status WHEN 'delivered' THEN 1 + (g % 50 = 0)::int
        WHEN 'failed' THEN CASE WHEN reason = 'invalid' THEN 0 ELSE 1 + g % 8 END
        WHEN 'pending' THEN g % 3 ELSE 0 END,
    CASE WHEN status = 'pending' THEN created_at + interval '1 second' * (g % 60)
        ELSE created_at END,
    NULL, NULL,
    created_at,
    CASE WHEN status = 'delivered'
        THEN least(now(), created_at + interval '1 millisecond' * (200 + g % 30000)) END,
    CASE WHEN status = 'delivered'
            THEN least(now(), created_at + interval '1 millisecond' * (200 + g % 30000))
        WHEN status = 'failed' AND reason <> 'invalid'
            THEN least(now(), created_at + interval '1 minute' * (g % 240)) END,
    CASE WHEN status = 'delivered' THEN 200
        WHEN status = 'failed' AND reason = 'rejected' THEN 400
        WHEN status = 'failed' AND reason = 'exhausted' THEN 500 END,
    CASE WHEN status = 'failed' AND reason = 'rejected' THEN 100 END,
    CASE WHEN status = 'failed' AND reason = 'rejected' THEN 2804003 + g % 4 END,
    CASE WHEN status = 'failed' AND reason = 'rejected' THEN 'OAuthException' ELSE '' END,
    CASE WHEN status = 'delivered' THEN 1 + g % 50 END,
    CASE WHEN status IN ('delivered', 'failed') THEN 80 + g % 400 END,
    CASE WHEN status IN ('delivered', 'failed') THEN 'A' || substr(md5('t' || g), 1, 20)
        ELSE '' END,
    CASE WHEN event_name = 'Purchase' THEN {order_type} END,
    CASE WHEN event_name = 'Purchase' THEN g::text ELSE '' END
FROM (
    SELECT
        g, status, reason, event_name, pixel_id, action_source,
        'ev-' || g || '-' || substr(md5(g::text), 1, 12) AS event_id,
        CASE status
            WHEN 'delivered' THEN now() - interval '30 days' * r
            WHEN 'pending' THEN now() - interval '10 minutes' * r
            ELSE now() - interval '60 days' * r
        END AS created_at
    FROM (
        SELECT
            g, random() AS r,
            CASE WHEN g % 100 < 96 THEN 'delivered' WHEN g % 100 < 98 THEN 'failed'
                WHEN g % 100 < 99 THEN 'pending' ELSE 'cancelled' END AS status,
            (ARRAY['rejected', 'rejected', 'exhausted', 'invalid', 'expired'])[1 + g / 100 % 5]
                AS reason,
            (ARRAY['PageView', 'PageView', 'PageView', 'ViewContent', 'ViewContent',
                'AddToCart', 'InitiateCheckout', 'Purchase', 'Lead', 'CompleteRegistration'
                ])[1 + g / 7 % 10] AS event_name,
            CASE WHEN g % 5 = 0 THEN '9876543210' ELSE '1234567890' END AS pixel_id,
            CASE WHEN g % 50 = 0 THEN 'physical_store' ELSE 'website' END AS action_source
        FROM generate_series(1, {rows}) AS g
    ) AS base
) AS picked
"""

# Failed rows that reached Meta get one to three requests in their history: one
# DeliveryAttempt per request, each linked to the event it did not deliver (AttemptEvent).
ATTEMPTS_SQL = """
WITH picked AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('django_capi_deliveryattempt', 'id')) AS attempt_id,
        e.id AS event_id, e.pixel_id, e.last_attempt_at - interval '1 minute' * n AS attempted_at,
        1 + e.id % 1000 AS batch_size, e.last_http_status, e.last_error_code,
        e.last_error_subcode, e.last_error_type, e.last_error, e.fbtrace_id, e.last_duration_ms
    FROM django_capi_outboxevent e, generate_series(0, e.id % 3) AS n
    WHERE e.status = 'failed' AND e.last_attempt_at IS NOT NULL
), made AS (
    INSERT INTO django_capi_deliveryattempt (
        id, pixel_id, attempted_at, outcome, batch_size, http_status, error_code, error_subcode,
        error_type, error_title, error_message, fbtrace_id, events_received, duration_ms,
        messages
    )
    SELECT attempt_id, pixel_id, attempted_at, 'failed', batch_size, last_http_status,
        last_error_code, last_error_subcode, last_error_type, split_part(last_error, ': ', 1),
        last_error, fbtrace_id, NULL, last_duration_ms, '[]'::jsonb
    FROM picked
)
INSERT INTO django_capi_attemptevent (attempt_id, event_id, outcome)
SELECT attempt_id, event_id, 'failed' FROM picked
"""

COUNT_RE = re.compile(r"\bCOUNT\(", re.IGNORECASE)
LIMIT_RE = re.compile(r"\bLIMIT\b", re.IGNORECASE)
# COMMIT, SAVEPOINT and the like can be slow (a commit waits for WAL) but have no plan.
EXPLAINABLE_RE = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)


@dataclass
class Result:
    name: str
    target_ms: int | None
    times_ms: list[float] = field(default_factory=list)
    queries: int = 0
    unbounded_counts: list[str] = field(default_factory=list)
    slowest_sql: str = ""
    slowest_ms: float = 0.0
    last_run: list[tuple[float, str]] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def verdict(self) -> str:
        if self.target_ms is None:
            return "—"
        return "ok" if self.median < self.target_ms else "**MISSED**"


def prepare_database() -> None:
    with psycopg.connect(SERVER_URL + "postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE])
        if exists.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')  # a constant, not input
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["DATABASE_URL"] = DATABASE_URL
    import django

    django.setup()


def fill(rows: int) -> float:
    from django.contrib.contenttypes.models import ContentType

    from tests.shop.models import Order

    order_type = ContentType.objects.get_for_model(Order).pk
    fill_sql = sql.SQL(FILL_SQL).format(rows=sql.Literal(rows), order_type=sql.Literal(order_type))
    started = time.perf_counter()
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(fill_sql)
        conn.execute(ATTEMPTS_SQL)
        # VACUUM includes ANALYZE and sets the visibility map, as autovacuum would have on a
        # table in service: index-only scans then read no heap pages.
        conn.execute("VACUUM (ANALYZE) django_capi_outboxevent")
        conn.execute("VACUUM (ANALYZE) django_capi_deliveryattempt")
        conn.execute("VACUUM (ANALYZE) django_capi_attemptevent")
    return time.perf_counter() - started


def measure(name: str, target_ms: int | None, run: Any, after: Any = None) -> Result:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    result = Result(name, target_ms)
    for _ in range(REPEAT):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            run()
            result.times_ms.append((time.perf_counter() - started) * 1000)
        if after is not None:
            after()
        queries = captured.captured_queries
        result.queries = len(queries)
        result.last_run = [(float(q["time"]) * 1000, q["sql"]) for q in queries]
        for query in queries:
            sql, ms = query["sql"], float(query["time"]) * 1000
            if COUNT_RE.search(sql) and not LIMIT_RE.search(sql):
                first = sql if len(sql) < 160 else sql[:157] + "..."
                if first not in result.unbounded_counts:
                    result.unbounded_counts.append(first)
            if ms > result.slowest_ms and EXPLAINABLE_RE.match(sql):
                result.slowest_ms, result.slowest_sql = ms, sql
    return result


def page(client: Any, url: str) -> Any:
    def run() -> None:
        response = client.get(url)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")
        response.content  # noqa: B018 -- render fully

    return run


def benchmark() -> list[Result]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    from django_capi import alerts, outbox
    from django_capi.models import OutboxEvent

    user = get_user_model().objects.create_superuser("bench", "bench@example.com", "bench")
    client = Client()
    client.force_login(user)
    changelist = reverse("admin:django_capi_outboxevent_changelist")
    sample = OutboxEvent.objects.filter(status="failed").exclude(last_attempt_at=None).first()
    if sample is None:
        raise RuntimeError("no failed event to look at")
    order_id = OutboxEvent.objects.exclude(source_id="").values_list("source_id", flat=True)[0]
    newest = OutboxEvent.objects.filter(status="delivered").order_by("-created_at").first()
    year, month = (newest.created_at.year, newest.created_at.month) if newest else (2026, 1)

    # Every status: each is served by a partial index of its own rows or by the created_at
    # order, whichever the planner picks for this share of the table.
    by_status = [
        measure(
            f"changelist ?status__exact={status}",
            CHANGELIST_TARGET,
            page(client, f"{changelist}?status__exact={status}"),
        )
        for status in OutboxEvent.Status.values
    ]
    results = [
        measure("changelist (default)", CHANGELIST_TARGET, page(client, changelist)),
        *by_status,
        measure(
            "changelist ?q=<event_id>",
            CHANGELIST_TARGET,
            page(client, f"{changelist}?q={sample.event_id}"),
        ),
        measure(
            "changelist ?q=<order id>",
            CHANGELIST_TARGET,
            page(client, f"{changelist}?q={order_id}"),
        ),
        measure(
            f"changelist ?created_at__year={year}&created_at__month={month}",
            CHANGELIST_TARGET,
            page(client, f"{changelist}?created_at__year={year}&created_at__month={month}"),
        ),
        measure(
            "change page (failed event with attempts)",
            None,
            page(client, reverse("admin:django_capi_outboxevent_change", args=[sample.pk])),
        ),
        measure(
            "health page",
            HEALTH_TARGET,
            page(client, reverse("admin:django_capi_outboxevent_health")),
        ),
    ]

    claimed: list[int] = []

    def claim() -> None:
        lease = outbox.claim(limit=1000, lease_seconds=60, using="default")
        if len(lease.rows) != 1000:
            raise RuntimeError(f"claimed {len(lease.rows)} rows, not 1000")
        claimed[:] = [row.pk for row in lease.rows]

    def release() -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE django_capi_outboxevent SET leased_until = NULL, lease_token = NULL,"
                " next_attempt_at = now() - interval '1 second', attempts = attempts - 1"
                " WHERE id = ANY(%s)",
                [claimed],
            )

    results.append(
        measure("outbox.claim(limit=1000) (+ release, untimed)", CLAIM_TARGET, claim, release)
    )
    results.append(measure("alerts.evaluate()", None, alerts.evaluate))
    return results


def explain(results: list[Result]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of each measurement's slowest query, rolled back: the
    claim's UPDATE must not change anything."""
    from django.db import connection, transaction

    out = []
    for result in results:
        out.append(f"=== {result.name} ===\n\nQueries of the last run, slowest first:\n")
        for ms, query in sorted(result.last_run, reverse=True):
            out.append(f"  {ms:7.1f} ms  {query if len(query) < 200 else query[:197] + '...'}\n")
        out.append(f"\nSlowest query of all runs ({result.slowest_ms:.1f} ms):\n")
        out.append(result.slowest_sql + "\n\n")
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + result.slowest_sql)
            out.extend(line + "\n" for (line,) in cursor.fetchall())
            transaction.set_rollback(True)
        out.append("\n")
    return "".join(out)


def machine() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        (version,) = cursor.fetchone()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"nproc {cpus}, PostgreSQL {version}, Python {sys.version.split()[0]}"


def code_state() -> str:
    """The commit measured, and the library files changed since it (results move with them)."""
    git = shutil.which("git")
    if git is None:
        return "unknown (no git)"

    def run(*args: str) -> str:
        return subprocess.run(  # noqa: S603 -- git, fixed arguments
            [git, *args], check=False, cwd=ROOT, capture_output=True, text=True
        ).stdout

    head = run("rev-parse", "--short", "HEAD").strip()
    changed = [line[3:] for line in run("status", "--porcelain", "--", "django_capi").splitlines()]
    return head + (f" plus uncommitted changes to {', '.join(changed)}" if changed else "")


def table(results: list[Result]) -> str:
    lines = [
        "| Measurement | Median ms | Max ms | Queries | COUNT without LIMIT | Target | Result |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for r in results:
        target = f"< {r.target_ms}" if r.target_ms else "—"
        counts = f"yes ({len(r.unbounded_counts)})" if r.unbounded_counts else "no"
        lines.append(
            f"| {r.name} | {r.median:.0f} | {max(r.times_ms):.0f} | {r.queries} | {counts} "
            f"| {target} | {r.verdict} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="outbox rows (1000000)")
    args = parser.parse_args()

    prepare_database()
    setup_django()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    print(f"Filling {args.rows:,} rows...", flush=True)
    seconds = fill(args.rows)
    print(f"Filled and vacuumed in {seconds:.1f} s", flush=True)

    results = benchmark()
    unbounded = (
        "".join(f"- {r.name}: `{query}`\n" for r in results for query in r.unbounded_counts)
        or "- none\n"
    )
    report = (
        f"# Outbox at scale\n\n"
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
        f"- Machine: {machine()}\n"
        f"- Code: {code_state()}\n"
        f"- Rows: {args.rows:,} outbox events (fill + VACUUM ANALYZE: {seconds:.0f} s)\n"
        f"- Each measurement run {REPEAT} times, no warm-up (the max is usually the cold run)\n\n"
        f"{table(results)}\n"
        f"COUNT queries without a LIMIT:\n\n{unbounded}"
    )
    print("\n" + report)
    (BENCH / "results.md").write_text(report)
    (BENCH / "plans.txt").write_text(explain(results))
    print(f"Wrote {BENCH / 'results.md'} and {BENCH / 'plans.txt'}")


if __name__ == "__main__":
    main()
