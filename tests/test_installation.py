"""Each installation's own event ids: the same order number on two databases, two ids."""

from __future__ import annotations

import uuid

import pytest
from django.db import connections, transaction
from django.template import Context, Template
from django.test import RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext

from django_capi import OutboxEvent, event_id_for, installation
from django_capi.conf import capi_settings
from django_capi.exceptions import CapiConfigurationError
from django_capi.installation import (
    LEGACY_EVENT_ID_NAMESPACE,
    ensure_installation,
    event_id_namespace,
    stored_namespace,
)
from django_capi.models import Installation
from tests.shop.models import Order

BOTH = {"default", "other"}
OVERRIDE = "0b7e7c1e-55d5-4a3c-9a52-0d5a9d8e6f10"


@pytest.fixture(autouse=True)
def _forget_namespaces():
    """The tests rewrite installation rows that the rollback restores: forget what they read
    (and whether the missing row was already logged)."""
    installation._warn_unmigrated.cache_clear()
    yield
    stored_namespace.cache_clear()
    installation._warn_unmigrated.cache_clear()


def order_1(using: str) -> Order:
    with transaction.atomic(using=using):
        return Order.objects.using(using).create(
            pk=1, email="one@example.com", status="paid", total=3, user_agent="UA/1"
        )


def pixel_event_id(order: Order) -> str:
    request = RequestFactory().get("/", HTTP_USER_AGENT="UA/1")
    html = Template('{% load capi %}{% capi_event order "Purchase" %}').render(
        Context({"request": request, "order": order})
    )
    return html.split('"eventID": "', 1)[1].split('"', 1)[0]


@pytest.mark.django_db(databases=BOTH)
def test_two_databases_with_identical_settings_give_order_1_different_ids():
    orders = [order_1(alias) for alias in sorted(BOTH)]
    ids = {o._state.db: OutboxEvent.objects.using(o._state.db).get().event_id for o in orders}
    assert ids["default"] != ids["other"]
    assert event_id_namespace("default") != event_id_namespace("other")


@pytest.mark.django_db(databases=BOTH)
def test_the_pixel_tag_renders_the_rows_id_on_each_database():
    for alias in BOTH:
        order = order_1(alias)
        row = OutboxEvent.objects.using(alias).get()
        assert event_id_for(order, "Purchase") == row.event_id
        assert pixel_event_id(order) == row.event_id
        # An instance read back from the database knows its alias too.
        assert event_id_for(Order.objects.using(alias).get(pk=1), "Purchase") == row.event_id


@pytest.mark.django_db(databases=BOTH)
def test_ids_are_stable_across_processes_and_read_once_per_process():
    order = order_1("other")
    before = event_id_for(order, "Purchase")
    stored_namespace.cache_clear()  # a new process
    with CaptureQueriesContext(connections["other"]) as queries:
        ids = {event_id_for(order, "Purchase") for _ in range(5)}
    assert ids == {before}
    reads = [q for q in queries.captured_queries if "django_capi_installation" in q["sql"]]
    assert len(reads) == 1
    with CaptureQueriesContext(connections["other"]) as queries:
        event_id_for(order, "Purchase")
    assert queries.captured_queries == []


@pytest.mark.django_db(databases=BOTH)
def test_the_setting_overrides_the_stored_namespace_everywhere():
    with override_settings(
        DJANGO_CAPI={"PIXEL_ID": "1234567890", "WAKE": "none", "EVENT_ID_NAMESPACE": OVERRIDE}
    ):
        orders = [order_1(alias) for alias in sorted(BOTH)]
    ids = {OutboxEvent.objects.using(o._state.db).get().event_id for o in orders}
    expected = str(uuid.uuid5(uuid.UUID(OVERRIDE), "shop.order:1:Purchase"))
    assert ids == {expected}


@pytest.mark.django_db(databases=BOTH)
def test_a_bad_namespace_setting_is_a_configuration_error():
    with (
        override_settings(DJANGO_CAPI={"EVENT_ID_NAMESPACE": "not-a-uuid"}),
        pytest.raises(CapiConfigurationError, match="EVENT_ID_NAMESPACE"),
    ):
        capi_settings()


@pytest.mark.django_db(databases=BOTH)
def test_an_upgraded_outbox_with_rows_keeps_the_fixed_namespace():
    order_1("default")
    Installation.objects.using("default").delete()
    ensure_installation(using="default")  # what `migrate` does after 0007
    assert Installation.objects.using("default").get().event_id_namespace == (
        LEGACY_EVENT_ID_NAMESPACE
    )
    assert event_id_namespace("default") == LEGACY_EVENT_ID_NAMESPACE


@pytest.mark.django_db(databases=BOTH)
def test_a_new_installation_gets_a_random_namespace():
    Installation.objects.using("default").delete()
    ensure_installation(using="default")
    first = Installation.objects.using("default").get().event_id_namespace
    Installation.objects.using("default").delete()
    ensure_installation(using="default")
    second = Installation.objects.using("default").get().event_id_namespace
    assert LEGACY_EVENT_ID_NAMESPACE not in {first, second}
    assert first != second
    assert event_id_namespace("default") == second


@pytest.mark.django_db(databases=BOTH)
def test_a_database_without_its_row_uses_the_fixed_namespace_and_asks_again(caplog):
    Installation.objects.using("other").delete()
    stored_namespace.cache_clear()
    assert event_id_namespace("other") == LEGACY_EVENT_ID_NAMESPACE
    assert "migrate django_capi" in caplog.text
    Installation.objects.using("other").create(event_id_namespace=uuid.UUID(OVERRIDE))
    assert event_id_namespace("other") == uuid.UUID(OVERRIDE)  # the miss was not cached


@pytest.mark.postgres
@pytest.mark.django_db(databases=BOTH)
def test_code_deployed_before_migrate_keeps_the_old_ids_and_the_save_succeeds():
    """PostgreSQL aborts a transaction on a failed query: the read sits in a savepoint."""
    from django.db import connection

    stored_namespace.cache_clear()
    with transaction.atomic():
        with connection.schema_editor() as editor:
            editor.delete_model(Installation)  # 0007 not applied yet (rolled back below)
        order = Order.objects.create(pk=1, email="one@example.com", status="paid", total=3)
        row = OutboxEvent.objects.get()  # the transaction is still usable
        assert row.event_id == str(uuid.uuid5(LEGACY_EVENT_ID_NAMESPACE, "shop.order:1:Purchase"))
        assert event_id_for(order, "Purchase") == row.event_id
        transaction.set_rollback(True)
