"""What ``bench.run`` measures, one scenario per process: ``python -m bench.scenarios NAME ARGS``
prints a last line ``RESULT <json>``.

Each process sets Django up on its own ``DATABASE_URL`` and Graph API stand-in
(``CAPI_GRAPH_API_URL``), so databases and peak memory never leak from one measurement into
the next. Only django-capi's public entry points are used: saves of a registered model,
``django_capi.delivery.drain`` and ``django_capi.normalize_user_data``, plus the outbox model
read and written generically (every field copied as the library wrote it), so the harness
keeps working whatever the outbox's columns become.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pickle
import pstats
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parent.parent
PIXEL_ID = "1234567890"
TOKEN = "bench-token-not-real"  # noqa: S105 -- the stand-in only checks that one is sent
SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {}


def scenario(function: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    SCENARIOS[function.__name__] = function
    return function


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def standin_events() -> int:
    """Events the stand-in this process posts to has counted so far."""
    with urlopen(os.environ["CAPI_GRAPH_API_URL"] + "/stats") as response:  # noqa: S310
        return int(json.load(response)["events"])


def outbox_models() -> list[Any]:
    from django.apps import apps

    return list(apps.get_app_config("django_capi").get_models())


def outbox_model() -> Any:
    from django.apps import apps

    return apps.get_model("django_capi", "OutboxEvent")


# Preparing databases -----------------------------------------------------------------------


@scenario
def migrate() -> dict[str, Any]:
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0)
    return {}


@scenario
def prepare(orders: int, snapshot: str) -> dict[str, Any]:
    """Create the tables, save ``orders`` paid orders through the ORM (each writes its outbox
    row, as at checkout) and keep a copy of the outbox rows, untouched, in ``snapshot``."""
    from django.db import transaction

    from bench.shop.data import order_columns
    from bench.shop.models import Order

    migrate()
    started = time.perf_counter()
    for chunk in batched(range(orders), 500):
        with transaction.atomic():
            for n in chunk:
                Order(**order_columns(n)).save()
    seconds = time.perf_counter() - started
    rows = list(outbox_model().objects.values())
    Path(snapshot).write_bytes(pickle.dumps(rows))
    return {"orders": orders, "outbox_rows": len(rows), "seconds": seconds}


@scenario
def backlog(snapshot: str, count: int) -> dict[str, Any]:
    """Empty django-capi's tables and fill the outbox with ``count`` due rows: the snapshot's
    rows as the library wrote them, repeated with fresh event ids."""
    from django.core.management.color import no_style
    from django.db import connection

    model = outbox_model()
    # Not the Installation row: it is the database's event-id namespace, which a shop keeps
    # for good (without it every save would look for it again).
    tables = [m._meta.db_table for m in outbox_models() if m.__name__ != "Installation"]
    connection.ops.execute_sql_flush(connection.ops.sql_flush(no_style(), tables))
    template = pickle.loads(Path(snapshot).read_bytes())  # noqa: S301 -- our own file
    started = time.perf_counter()
    rows = (model(**row) for row in cloned(template, count))
    for chunk in batched(rows, 2000):
        model.objects.bulk_create(chunk)
    seconds = time.perf_counter() - started
    if connection.vendor == "postgresql":
        # The statistics a table in service has from autovacuum, which would analyze this
        # fresh fill only at its next round (up to a minute): without them the planner
        # guesses a handful of due rows, and each claim reads and sorts every one of them
        # instead of reading the due index in order.
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
    return {"rows": count, "seconds": seconds}


def cloned(template: list[dict[str, Any]], count: int) -> Iterator[dict[str, Any]]:
    """``count`` rows from ``template``; from the second round on, each row's event id (in
    whatever field holds it, payload included) gets a suffix, so every row is a new event."""
    for index in range(count):
        row = dict(template[index % len(template)])
        row.pop("id", None)
        copy = index // len(template)
        if copy:
            old = row["event_id"]
            new = f"{old}-{copy}"
            for key, value in row.items():
                if isinstance(value, str):
                    row[key] = value.replace(old, new)
                elif isinstance(value, dict | list):
                    row[key] = json.loads(json.dumps(value).replace(old, new))
        yield row


# 1. Drain throughput -----------------------------------------------------------------------


@scenario
def drain_capi() -> dict[str, Any]:
    """One worker drains every due row: ``django_capi.delivery.drain()``, as ``capi_drain``."""
    from django_capi.delivery import drain

    before = standin_events()
    started = time.perf_counter()
    report = drain()
    seconds = time.perf_counter() - started
    events = standin_events() - before
    return {"events": events, "seconds": seconds, "report": str(report)}


def sdk_setup() -> None:
    """Point Meta's SDK at the stand-in: ``FacebookSession.GRAPH`` is the documented class
    attribute holding the Graph URL; every request path (sync and async) reads it."""
    from facebook_business.api import FacebookAdsApi
    from facebook_business.session import FacebookSession

    FacebookSession.GRAPH = os.environ["CAPI_GRAPH_API_URL"]
    # crash_log=False: the default installs a hook that reports crashes to Meta.
    FacebookAdsApi.init(access_token=TOKEN, crash_log=False)


def sdk_event(order: Any, suffix: str = "") -> Any:
    """The same order as an SDK ``Event``, built as Meta's SDK documentation shows."""
    from facebook_business.adobjects.serverside.action_source import ActionSource
    from facebook_business.adobjects.serverside.content import Content
    from facebook_business.adobjects.serverside.custom_data import CustomData
    from facebook_business.adobjects.serverside.event import Event
    from facebook_business.adobjects.serverside.user_data import UserData

    user_data = UserData(
        emails=[order.email],
        phones=[order.phone],
        first_names=[order.first_name],
        last_names=[order.last_name],
        cities=[order.city],
        states=[order.state],
        zip_codes=[order.zip_code],
        country_codes=[order.country],
        external_ids=[order.customer_id],
        client_ip_address=order.ip,
        client_user_agent=order.user_agent,
        fbp=order.fbp or None,
        fbc=order.fbc or None,
    )
    custom_data = CustomData(
        value=float(order.total),
        currency=order.currency.lower(),
        content_type="product",
        content_ids=[item["id"] for item in order.items],
        contents=[
            Content(product_id=i["id"], quantity=i["quantity"], item_price=float(i["price"]))
            for i in order.items
        ],
        num_items=sum(item["quantity"] for item in order.items),
        order_id=str(order.pk),
    )
    return Event(
        event_name="Purchase",
        event_time=int(time.time()),
        event_id=f"order-{order.pk}{suffix}",
        event_source_url="https://shop.example.com/checkout/",
        action_source=ActionSource.WEBSITE,
        user_data=user_data,
        custom_data=custom_data,
    )


def orders_for(count: int) -> Iterator[tuple[Any, str]]:
    """``count`` (order, event id suffix) pairs: the saved orders, repeated if need be."""
    from bench.shop.models import Order

    orders = list(Order.objects.order_by("pk"))
    for index in range(count):
        yield (
            orders[index % len(orders)],
            f"-{index // len(orders)}" if index >= len(orders) else "",
        )


@scenario
def drain_sdk(count: int, batch_size: int = 1000) -> dict[str, Any]:
    """Meta's SDK from a worker: load the paid orders, build ``count`` ``Event``s, and
    ``EventRequest(...).execute()`` 1,000 at a time."""
    from facebook_business.adobjects.serverside.event_request import EventRequest

    sdk_setup()
    before = standin_events()
    started = time.perf_counter()
    for chunk in batched(orders_for(count), batch_size):
        events = [sdk_event(order, suffix) for order, suffix in chunk]
        EventRequest(pixel_id=PIXEL_ID, events=events).execute()
    seconds = time.perf_counter() - started
    return {"events": standin_events() - before, "seconds": seconds}


@scenario
def drain_sdk_batch_processor(count: int) -> dict[str, Any]:
    """Meta's SDK's own bulk path: ``BatchProcessor`` over ``EventRequestAsync`` with its
    most favourable settings (1,000 events per request, 4 concurrent requests)."""
    from facebook_business.adobjects.serverside.batch_processor import BatchProcessor
    from facebook_business.adobjects.serverside.event_request_async import EventRequestAsync

    sdk_setup()
    before = standin_events()
    started = time.perf_counter()
    events = [sdk_event(order, suffix) for order, suffix in orders_for(count)]
    template = EventRequestAsync(pixel_id=PIXEL_ID, events=[])
    BatchProcessor(batch_size=1000, concurrent_requests=4).process_events(template, events)
    seconds = time.perf_counter() - started
    return {"events": standin_events() - before, "seconds": seconds}


@scenario
def worker() -> dict[str, Any]:
    """One drain worker among several: ready once Django and its connection are up, drains
    when ``go`` arrives on stdin, and reports its own start and end (wall clock)."""
    from django.db import connection

    from django_capi.delivery import drain

    connection.ensure_connection()
    print("READY", flush=True)
    sys.stdin.readline()
    started = time.time()
    report = drain()
    return {"started": started, "ended": time.time(), "report": str(report)}


# 2. Checkout cost --------------------------------------------------------------------------


@scenario
def checkout(saves: int, naive_saves: int) -> dict[str, Any]:
    """Median time of ``Model.objects.create()`` inside ``transaction.atomic()`` (BEGIN and
    COMMIT not timed), registered vs its unregistered twin, saves interleaved; the statements
    each runs; and the naive path: the same save followed by the SDK posting the event inside
    the checkout's transaction, to a stand-in with latency."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext
    from facebook_business.adobjects.serverside.event_request import EventRequest

    from bench.shop.data import order_columns
    from bench.shop.models import Order, PlainOrder

    def timed(model: Any, n: int) -> float:
        columns = order_columns(n)
        with transaction.atomic():
            started = time.perf_counter()
            model.objects.create(**columns)
            return (time.perf_counter() - started) * 1000

    def round_trip() -> float:
        """One statement the database does nothing for: the floor of any added statement."""
        with transaction.atomic(), connection.cursor() as cursor:
            started = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            return (time.perf_counter() - started) * 1000

    base = 1_000_000  # order numbers apart from those of the drain
    for n in range(20):  # warm-up: caches, prepared statements, the ContentType cache
        timed(Order, base + n)
        timed(PlainOrder, base + n)
    registered, plain, trips = [], [], []
    for n in range(base + 20, base + 20 + saves):
        trips.append(round_trip())
        if n % 2:
            registered.append(timed(Order, n))
            plain.append(timed(PlainOrder, n))
        else:
            plain.append(timed(PlainOrder, n))
            registered.append(timed(Order, n))

    statements = {}
    for label, model in (("registered", Order), ("plain", PlainOrder)):
        with CaptureQueriesContext(connection) as captured, transaction.atomic():
            model.objects.create(**order_columns(base - 1 if label == "plain" else base - 2))
        statements[label] = [q["sql"].split(None, 1)[0].upper() for q in captured]

    sdk_setup()
    naive = []
    for n in range(base + 20 + saves, base + 20 + saves + naive_saves):
        columns = order_columns(n)
        with transaction.atomic():
            started = time.perf_counter()
            order = PlainOrder.objects.create(**columns)
            EventRequest(pixel_id=PIXEL_ID, events=[sdk_event(order)]).execute()
            naive.append((time.perf_counter() - started) * 1000)
    return {
        "registered_ms": statistics.median(registered),
        "plain_ms": statistics.median(plain),
        "round_trip_ms": statistics.median(trips),
        "naive_ms": statistics.median(naive),
        "saves": saves,
        "naive_saves": naive_saves,
        "statements": statements,
    }


# 3. Normalization --------------------------------------------------------------------------


#: Distinct customers for the normalization figure: more than a round calls, so no cache of
#: either side (phone numbers, countries) sees a customer twice within one round.
DISTINCT_CUSTOMERS = 20_000


@scenario
def normalization(seconds: float) -> dict[str, Any]:
    """Calls per second of ``normalize_user_data`` vs the SDK's ``UserData(...).normalize()``,
    for one typical customer over and over, and for distinct customers (each call the next
    one, the same sequence for both sides); rounds alternate, the median round counts."""
    from facebook_business.adobjects.serverside.user_data import UserData

    from bench.shop.data import typical_customer
    from django_capi import normalize_user_data

    def capi(customer: dict[str, str]) -> None:
        normalize_user_data(customer)

    def sdk(customer: dict[str, str]) -> None:
        UserData(
            email=customer["em"],
            phone=customer["ph"],
            first_name=customer["fn"],
            last_name=customer["ln"],
            city=customer["ct"],
            state=customer["st"],
            zip_code=customer["zp"],
            country_code=customer["country"],
            external_id=customer["external_id"],
        ).normalize()

    one = [typical_customer(7)] * 50
    distinct = [typical_customer(n) for n in range(100_000, 100_000 + DISTINCT_CUSTOMERS)]
    sides = {"capi": capi, "sdk": sdk}
    rates: dict[str, list[float]] = {
        f"{side}{suffix}": [] for side in sides for suffix in ("", "_distinct")
    }
    # Where each side is in the distinct sequence: it goes on across rounds (both lists hold
    # a whole number of batches of 50).
    position = dict.fromkeys(rates, 0)
    for _ in range(5):
        for suffix, customers in (("", one), ("_distinct", distinct)):
            for side, call in sides.items():
                name = side + suffix
                calls, started = 0, time.perf_counter()
                deadline = started + seconds / 20
                while time.perf_counter() < deadline:
                    start = position[name] % len(customers)
                    for customer in customers[start : start + 50]:
                        call(customer)
                    position[name] += 50
                    calls += 50
                rates[name].append(calls / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


# 4. Memory ---------------------------------------------------------------------------------


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set now (``VmRSS``) or its peak (``VmHWM``), from Linux's
    /proc (no psutil). Not ``getrusage``'s ``ru_maxrss``: Linux carries the parent's peak
    over ``fork``/``exec`` into it, so a child would report the harness's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


@scenario
def memory_drain() -> dict[str, Any]:
    """Drain the whole backlog in this fresh process; RSS before, sampled during, and the
    process's peak."""
    from django.db import connection

    from django_capi.delivery import drain

    connection.ensure_connection()
    baseline = rss_mb()
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            samples.append((time.perf_counter(), rss_mb()))

    sampler = threading.Thread(target=sample, daemon=True)
    before = standin_events()
    started = time.perf_counter()
    sampler.start()
    drain()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    peak = rss_mb("VmHWM")
    quarters = []
    for share in (0.25, 0.5, 0.75):
        at = started + share * seconds
        quarters.append(min(samples, key=lambda s: abs(s[0] - at))[1] if samples else baseline)
    return {
        "events": standin_events() - before,
        "seconds": seconds,
        "baseline_mb": baseline,
        "quarters_mb": quarters,
        "peak_mb": peak,
    }


# Where the time goes -----------------------------------------------------------------------


def top_of(profile: cProfile.Profile, sort: str, limit: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats(sort).print_stats(limit)
    text = out.getvalue()
    text = text[text.index("   ncalls") :] if "   ncalls" in text else text
    # Shorten site-packages and repository paths to what a reader needs.
    text = re.sub(r"/[^\s:()]*/site-packages/", "", text)
    text = text.replace(str(ROOT) + "/", "")
    return re.sub(r"/[^\s:()]*/lib/python3\.\d+/", "", text).rstrip()


def outbox_updates() -> dict[str, int] | None:
    """PostgreSQL's count of the outbox's row updates so far, and of those it made in place
    (HOT: no index entries); None elsewhere."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    table = outbox_model()._meta.db_table
    with connection.cursor() as cursor:
        # This backend's own counts reach the view only once flushed.
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = %s",
            [table],
        )
        updated, hot = cursor.fetchone()
    return {"updated": int(updated), "hot": int(hot)}


@scenario
def profile_drain(limit: int = 20) -> dict[str, Any]:
    """cProfile of one drain of the due backlog (and, on PostgreSQL, its HOT updates)."""
    from django_capi.delivery import drain

    profile = cProfile.Profile()
    before, updates_before = standin_events(), outbox_updates()
    profile.enable()
    drain()
    profile.disable()
    events, updates_after = standin_events() - before, outbox_updates()
    updates = None
    if updates_before is not None and updates_after is not None:
        updates = {k: updates_after[k] - updates_before[k] for k in updates_after}
    return {
        "events": events,
        "updates": updates,
        "tottime": top_of(profile, "tottime", limit),
        "cumulative": top_of(profile, "cumulative", limit),
    }


@scenario
def profile_saves(saves: int, limit: int = 20) -> dict[str, Any]:
    """cProfile of ``saves`` registered paid-order saves, each in its own transaction."""
    from django.db import transaction

    from bench.shop.data import order_columns
    from bench.shop.models import Order

    for n in range(2_000_000, 2_000_020):  # warm-up
        with transaction.atomic():
            Order.objects.create(**order_columns(n))
    profile = cProfile.Profile()
    for n in range(2_100_000, 2_100_000 + saves):
        columns = order_columns(n)
        with transaction.atomic():
            # As the checkout figure: the save, not BEGIN and COMMIT (an fsync on SQLite).
            profile.enable()
            Order.objects.create(**columns)
            profile.disable()
    return {
        "saves": saves,
        "tottime": top_of(profile, "tottime", limit),
        "cumulative": top_of(profile, "cumulative", limit),
    }


def main() -> None:
    name, arguments = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    setup_django()
    result = SCENARIOS[name](**arguments)
    print("RESULT " + json.dumps(result, default=_json_default), flush=True)


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    main()
