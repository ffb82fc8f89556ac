"""Declaring conversions: validation at import time, proxies, and the public API."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import models

import django_capi
from django_capi import ModelEvent, OutboxEvent, register, registry
from django_capi.exceptions import CapiConfigurationError
from django_capi.registry import registered_events
from tests.shop.capi import OrderPaid
from tests.shop.models import Lead, Order, PaidOrder

ROOT = Path(__file__).resolve().parent.parent


def test_the_apps_capi_module_is_autodiscovered():
    assert [type(event) for event in registered_events(Order)] == [OrderPaid]


@pytest.mark.usefixtures("isolated_registry")
@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({}, "Bad: event_name must be a non-empty string"),
        ({"event_name": ""}, "Bad: event_name must be a non-empty string"),
        ({"event_name": "X" * 51}, "Bad: event_name is longer than 50 characters"),
        ({"event_name": "Lead", "action_source": "web"}, "Bad: action_source must be one of"),
    ],
)
def test_a_bad_declaration_fails_loudly_at_import_time(attributes, message):
    event_class = type("Bad", (ModelEvent,), attributes)
    with pytest.raises(CapiConfigurationError, match=re.escape(message)):
        register(Order)(event_class)


@pytest.mark.usefixtures("isolated_registry")
def test_two_events_with_one_name_on_one_model_are_refused():
    # Both would claim the same event ids: one of them would silently never be sent.
    second = type("SecondPurchase", (ModelEvent,), {"event_name": "Purchase"})
    with pytest.raises(CapiConfigurationError, match="shop.Order already has a 'Purchase'"):
        register(Order)(second)


def test_the_registry_is_read_and_isolated_through_public_functions():
    before = registry.registered_models(), [type(e) for e in registry.all_events()]
    assert Order in before[0] and OrderPaid in before[1]
    with registry.isolated():
        contact = register(Lead, Order)(type("Contact", (ModelEvent,), {"event_name": "Contact"}))
        assert registry.registered_models()[-1] is Lead
        assert [type(e) for e in registry.all_events()].count(contact) == 2
    assert (registry.registered_models(), [type(e) for e in registry.all_events()]) == before


@pytest.mark.usefixtures("isolated_registry")
def test_registering_twice_is_harmless():
    register(Order)(OrderPaid)
    assert len(registered_events(Order)) == 1


@pytest.mark.django_db(transaction=True)
def test_saves_through_a_proxy_model_are_conversions_too():
    order = PaidOrder.objects.create(
        email="p@x.co", status="paid", total=5, user_agent="UA/1", ip="203.0.113.1"
    )
    row = OutboxEvent.objects.get()
    assert row.event_name == "Purchase"
    assert row.source_id == str(order.pk)


def test_importing_the_package_does_not_need_django_to_be_ready():
    code = "import django_capi; print(django_capi.__version__)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.strip() == django_capi.__version__


def test_the_public_api():
    assert set(django_capi.__all__) == {
        "__version__",
        "ModelEvent",
        "register",
        "event_id_for",
        "send_event",
        "normalize_user_data",
        "OutboxEvent",
        "browser_context",
        "ExtInfo",
    }
    for name in django_capi.__all__:
        assert getattr(django_capi, name) is not None
    assert issubclass(django_capi.OutboxEvent, models.Model)
    with pytest.raises(AttributeError):
        django_capi.nothing_here  # noqa: B018


@pytest.mark.django_db
def test_default_event_ids_are_rfc_4122_version_5_uuids():
    """The ids are written from SHA-1's hex without a ``uuid.UUID`` (for speed): they must be
    exactly what ``uuid.uuid5`` gives, version and variant digits included."""
    import random
    import string
    import uuid

    from django_capi.installation import event_id_namespace

    namespace = event_id_namespace("default")
    chooser = random.Random(4122)
    names = ["Purchase", "Lead", "", "Événement", "x" * 200]
    for _ in range(300):
        names.append("".join(chooser.choices(string.printable, k=chooser.randint(1, 30))))
    for index, event_name in enumerate(names):
        order = Order(pk=chooser.choice([index, 10**18 + index, -index]))
        expected = uuid.uuid5(namespace, f"shop.order:{order.pk}:{event_name}")
        assert registry.default_event_id(order, event_name) == str(expected)
