"""The chaos suite: drainers (and, in the full run, a Celery worker) on PostgreSQL deliver
through an emulator that fails at random, while a supervisor ``kill -9``s them.

``make test`` runs the small configuration (in its PostgreSQL pass); ``make chaos`` sets
``CAPI_CHAOS=full``: 50,000 events and a Celery worker. docs/reliability.md has the figures.

What must hold, whatever happened: every row ends ``delivered`` or ``failed``, and the failed
ones are exactly the invalid events; Meta received every valid event; every duplicate Meta
received is explained by a kill or a lost answer; PostgreSQL saw no deadlock; the token
window cost no attempt; the access token shows in no log line, database dump or admin page.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Count, Q
from django.test import Client

from django_capi.models import AttemptEvent, DeliveryAttempt, OutboxEvent
from django_capi.testing import (
    Chaos,
    ConnectionReset,
    Delay,
    GraphEmulator,
    GraphError,
    HttpStatus,
)
from tests.database_dump import dump_database
from tests.factories import OutboxEventFactory
from tests.processes import manage, start, wait_until

Status = OutboxEvent.Status
Outcome = DeliveryAttempt.Outcome
# Shaped like Meta's tokens, so a leak is found by the patterns people grep for; joined here so
# the source itself does not look like a committed token.
TOKEN = "EAA" + "chaosSecretToken0123456789abcdefDoNotLeak"


@dataclass(frozen=True)
class Scale:
    events: int
    drainers: int
    celery: bool
    kill_every: tuple[float, float]  # seconds between kills, drawn uniformly
    token_window_after: int  # the token expires once 1/n of the events are delivered
    token_window_seconds: float  # and stays expired at least this long
    timeout: float  # for every row to settle


SMALL = Scale(
    events=1000,
    drainers=4,
    celery=False,
    kill_every=(3.0, 5.0),
    token_window_after=5,
    token_window_seconds=2.0,
    timeout=240,
)
FULL = Scale(
    events=50_000,
    drainers=4,
    celery=True,
    kill_every=(3.0, 6.0),
    token_window_after=3,
    token_window_seconds=8.0,
    timeout=3000,
)
#: 1 % of the events are invalid: Meta refuses them (no customer information at all).
INVALID_EVERY = 100
READ_TIMEOUT = 1.0
DRAINER_SETTINGS = {
    "ACCESS_TOKEN": TOKEN,
    "BATCH_SIZE": 200,
    # MAX_ATTEMPTS is the shipped default (25): every claim counts, so a row that kills its
    # worker or keeps making Meta fail is not retried forever. At this suite's fault rate (a
    # fifth of requests failing, a drainer killed every few seconds) 8 attempts exhausted about
    # 0.2 % of innocent rows (docs/reliability.md); an innocent row no longer pays for the
    # bad event it shared a bisection with (issue 8 item 5), which is what this suite checks.
    "LEASE_SECONDS": 8,
    "CONNECT_TIMEOUT": 0.5,
    "READ_TIMEOUT": READ_TIMEOUT,
    "RETRY_BASE_SECONDS": 1,
    "RETRY_MAX_SECONDS": 4,
    "TOKEN_PROBE_SECONDS": 1,
    "WAKE": "none",
}


def chaos_faults(seed: int) -> Chaos:
    return Chaos(
        [
            (0.06, HttpStatus(503, "<html>Service Unavailable</html>")),
            (0.04, GraphError(2)),  # Meta's own "service temporarily unavailable"
            (0.03, Delay(READ_TIMEOUT + 1.0, then=HttpStatus(504))),  # a timeout, nothing kept
            (0.03, ConnectionReset()),  # a reset before Meta saw anything
            (0.03, ConnectionReset(processed=True)),  # a lost answer: Meta has the events
            (0.02, Delay(READ_TIMEOUT + 1.0)),  # a lost answer: too late for the sender
            (0.02, GraphError(4, headers={"Retry-After": "1"})),  # a rate limit
        ],
        seed=seed,
    )


@dataclass
class Supervisor:
    """Keeps ``count`` drainers running and ``kill -9``s a random one every few seconds."""

    count: int
    settings: dict[str, object]
    logs: Path
    every: tuple[float, float]
    rng: random.Random
    kills: list[float] = field(default_factory=list)
    #: Rows leased (to anyone) around each kill: those a killed drainer may have held.
    leased_at_kill: Counter[int] = field(default_factory=Counter)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    started: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def spawn(self) -> subprocess.Popen[str]:
        self.started += 1
        log = self.logs / f"drainer-{self.started}.log"
        args = manage("capi_drain", "--loop", "--interval", "0.2", "--database", "default")
        return start(args, self.settings, log=log)

    def run(self) -> None:
        self.processes = [self.spawn() for _ in range(self.count)]
        while not self._stop.wait(self.rng.uniform(*self.every)):
            victim = self.rng.randrange(self.count)
            leased = self._leased()
            self.kills.append(time.time())
            self.processes[victim].kill()  # SIGKILL: no cleanup at all
            self.processes[victim].wait()
            self.leased_at_kill.update(leased | self._leased())
            self.processes[victim] = self.spawn()

    def stop(self) -> list[int | None]:
        self._stop.set()
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        return [process.wait(timeout=60) for process in self.processes]

    @staticmethod
    def _leased() -> set[int]:
        from django.db import connections

        with connections["default"].cursor() as cursor:  # its own thread, its own connection
            cursor.execute(
                "SELECT id FROM django_capi_outboxevent WHERE status = 'pending' "
                "AND lease_token IS NOT NULL"
            )
            return {pk for (pk,) in cursor.fetchall()}


def token_errors(graph: GraphEmulator) -> int:
    return sum(1 for request in graph.requests if request.error and request.error["code"] == 190)


def deadlocks() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def make_invalid(count: int) -> set[str]:
    """Every INVALID_EVERY-th row loses its customer information: Meta refuses it."""
    rows = list(OutboxEvent.objects.order_by("pk")[::INVALID_EVERY])
    for row in rows:
        row.payload = {**row.payload, "user_data": {}}
    OutboxEvent.objects.bulk_update(rows, ["payload"], batch_size=500)
    assert len(rows) == -(-count // INVALID_EVERY)
    return {row.event_id for row in rows}


def explain_duplicates(graph: GraphEmulator, kills: list[float]) -> tuple[Counter[str], list[str]]:
    """Why Meta received an event again: its previous copy's answer was lost, or a drainer
    was killed between the two copies (after Meta had it, before the row was written)."""
    lost = {id(request) for request in graph.lost_answers(READ_TIMEOUT)}
    copies: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for request in graph.requests:
        if not (isinstance(request.response, dict) and "events_received" in request.response):
            continue
        for event in request.events:
            copies[event["event_id"]].append((request.time, id(request) in lost))
    reasons: Counter[str] = Counter()
    unexplained = []
    for event_id, seen in copies.items():
        seen.sort()
        for (before, was_lost), (after, _) in itertools.pairwise(seen):
            if was_lost:
                reasons["lost answer"] += 1
            elif bisect.bisect_left(kills, before) < bisect.bisect_right(kills, after):
                reasons["kill"] += 1
            else:
                unexplained.append(event_id)
    return reasons, unexplained


def unexplained_attempts(leased_at_kill: Counter[int]) -> tuple[int, list[str]]:
    """Rows whose attempts exceed what their own history explains: one for the claim that
    ended their story, one per logged retry, one per kill that may have held their lease.
    Rate limits and token errors give their attempt back. Returns (token-window rows checked,
    offenders)."""
    # Each request that did not deliver an event is linked to it with that event's outcome.
    links = AttemptEvent.objects.values("event_id").annotate(
        retries=Count("pk", filter=Q(outcome=Outcome.RETRY)),
        token_errors=Count("pk", filter=Q(outcome=Outcome.TOKEN_INVALID)),
    )
    history = {link["event_id"]: (link["retries"], link["token_errors"]) for link in links}
    offenders, token_rows = [], 0
    for pk, event_id, attempts in OutboxEvent.objects.values_list("pk", "event_id", "attempts"):
        retries, token_errors = history.get(pk, (0, 0))
        token_rows += bool(token_errors)
        allowed = 1 + retries + leased_at_kill[pk]
        if attempts > allowed:
            offenders.append(f"{event_id}: {attempts} attempts, {retries} retries logged")
    return token_rows, offenders


def admin_pages(settings) -> str:
    """The outbox changelist and health page, a failed and a delivered row."""
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "ACCESS_TOKEN": TOKEN}
    client = Client()
    client.force_login(User.objects.create(username="chaos", is_staff=True, is_superuser=True))
    pages = [
        "/admin/django_capi/outboxevent/",
        "/admin/django_capi/outboxevent/?status=failed",
        "/admin/django_capi/outboxevent/health/",
    ]
    for status in (Status.FAILED, Status.DELIVERED):
        row = OutboxEvent.objects.filter(status=status).first()
        if row is not None:
            pages.append(f"/admin/django_capi/outboxevent/{row.pk}/change/")
    html = []
    for page in pages:
        response = client.get(page)
        assert response.status_code in (200, 302), (page, response.status_code)
        html.append(response.content.decode())
    return "\n".join(html)


@pytest.fixture
def chaos_celery(tmp_path):
    """A Celery worker on Redis with a queue of this run's own, woken every second."""
    from tests.celery_app import app

    queue = f"capi-chaos-{os.getpid()}"
    redis.Redis.from_url(app.conf.broker_url).delete(queue)
    processes: list[subprocess.Popen[str]] = []
    stop = threading.Event()

    def begin(settings: dict[str, object]) -> Path:
        log = tmp_path / "celery.log"
        args = ["-m", "celery", "-A", "tests.celery_app", "worker", "--pool=solo", "-Q", queue]
        processes.append(start([*args, "--loglevel=INFO"], settings, log=log))
        wait_until(lambda: " ready." in log.read_text(), timeout=60, what="the Celery worker")

        def wake() -> None:
            while not stop.wait(1.0):
                app.send_task("django_capi.drain_outbox", kwargs={"using": "default"}, queue=queue)

        threading.Thread(target=wake, daemon=True).start()
        return log

    yield begin
    stop.set()
    for process in processes:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    redis.Redis.from_url(app.conf.broker_url).delete(queue)


@pytest.mark.chaos
@pytest.mark.postgres
@pytest.mark.slow
# With "other", this module alone (make chaos) sets up every test database conftest ends.
@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_chaos(tmp_path, settings, chaos_celery):
    scale = FULL if os.environ.get("CAPI_CHAOS") == "full" else SMALL
    seed = int(os.environ.get("CAPI_CHAOS_SEED", "0")) or random.randrange(1, 10**6)
    print(f"chaos: {scale}, seed {seed}")
    rng = random.Random(seed)
    began = time.monotonic()

    OutboxEventFactory.bulk_create(scale.events)
    invalid = make_invalid(scale.events)
    valid = set(OutboxEvent.objects.values_list("event_id", flat=True)) - invalid
    deadlocks_before = deadlocks()

    with GraphEmulator(access_tokens=(TOKEN,)) as graph:
        graph.fail_always(chaos_faults(seed))
        drainer_settings = {**DRAINER_SETTINGS, "GRAPH_API_URL": graph.url}
        logs = tmp_path / "logs"
        logs.mkdir()
        supervisor = Supervisor(scale.drainers, drainer_settings, logs, scale.kill_every, rng)
        celery_log = chaos_celery(drainer_settings) if scale.celery else None
        thread = threading.Thread(target=supervisor.run, daemon=True)
        thread.start()

        # Once delivery is under way, the token expires (Meta answers 190) until the drainers
        # have run into it a few times, then works again.
        wait_until(
            lambda: (
                OutboxEvent.objects.filter(status=Status.DELIVERED).count()
                >= scale.events // scale.token_window_after
            ),
            timeout=scale.timeout,
            what="delivery to be under way",
        )
        graph.access_tokens = ()
        token_window = [time.time()]
        time.sleep(scale.token_window_seconds)
        wait_until(lambda: token_errors(graph) >= 3, timeout=60, what="the token window")
        graph.access_tokens = (TOKEN,)
        token_window.append(time.time())

        def settled() -> bool:
            return not OutboxEvent.objects.filter(status=Status.PENDING).exists()

        try:
            deadline = time.monotonic() + scale.timeout
            while not settled() and time.monotonic() < deadline:
                time.sleep(1)  # unsettled rows are reported below, with every other figure
        finally:
            supervisor.stop()
            thread.join(timeout=30)
        elapsed = time.monotonic() - began

    statuses = Counter(OutboxEvent.objects.values_list("status", flat=True))
    failed = set(
        OutboxEvent.objects.filter(status=Status.FAILED).values_list("event_id", flat=True)
    )
    received = set(graph.event_ids())
    reasons, unexplained = explain_duplicates(graph, sorted(supervisor.kills))
    token_rows, offenders = unexplained_attempts(supervisor.leased_at_kill)
    output = "\n".join(path.read_text() for path in sorted(logs.iterdir()))
    if celery_log is not None:
        output += celery_log.read_text()
    failure_reasons = Counter(
        OutboxEvent.objects.filter(status=Status.FAILED).values_list("failure_reason", flat=True)
    )
    figures = {
        "seed": seed,
        "events": scale.events,
        "invalid": len(invalid),
        "seconds": round(elapsed),
        "statuses": dict(statuses),
        "failure_reasons": dict(failure_reasons),
        "requests": len(graph.requests),
        "faults": Counter(type(r.fault).__name__ for r in graph.requests if r.fault),
        "kills": len(supervisor.kills),
        "duplicates": len(graph.duplicates),
        "duplicates_explained": dict(reasons),
        "lost_answers": len(graph.lost_answers(READ_TIMEOUT)),
        "token_window": [round(t - token_window[0], 1) for t in token_window],
        "token_errors": token_errors(graph),
        "rows_in_token_window": token_rows,
        "deadlocks": deadlocks() - deadlocks_before,
    }
    print(f"chaos figures: {figures}")

    problems = []
    if statuses.keys() - {Status.DELIVERED, Status.FAILED}:
        problems.append(f"rows left unsettled: {dict(statuses)}")
    if failed != invalid:
        problems.append(
            f"failed rows are not the invalid ones: {len(failed - invalid)} valid rows failed "
            f"({dict(failure_reasons)}), {len(invalid - failed)} invalid rows did not"
        )
    if valid - received:
        problems.append(f"{len(valid - received)} valid events never reached Meta")
    if unexplained:
        problems.append(f"{len(unexplained)} duplicates unexplained, e.g. {unexplained[:3]}")
    if figures["deadlocks"] or re.search(r"deadlock", output, re.IGNORECASE):
        problems.append(f"{figures['deadlocks']} deadlock(s) in PostgreSQL")
    if offenders:
        problems.append(f"{len(offenders)} rows spent unexplained attempts: {offenders[:3]}")
    for where, text in [
        ("a drainer's log", output),
        ("the database", dump_database()),
        ("the admin", admin_pages(settings)),
    ]:
        if TOKEN in text:
            problems.append(f"the access token appears in {where}")
    assert not problems, "\n".join([*problems, f"figures: {figures}"])


def test_chaos_faults_are_seeded_and_recorded_as_drawn():
    faults = [(0.5, HttpStatus(503)), (0.25, ConnectionReset(processed=True))]
    draws = [Chaos(faults, seed=7).draw() for _ in range(1)]
    again = Chaos(faults, seed=7)
    assert [again.draw()] == draws
    dice = Chaos(faults, seed=1)
    drawn = Counter(type(dice.draw()).__name__ for _ in range(4000))
    assert 1800 < drawn["HttpStatus"] < 2200
    assert 800 < drawn["ConnectionReset"] < 1200
    with pytest.raises(ValueError, match="more than 1"):
        Chaos([(0.7, HttpStatus(500)), (0.7, HttpStatus(502))])


def test_the_emulator_records_a_lost_answer_with_the_fault_it_drew():
    import requests

    with GraphEmulator() as graph:
        graph.fail_always(Chaos([(1.0, ConnectionReset(processed=True))], seed=1))
        body = {
            "access_token": "capi-emulator-token",
            "data": json.dumps(
                [
                    {
                        "event_name": "Lead",
                        "event_time": int(time.time()),
                        "event_id": "x1",
                        "action_source": "chat",
                        "user_data": {"em": "a" * 64},
                    }
                ]
            ),
        }
        with pytest.raises(requests.ConnectionError):
            requests.post(graph.events_url("1"), data=body, timeout=5)
        (request,) = graph.requests
        assert request.fault == ConnectionReset(processed=True)
        assert graph.lost_answers(read_timeout=1.0) == [request]
        assert graph.event_ids() == ["x1"]  # Meta has it, although the sender never heard
