"""``make bench``: django-capi against Meta's official SDK, measured side by side in one run,
written to ``docs/benchmarks.md``.

    .venv/bin/python -m bench.run                       # the defaults below, a few minutes
    .venv/bin/python -m bench.run --backlog 1000000     # the memory figure at 1M rows

Every measurement runs in a fresh process (``bench.scenarios``) against a loopback Graph API
stand-in (``bench.standin``) served from this process; see the Method section it writes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.standin import StandIn

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_SERVER = "postgres://postgres@127.0.0.1:5432/"
BATCH = 1000  # events per request on both sides: Meta's maximum (meta-capi.md §1.3)


@dataclass
class Options:
    events: int
    rounds: int
    orders: int
    saves: int
    naive_saves: int
    latency: float
    workers: int
    normalize_seconds: float
    backlog: int
    memory_database: str
    profile_events: int
    profile_saves: int
    databases: list[str]
    postgres: str
    output: Path


def parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--events", type=int, default=10_000, help="events drained per side (10000)")
    add("--rounds", type=int, default=5, help="alternating drain rounds per side (5)")
    add("--orders", type=int, default=2_000, help="orders saved through the ORM (2000)")
    add("--saves", type=int, default=300, help="timed saves per model for the checkout (300)")
    add("--naive-saves", type=int, default=20, help="checkout saves posting with the SDK (20)")
    add("--latency", type=float, default=0.1, help="simulated Graph latency in s (0.1)")
    add("--workers", type=int, default=4, help="drain workers against the latency (4)")
    add("--normalize-seconds", type=float, default=3.0, help="per side (3)")
    add("--backlog", type=int, default=50_000, help="rows for the memory figure (50000)")
    add("--memory-database", choices=["sqlite", "postgres"], default="sqlite")
    add("--profile-events", type=int, default=5_000, help="events in the profiled drain")
    add("--profile-saves", type=int, default=300, help="saves in the profiled checkout")
    add("--databases", default="sqlite,postgres", help="comma-separated (sqlite,postgres)")
    add("--postgres", default=POSTGRES_SERVER, help=f"server URL ({POSTGRES_SERVER})")
    add("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    return Options(
        **{
            **vars(args),
            "databases": [name.strip() for name in args.databases.split(",") if name.strip()],
        }
    )


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Databases and processes -------------------------------------------------------------------


class Databases:
    """A fresh database per use: a new SQLite file, or a PostgreSQL database of this run."""

    def __init__(self, postgres: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="capi-bench-"))
        self.postgres = postgres.rstrip("/") + "/"
        self.pg_name = f"capi_bench_{os.getpid()}"
        self.used_postgres = False

    def fresh(self, kind: str) -> str:
        if kind == "sqlite":
            path = self.directory / "bench.sqlite3"
            path.unlink(missing_ok=True)
            return f"sqlite:///{path}"
        self.used_postgres = True
        self._admin(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
        self._admin(f'CREATE DATABASE "{self.pg_name}"')
        return self.postgres + self.pg_name

    def snapshot(self, kind: str) -> str:
        return str(self.directory / f"outbox-{kind}.pickle")

    def close(self) -> None:
        if self.used_postgres:
            self._admin(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
        shutil.rmtree(self.directory, ignore_errors=True)

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.postgres + "postgres", autocommit=True) as connection:
            connection.execute(statement.encode())  # names made here, never input


def environment(database: str, standin: StandIn) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database,
        "CAPI_GRAPH_API_URL": standin.url,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "PYTHONPATH": str(ROOT),
    }


def command(name: str, arguments: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "bench.scenarios", name, json.dumps(arguments)]


def result_of(stdout: str, stderr: str, name: str, returncode: int | None) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    raise RuntimeError(f"scenario {name} failed ({returncode}):\n{stdout}\n{stderr}")


def run(name: str, database: str, standin: StandIn, **arguments: Any) -> dict[str, Any]:
    done = subprocess.run(  # noqa: S603 -- this interpreter, our own module
        command(name, arguments),
        cwd=ROOT,
        env=environment(database, standin),
        capture_output=True,
        text=True,
        check=False,
    )
    return result_of(done.stdout, done.stderr, name, done.returncode)


def workers(count: int, database: str, standin: StandIn) -> dict[str, Any]:
    """``count`` drain processes started together once each is ready; throughput is what the
    stand-in counted over the first start to the last end."""
    env = environment(database, standin)
    processes = [
        subprocess.Popen(  # noqa: S603 -- this interpreter, our own module
            command("worker", {}),
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    for process in processes:
        line = process.stdout.readline() if process.stdout else ""
        if line.strip() != "READY":
            _, err = process.communicate()
            raise RuntimeError(f"worker failed to start: {line}{err}")
    before = standin.stats()["events"]
    for process in processes:
        if process.stdin:
            process.stdin.write("go\n")
            process.stdin.flush()
    results = []
    for process in processes:
        out, err = process.communicate()
        results.append(result_of(out, err, "worker", process.returncode))
    seconds = max(r["ended"] for r in results) - min(r["started"] for r in results)
    claimed = [re.search(r"claimed (\d+)", r["report"]) for r in results]
    return {
        "events": standin.stats()["events"] - before,
        "seconds": seconds,
        # How the leases split the backlog: a worker that got nothing was serialized out.
        "claimed": [int(m.group(1)) if m else None for m in claimed],
    }


def rate(result: dict[str, Any]) -> float:
    return float(result["events"]) / float(result["seconds"])


def median_rate(results: list[dict[str, Any]]) -> float:
    return statistics.median(rate(result) for result in results)


# The run -----------------------------------------------------------------------------------


def measure(options: Options) -> dict[str, Any]:
    results: dict[str, Any] = {"databases": {}}
    databases = Databases(options.postgres)
    started = time.perf_counter()
    try:
        with StandIn() as fast, StandIn(latency=options.latency) as slow:
            for kind in options.databases:
                results["databases"][kind] = measure_database(kind, options, databases, fast, slow)
            log("normalization")
            results["normalization"] = run(
                "normalization", "sqlite://:memory:", fast, seconds=options.normalize_seconds
            )
            results["memory"] = measure_memory(options, databases, fast)
            results["profiles"] = measure_profiles(options, databases, fast)
            results["encodings"] = {"fast": fast.stats(), "slow": slow.stats()}
    finally:
        databases.close()
    results["seconds"] = time.perf_counter() - started
    return results


def measure_database(
    kind: str, options: Options, databases: Databases, fast: StandIn, slow: StandIn
) -> dict[str, Any]:
    url, snapshot = databases.fresh(kind), databases.snapshot(kind)
    log(f"{kind}: saving {options.orders:,} paid orders")
    out: dict[str, Any] = {
        "prepare": run("prepare", url, fast, orders=options.orders, snapshot=snapshot)
    }
    # A drain of 10,000 events lasts under a second: one round of each side is at the mercy
    # of whatever else the machine does in that second. Alternating rounds, each side's
    # median: a slow spell costs each side a round, not one side the result.
    out["capi_rounds"], out["sdk_rounds"] = [], []
    for number in range(1, options.rounds + 1):
        run("backlog", url, fast, snapshot=snapshot, count=options.events)
        log(f"{kind}: round {number}: django-capi drains {options.events:,} events")
        out["capi_rounds"].append(run("drain_capi", url, fast))
        log(f"{kind}: round {number}: the SDK sends {options.events:,} events")
        out["sdk_rounds"].append(run("drain_sdk", url, fast, count=options.events))
    log(f"{kind}: checkout saves")
    out["checkout"] = run(
        "checkout", url, slow, saves=options.saves, naive_saves=options.naive_saves
    )
    if kind == "postgres":
        # Whole leases for every worker, so none idles at the end while another finishes.
        share = options.workers * BATCH
        count = max(share, math.ceil(options.events / share) * share)
        out["latency_events"] = count
        for label, number in (("one_worker", 1), ("workers", options.workers)):
            run("backlog", url, fast, snapshot=snapshot, count=count)
            log(f"{kind}: {number} worker(s), {options.latency * 1000:.0f} ms latency")
            out[label] = workers(number, url, slow)
        log(f"{kind}: the SDK's BatchProcessor, {options.latency * 1000:.0f} ms latency")
        out["batch_processor"] = run("drain_sdk_batch_processor", url, slow, count=count)
    return out


def ready(url: str, snapshot: str, options: Options, fast: StandIn) -> None:
    """Tables in a fresh database, and outbox rows to copy (those of the drain if it ran)."""
    if Path(snapshot).exists():
        run("migrate", url, fast)
    else:
        run("prepare", url, fast, orders=min(options.orders, 500), snapshot=snapshot)


def measure_memory(options: Options, databases: Databases, fast: StandIn) -> list[dict[str, Any]]:
    kind = options.memory_database
    url, snapshot = databases.fresh(kind), databases.snapshot(kind)
    ready(url, snapshot, options, fast)
    figures = []
    for size in sorted({max(1, options.backlog // 10), options.backlog}):
        log(f"memory: filling a backlog of {size:,} rows ({kind})")
        run("backlog", url, fast, snapshot=snapshot, count=size)
        log(f"memory: draining {size:,} rows")
        figures.append({"backlog": size, **run("memory_drain", url, fast)})
    return figures


def measure_profiles(options: Options, databases: Databases, fast: StandIn) -> dict[str, Any]:
    url, snapshot = databases.fresh("sqlite"), databases.snapshot("sqlite")
    ready(url, snapshot, options, fast)
    run("backlog", url, fast, snapshot=snapshot, count=options.profile_events)
    log(f"profiles: a drain of {options.profile_events:,} events, {options.profile_saves} saves")
    profiles = {
        "drain": run("profile_drain", url, fast),
        "saves": run("profile_saves", url, fast, saves=options.profile_saves),
    }
    if "postgres" in options.databases:
        url, snapshot = databases.fresh("postgres"), databases.snapshot("postgres")
        ready(url, snapshot, options, fast)
        run("backlog", url, fast, snapshot=snapshot, count=options.profile_events)
        log(f"profiles: a drain of {options.profile_events:,} events on PostgreSQL")
        profiles["drain_postgres"] = run("profile_drain", url, fast)
    return profiles


# The report --------------------------------------------------------------------------------


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine(options: Options) -> list[tuple[str, str]]:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    import sqlite3

    rows = [
        ("CPU", f"{model}, {cores} cores available (load average at the start: {load})"),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("Django", package_version("django")),
        ("django-capi", f"{package_version('django-capi')} at {code_state()}"),
        ("facebook-business (Meta's SDK)", package_version("facebook-business")),
        ("requests", package_version("requests")),
        ("SQLite", sqlite3.sqlite_version),
        ("psycopg", package_version("psycopg")),
    ]
    if "postgres" in options.databases or options.memory_database == "postgres":
        rows.append(("PostgreSQL", postgres_version(options.postgres)))
    return rows


def postgres_version(server: str) -> str:
    import psycopg

    with psycopg.connect(server.rstrip("/") + "/postgres") as connection:
        row = connection.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def code_state() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown commit"

    def out(*args: str) -> str:
        return subprocess.run(  # noqa: S603 -- git, fixed arguments
            [git, *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = out("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = out("status", "--porcelain", "--", "django_capi")
    return f"commit {head}" + (" with uncommitted changes to django_capi/" if dirty else "")


def n(value: float) -> str:
    return f"{value:,.0f}"


def ms(value: float) -> str:
    return f"{value:.2f} ms"


def ratio(value: float) -> str:
    return f"**{value:.2f}×**"


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def shares(claimed: list[int | None]) -> str:
    return ", ".join("?" if c is None else f"{c:,}" for c in claimed)


def statement_counts(statements: list[str]) -> Counter[str]:
    # BEGIN and COMMIT are the transaction's, the same for both models.
    return Counter(s for s in statements if s not in {"BEGIN", "COMMIT"})


def describe(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def report(options: Options, results: dict[str, Any]) -> str:
    dbs = results["databases"]
    kinds = [k for k in ("sqlite", "postgres") if k in dbs]
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    head = "| | " + " | ".join(names[k] for k in kinds) + " |"
    rule = "|---|" + "---:|" * len(kinds)

    def row(label: str, cells: list[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = [
        "# Benchmarks",
        "",
        (
            "Written by `make bench` (`python -m bench.run`) on "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {results['seconds']:.0f} s. Every figure "
            "below was measured in this one run, django-capi and Meta's official Python SDK "
            "(`facebook-business`) side by side against the same loopback Graph API stand-in. "
            "The figures are reported, never asserted: this machine is shared and noisy, so "
            "compare ratios rather than absolute numbers. The targets are those of issue 11; "
            "what the profiles show and what is left: [performance.md](performance.md)."
        ),
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine(options)),
        "",
        "## 1. Drain throughput",
        "",
        (
            f"One worker, {options.events:,} Purchase events of paid orders, {BATCH:,} per "
            "request, stand-in answering at once; each side's median of "
            f"{options.rounds} alternating rounds (every round's figures below the table)."
        ),
        "",
        head,
        rule,
    ]
    capi = {k: median_rate(dbs[k]["capi_rounds"]) for k in kinds}
    sdk = {k: median_rate(dbs[k]["sdk_rounds"]) for k in kinds}
    lines += [
        row("django-capi `drain()` (events/s)", [n(capi[k]) for k in kinds]),
        row("SDK `EventRequest(...).execute()` (events/s)", [n(sdk[k]) for k in kinds]),
        row("ratio django-capi / SDK", [ratio(capi[k] / sdk[k]) for k in kinds]),
        row("target ≥ 5×", [verdict(capi[k] / sdk[k] >= 5) for k in kinds]),
        "",
        "Each round, django-capi then the SDK (events/s):",
        "",
        *(
            f"- {names[k]}: "
            + "; ".join(
                f"{n(rate(c))} / {n(rate(d))} ({rate(c) / rate(d):.2f}×)"
                for c, d in zip(dbs[k]["capi_rounds"], dbs[k]["sdk_rounds"], strict=True)
            )
            for k in kinds
        ),
        "",
    ]
    if "postgres" in dbs:
        pg = dbs["postgres"]
        one, many, batch = rate(pg["one_worker"]), rate(pg["workers"]), rate(pg["batch_processor"])
        w = options.workers
        lines += [
            (
                f"PostgreSQL with {options.latency * 1000:.0f} ms of simulated Graph latency, "
                f"{pg['latency_events']:,} events:"
            ),
            "",
            "| | events/s | ratio | target |",
            "|---|---:|---:|---|",
            f"| django-capi, 1 worker | {n(one)} | | |",
            (
                f"| django-capi, {w} workers (processes) | {n(many)} | {ratio(many / one)} "
                f"vs 1 worker | ≥ 3.5×: {verdict(many / one >= 3.5)} |"
            ),
            (
                f"| SDK `BatchProcessor` (1,000 per request, 4 concurrent) | {n(batch)} | "
                f"{ratio(many / batch)} ({w} workers vs it) "
                f"| ≥ 10×: {verdict(many / batch >= 10)} |"
            ),
            "",
            f"Rows each of the {w} workers claimed: {shares(pg['workers']['claimed'])}.",
            "",
        ]
    lines += ["## 2. Checkout cost", ""]
    lines += [
        (
            f"Median of {options.saves} interleaved saves per model: `Model.objects.create()` "
            "inside `transaction.atomic()` (BEGIN and COMMIT not timed), the registered paid "
            "order vs its unregistered twin with the same columns."
        ),
        "",
        head,
        rule,
    ]
    co = {k: dbs[k]["checkout"] for k in kinds}
    added = {k: co[k]["registered_ms"] - co[k]["plain_ms"] for k in kinds}
    plain_st = {k: statement_counts(co[k]["statements"]["plain"]) for k in kinds}
    reg_st = {k: statement_counts(co[k]["statements"]["registered"]) for k in kinds}
    extra = {k: reg_st[k] - plain_st[k] for k in kinds}
    lines += [
        row("unregistered model", [ms(co[k]["plain_ms"]) for k in kinds]),
        row("registered paid order", [ms(co[k]["registered_ms"]) for k in kinds]),
        row("**added by django-capi**", [f"**+{ms(added[k])}**" for k in kinds]),
        row("target ≤ 1 ms", [verdict(added[k] <= 1) for k in kinds]),
        row(
            "SQL statements added (CaptureQueriesContext)",
            [f"{sum(extra[k].values())}: {describe(extra[k])}" for k in kinds],
        ),
        row("target ≤ 1 (the INSERT)", [verdict(sum(extra[k].values()) <= 1) for k in kinds]),
        row(
            "one statement's round trip (`SELECT 1`), the floor of any added statement",
            [ms(co[k]["round_trip_ms"]) for k in kinds],
        ),
        row(
            f"naive: the SDK posting inside the checkout, {options.latency * 1000:.0f} ms latency",
            [ms(co[k]["naive_ms"]) for k in kinds],
        ),
        row(
            "added by the naive path",
            [f"+{ms(co[k]['naive_ms'] - co[k]['plain_ms'])}" for k in kinds],
        ),
        "",
        (
            f"The naive path is the median of {options.naive_saves} saves of the unregistered "
            "model each followed, inside the same transaction, by "
            "`EventRequest(events=[event]).execute()`."
        ),
        "",
    ]
    norm = results["normalization"]
    repeated, distinct = norm["capi"] / norm["sdk"], norm["capi_distinct"] / norm["sdk_distinct"]
    lines += [
        "## 3. Normalization",
        "",
        (
            "A typical customer (email, phone in national format, first and last name, city, "
            "state, zip, country, external_id), calls per second, median of 5 alternating "
            "rounds: the same customer over and over, and distinct customers (the next one at "
            "each call, the same sequence for both sides, none seen twice), where no cache of "
            "either side helps:"
        ),
        "",
        "| | one customer, repeated | distinct customers |",
        "|---|---:|---:|",
        (
            f"| `django_capi.normalize_user_data(...)` | {n(norm['capi'])} "
            f"| {n(norm['capi_distinct'])} |"
        ),
        f"| SDK `UserData(...).normalize()` | {n(norm['sdk'])} | {n(norm['sdk_distinct'])} |",
        f"| ratio django-capi / SDK | {ratio(repeated)} | {ratio(distinct)} |",
        f"| target ≥ 2× | {verdict(repeated >= 2)} | {verdict(distinct >= 2)} |",
        "",
    ]
    memory_db = names[options.memory_database]
    lines += [
        "## 4. Memory",
        "",
        (
            f"One worker draining a backlog on {memory_db} in a fresh process: resident set "
            "before the drain (Django set up, connected), sampled at a quarter, half and three "
            "quarters of the drain's time, and the process's peak (`VmHWM`)."
        ),
        "",
        (
            "| backlog (rows) | drained | seconds | RSS before | at 25 % / 50 % / 75 % | peak "
            "| peak − before | target < 150 MB, flat |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    memory = results["memory"]
    for m in memory:
        q = " / ".join(f"{x:.0f}" for x in m["quarters_mb"])
        lines.append(
            f"| {m['backlog']:,} | {m['events']:,} | {m['seconds']:.1f} | "
            f"{m['baseline_mb']:.0f} MB | {q} MB | {m['peak_mb']:.0f} MB | "
            f"{m['peak_mb'] - m['baseline_mb']:.0f} MB | {verdict(m['peak_mb'] < 150)} |"
        )
    if len(memory) > 1:
        growth = memory[-1]["peak_mb"] - memory[0]["peak_mb"]
        lines += [
            "",
            (
                f"Peak growth from {memory[0]['backlog']:,} to {memory[-1]['backlog']:,} rows: "
                f"{growth:+.0f} MB."
            ),
        ]
    prof = results["profiles"]
    lines += [
        "",
        "## Where the time goes",
        "",
        (
            f"cProfile on SQLite of one `drain()` of {prof['drain']['events']:,} events "
            f"(stand-in answering at once), then of {prof['saves']['saves']} registered saves, "
            "each in its own `transaction.atomic()` (the save profiled, not BEGIN and COMMIT, as "
            "in section 2). Top entries by own time, then by cumulative time."
        ),
        "",
        "### Drain",
        "",
        "```",
        prof["drain"]["tottime"],
        "```",
        "",
        "```",
        prof["drain"]["cumulative"],
        "```",
        "",
        "### Checkout saves",
        "",
        "```",
        prof["saves"]["tottime"],
        "```",
        "",
        "```",
        prof["saves"]["cumulative"],
        "```",
        "",
    ]
    if "drain_postgres" in prof:
        lines += postgres_profile(prof["drain_postgres"])
    lines += method(options, results)
    return "\n".join(lines) + "\n"


def postgres_profile(profile: dict[str, Any]) -> list[str]:
    """The drain's profile on PostgreSQL, where the time is the server's: the Python side
    mostly waits (``psycopg``'s ``wait``) for the claim's and the write-backs' UPDATEs."""
    lines = [
        "### Drain on PostgreSQL",
        "",
        (
            f"The same drain of {profile['events']:,} events on PostgreSQL. Time spent in "
            "`psycopg` `wait` is the server's: a claim is one `UPDATE … RETURNING` (a HOT update: "
            "it writes no indexed column), each write-back one `UPDATE … RETURNING pk`."
        ),
        "",
    ]
    updates = profile.get("updates")
    if updates:
        share = updates["hot"] / updates["updated"] if updates["updated"] else 0.0
        lines += [
            (
                f"Outbox row updates during the drain (`pg_stat_user_tables`): "
                f"{updates['updated']:,}, of which {updates['hot']:,} HOT ({share:.0%}; the "
                "claims' share is half of all updates, the write-backs change `status` and are "
                "never HOT)."
            ),
            "",
        ]
    return [
        *lines,
        "```",
        profile["tottime"],
        "```",
        "",
        "```",
        profile["cumulative"],
        "```",
        "",
    ]


def method(options: Options, results: dict[str, Any]) -> list[str]:
    encodings = results["encodings"]["fast"]["encodings"]
    seen = ", ".join(f"{k} {v}" for k, v in sorted(encodings.items()))
    return [
        "## Method",
        "",
        (
            "- **The stand-in** (`bench/standin.py`) serves `POST /{version}/{pixel}/events` on "
            "loopback from the harness's own process, so its CPU never counts against the process "
            "measured. It reads the three body encodings Meta documents (urlencoded and multipart "
            "forms, JSON body; `data` as events or as JSON-encoded strings), requires a token, "
            "counts the events and answers like Graph (`events_received`, `fbtrace_id`); one "
            f"instance answers at once, one after {options.latency * 1000:.0f} ms. Throughput is "
            "what the stand-in counted divided by the side's wall time. Requests seen by the "
            f"fast stand-in in this run, by encoding: {seen}."
        ),
        (
            "- **The orders** (`bench/shop`): a typical US customer per order (email with stray "
            "spaces and capitals, phone in national format, names, city, state, zip, country, "
            "customer id, IP, user agent, fbp, sometimes fbc) paying 1–3 products. "
            f"{options.orders:,} are saved through the ORM on each database, each writing its "
            "outbox row as at checkout; the outbox rows are then repeated with fresh event ids "
            f"up to the backlog wanted ({options.events:,} events). django-capi drains them with "
            "`django_capi.delivery.drain()` (what `capi_drain` and the Celery task call). The SDK "
            "side loads the same orders from the same database and builds `UserData`, "
            "`CustomData`, `Content` and `Event` for each, `EventRequest(...).execute()` per 1,000 "
            "through `FacebookAdsApi` pointed at the stand-in (`FacebookSession.GRAPH`). The SDK "
            "normalizes in the worker, django-capi at the save (section 2 prices that); the SDK "
            "keeps no record, retries nothing and deduplicates nothing."
        ),
        (
            f"- **Several workers**: {options.workers} `drain()` processes are started, wait until "
            "each has set Django up and connected, then start together; the time runs from the "
            "first start to the last end. The backlog is a whole number of leases per worker. "
            "`BatchProcessor.process_events` gets the SDK's most favourable settings (1,000 events "
            "per request, 4 concurrent requests; its loop awaits each request in turn)."
        ),
        (
            "- **Checkout**: the saves of the two models alternate (which goes first alternates "
            "too) after 20 warm-up saves each. Statements are counted with "
            "`CaptureQueriesContext` over one save of each model; SAVEPOINT and RELEASE are "
            "round trips too and count."
        ),
        (
            "- **Memory**: the backlog is filled by another process; the measured process only "
            "sets Django up, connects and drains. RSS and its peak come from `/proc/self/status` "
            "(`VmRSS`, `VmHWM`; no psutil). Not `getrusage`'s `ru_maxrss`: Linux carries the "
            "parent's peak over `fork`/`exec` into it."
        ),
        (
            "- Every measurement runs in its own process (`python -m bench.scenarios NAME`) on a "
            "fresh SQLite file or a PostgreSQL database of the run (dropped at the end)."
        ),
        "",
        "## Reproduce",
        "",
        "```bash",
        "make bench        # installs .venv with the bench extra, runs everything, writes this",
        ".venv/bin/python -m bench.run --help",
        ".venv/bin/python -m bench.run --backlog 1000000 --memory-database postgres",
        "make bench-scale  # the admin and health page at 1,000,000 rows (bench/README.md)",
        "```",
        "",
        (
            "It needs a local PostgreSQL that `postgres` reaches without a password "
            f"(`--postgres`, default `{POSTGRES_SERVER}`); `--databases sqlite` skips it. "
            "Meta's SDK comes from the `bench` extra (`pip install -e '.[bench]'`); it is never "
            "a runtime dependency of django-capi."
        ),
    ]


def main(argv: Sequence[str] | None = None) -> Path:
    options = parse(argv)
    log(f"writing {options.output}")
    results = measure(options)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(report(options, results))
    log(f"wrote {options.output} in {results['seconds']:.0f} s")
    return options.output


if __name__ == "__main__":
    main()
