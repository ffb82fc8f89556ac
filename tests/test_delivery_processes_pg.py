"""Delivery with real processes on a database with row locks (PostgreSQL, MariaDB): several
drainers, a killed one, Celery."""

from __future__ import annotations

import os
import re
import signal
from collections import Counter

import pytest
import redis
from django.db import transaction

from django_capi.models import OutboxEvent
from django_capi.testing import Delay
from tests.factories import OrderFactory, OutboxEventFactory
from tests.processes import manage, start, wait_until

pytestmark = [pytest.mark.rowlocks, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

Status = OutboxEvent.Status


def delivered_count() -> int:
    return OutboxEvent.objects.filter(status=Status.DELIVERED).count()


def test_four_drainers_share_20000_events_and_meta_gets_each_once(capi_graph):
    OutboxEventFactory.bulk_create(20_000)
    graph = {"GRAPH_API_URL": capi_graph.url}
    drainers = [start(manage("capi_drain", "--loop", "--interval", "0.2"), graph) for _ in range(4)]
    try:
        wait_until(lambda: delivered_count() == 20_000, timeout=240, what="20,000 deliveries")
    finally:
        for drainer in drainers:
            drainer.send_signal(signal.SIGTERM)
    outputs = [drainer.communicate(timeout=60)[0] for drainer in drainers]
    assert [drainer.returncode for drainer in drainers] == [0, 0, 0, 0], outputs
    assert all(output.rstrip().endswith("Stopped.") for output in outputs)

    ids = capi_graph.event_ids()
    assert len(ids) == 20_000
    assert Counter(ids).most_common(1)[0][1] == 1  # each event_id exactly once
    assert capi_graph.duplicates == []
    per_process = [
        sum(int(n) for n in re.findall(r"delivered (\d+)", output)) for output in outputs
    ]
    assert sum(per_process) == 20_000
    assert sum(1 for n in per_process if n) >= 2, per_process  # the work was shared


def test_a_drainer_killed_mid_batch_loses_nothing(capi_graph):
    rows = OutboxEventFactory.create_batch(50)
    capi_graph.script(Delay(30))  # Meta takes the events, the answer never comes back
    drainer = start(
        manage("capi_drain"),
        {
            "GRAPH_API_URL": capi_graph.url,
            "LEASE_SECONDS": 3,
            "CONNECT_TIMEOUT": 0.3,
            "READ_TIMEOUT": 1.0,
        },
    )
    wait_until(lambda: capi_graph.received_events(), timeout=30, what="the drainer's request")
    drainer.kill()  # SIGKILL: no cleanup, the lease is simply abandoned
    drainer.wait(timeout=10)
    assert (
        OutboxEvent.objects.filter(status=Status.PENDING, lease_token__isnull=False).count() == 50
    )

    from django_capi.delivery import drain

    assert drain().claimed == 0  # still leased to the dead worker
    wait_until(lambda: drain().delivered == 50, timeout=15, what="the lease to expire")
    assert delivered_count() == 50
    assert set(capi_graph.event_ids()) == {row.event_id for row in rows}
    # Meta saw the batch twice and deduplicates it by event_id.
    assert len(capi_graph.duplicates) == 50


@pytest.fixture
def celery_worker(capi_graph, tmp_path):
    from tests.celery_app import app

    # A queue of this run's own, so no other run's worker can take its tasks.
    queue = f"capi-test-{os.getpid()}"
    app.conf.task_default_queue = queue
    redis.Redis.from_url(app.conf.broker_url).delete(queue)
    log = tmp_path / "worker.log"
    worker = start(
        [
            "-m",
            "celery",
            "-A",
            "tests.celery_app",
            "worker",
            "--pool=solo",
            "-Q",
            queue,
            "--loglevel=INFO",
        ],
        {"GRAPH_API_URL": capi_graph.url},
        log=log,
    )
    try:
        wait_until(lambda: " ready." in log.read_text(), timeout=60, what="the Celery worker")
        yield log
    finally:
        app.conf.task_default_queue = "celery"
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


def test_a_celery_worker_on_redis_delivers_rows_of_a_committed_transaction(
    capi_graph, celery_worker, settings
):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "WAKE": "celery"}
    with transaction.atomic():
        for _ in range(3):
            order = OrderFactory()
            order.status = "paid"
            order.save()
    wait_until(lambda: delivered_count() == 3, timeout=60, what="the worker to deliver")
    assert "django_capi.drain_outbox" in celery_worker.read_text()  # the worker did it
    assert len(capi_graph.event_ids()) == 3
    assert len(capi_graph.requests) == 1  # one wake-up for the transaction, one batch


def test_renewals_write_backs_and_pixel_pauses_never_deadlock():
    """Keepers (claim, renew, give back, now and then after stalling past the lease) and
    pausers (postpone and resume the pixel) run at once on the same rows."""
    OutboxEventFactory.bulk_create(3000)
    roles = ["keeper", "keeper", "pauser", "pauser"]
    hammers = [start(["-m", "tests.outbox_hammer", role, "20"]) for role in roles]
    outputs = [hammer.communicate(timeout=120)[0] for hammer in hammers]
    assert [hammer.returncode for hammer in hammers] == [0, 0, 0, 0], outputs
    counts = [re.search(r"deadlocks (\d+) ops (\d+)", output) for output in outputs]
    assert all(counts), outputs
    assert all(int(count[2]) > 0 for count in counts if count), outputs  # all did work
    assert sum(int(count[1]) for count in counts if count) == 0, outputs
