"""How committed rows wake the drainer: one Celery task for a burst, none without Celery."""

from __future__ import annotations

import os
import time

import pytest
import redis
from django.core.cache import cache
from django.db import transaction
from django.test import override_settings

from django_capi import send_event, tasks
from django_capi.conf import capi_settings
from django_capi.models import OutboxEvent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queue(settings):
    """This run's own Redis queue, with no worker: what is queued stays there to be counted."""
    from tests.celery_app import app

    name = f"capi-wake-{os.getpid()}"
    broker = redis.Redis.from_url(app.conf.broker_url)
    broker.delete(name)
    app.conf.task_default_queue = name
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "WAKE": "celery"}
    cache.clear()
    yield lambda: broker.llen(name)
    app.conf.task_default_queue = "celery"
    broker.delete(name)


def lead(n: int) -> OutboxEvent:
    return send_event("Lead", user_data={"em": f"l{n}@b.co"}, action_source="system_generated")


def test_a_burst_of_1000_committed_orders_queues_one_task(queue, monkeypatch):
    # However long the loop takes on a slow machine, it is one burst.
    monkeypatch.setattr(tasks, "WAKE_FLAG_SECONDS", 600)
    for n in range(1000):
        with transaction.atomic():
            lead(n)
    assert OutboxEvent.objects.count() == 1000
    assert queue() == 1


def test_a_started_task_lets_the_next_commit_queue_another(queue):
    with transaction.atomic():
        lead(1)
    tasks.clear_wake_flag()  # what drain_outbox does first
    with transaction.atomic():
        lead(2)
    assert queue() == 2


def test_a_wake_flag_left_by_a_worker_without_a_shared_cache_expires(queue, monkeypatch):
    monkeypatch.setattr(tasks, "WAKE_FLAG_SECONDS", 1)
    with transaction.atomic():
        lead(1)
    time.sleep(1.1)  # nobody cleared the flag: a worker's cache is not this process's
    with transaction.atomic():
        lead(2)
    assert queue() == 2


def test_a_rollback_queues_nothing(queue):
    with pytest.raises(RuntimeError), transaction.atomic():
        lead(1)
        raise RuntimeError
    assert queue() == 0


def test_without_celery_wake_ups_queue_nothing(queue, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "WAKE": "none"}
    with transaction.atomic():
        lead(1)
    assert queue() == 0


def test_wake_defaults_to_celery_when_a_celery_app_with_a_broker_is_configured():
    from celery import Celery

    from tests.celery_app import app

    with override_settings(DJANGO_CAPI={"PIXEL_ID": "1"}):
        assert capi_settings().wake == "celery"
    Celery("unconfigured", set_as_current=True)
    try:
        with override_settings(DJANGO_CAPI={"PIXEL_ID": "1"}):
            assert capi_settings().wake == "none"  # it would queue tasks to nowhere
    finally:
        app.set_current()


def test_an_unreachable_broker_is_logged_and_the_commit_stands(settings, caplog):
    from celery import Celery

    from tests.celery_app import app

    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "WAKE": "celery"}
    cache.clear()
    nobody_listens = Celery("unreachable", broker="redis://127.0.0.1:9/0", set_as_current=True)
    nobody_listens.conf.task_publish_retry = False
    try:
        with transaction.atomic():
            row = lead(1)
    finally:
        app.set_current()
    assert OutboxEvent.objects.filter(pk=row.pk).exists()
    assert "could not queue a drain; the periodic sweep will" in caplog.text
    assert cache.get(f"{tasks.WAKE_FLAG}:default") is None  # the next commit tries again
