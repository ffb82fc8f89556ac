import hashlib
import uuid
from datetime import timedelta
from typing import Any

import factory
from django.utils import timezone

from django_capi.constants import match_key_bits
from django_capi.models import OutboxEvent
from tests.shop.models import Lead, Order

Status = OutboxEvent.Status
#: The pixel of the test settings, and of every ``OutboxEventFactory`` row unless told.
PIXEL = "1234567890"


class OrderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Order

    email = factory.Sequence(lambda n: f"Shopper.{n}@Example.com")
    phone = "(650) 555-1212"
    first_name = "Mary"
    status = "new"
    total = factory.Faker("pydecimal", left_digits=3, right_digits=2, positive=True)
    currency = "EUR"
    user_agent = "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"
    ip = "203.0.113.7"


class LeadFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Lead

    email = factory.Sequence(lambda n: f"lead{n}@example.org")


def _payload(row: object) -> dict[str, object]:
    """The Meta-ready event the row stands for; ``user_data=None`` leaves the key out."""
    payload: dict[str, object] = {
        "event_name": row.event_name,
        "event_time": int(row.event_time.timestamp()),
        "event_id": row.event_id,
        "action_source": row.action_source,
    }
    if row.user_data is not None:
        payload["user_data"] = row.user_data
    return payload


def _ago(**delta: float) -> factory.LazyFunction:
    return factory.LazyFunction(lambda: timezone.now() - timedelta(**delta))


class OutboxEventFactory(factory.django.DjangoModelFactory):
    """An outbox row with a Meta-valid payload: pending, due at once unless a trait says
    otherwise. ``created_at`` and ``next_attempt_at`` default to the database's clock."""

    class Meta:
        model = OutboxEvent

    class Params:
        #: The payload's ``user_data`` (already hashed); None leaves it out of the payload.
        user_data = factory.LazyFunction(
            lambda: {"em": hashlib.sha256(b"shopper@example.com").hexdigest()}
        )
        #: How long ago the event happened (``event_time``).
        age = timedelta(0)
        delivered = factory.Trait(
            status=Status.DELIVERED,
            attempts=1,
            delivered_at=factory.LazyFunction(timezone.now),
            last_attempt_at=factory.SelfAttribute("delivered_at"),
            last_http_status=200,
        )
        failed = factory.Trait(
            status=Status.FAILED,
            failure_reason=OutboxEvent.FailureReason.REJECTED,
            last_error="Invalid parameter",
            attempts=1,
            last_attempt_at=factory.LazyFunction(timezone.now),
        )
        #: Failed while being built: no payload, nothing was ever sent.
        invalid = factory.Trait(
            status=Status.FAILED,
            failure_reason=OutboxEvent.FailureReason.INVALID,
            last_error="event_name must be a non-empty string",
            payload={},
        )
        cancelled = factory.Trait(status=Status.CANCELLED)
        #: Pending and due for a while, as a backlog nobody drains.
        due = factory.Trait(next_attempt_at=_ago(minutes=5))
        #: Pending, waiting for its retry's backoff.
        backing_off = factory.Trait(attempts=1, next_attempt_at=_ago(minutes=-10))
        #: Older than Meta accepts for a website or system event (7 days).
        aged = factory.Trait(age=timedelta(days=8))
        #: Claimed by a worker that still holds its lease.
        leased = factory.Trait(
            lease_token=factory.LazyFunction(uuid.uuid4), leased_until=_ago(seconds=-60)
        )

    pixel_id = PIXEL
    event_name = "Lead"
    event_id = factory.Sequence(lambda n: f"factory-{n}")
    event_time = factory.LazyAttribute(lambda row: timezone.now() - row.age)
    action_source = "system_generated"
    payload = factory.LazyAttribute(_payload)
    # As OutboxEvent.save() sets it: bulk_create() does not call it.
    match_keys = factory.LazyAttribute(
        lambda row: match_key_bits(row.payload.get("user_data")) if row.payload else 0
    )
    status = Status.PENDING

    @classmethod
    def bulk_create(cls, size: int, *, using: str = "default", **kwargs: Any) -> list[OutboxEvent]:
        """``size`` rows in ``using`` with a few INSERTs (``create_batch`` saves them one by
        one: too slow for the thousands a drain test needs), in primary-key order, as the
        database stored them (its defaults included)."""
        manager = OutboxEvent.objects.using(using)
        made = manager.bulk_create(cls.build_batch(size, **kwargs), batch_size=500)
        ids = [row.pk for row in made]
        batches = (ids[start : start + 500] for start in range(0, len(ids), 500))
        return [row for batch in batches for row in manager.filter(pk__in=batch).order_by("pk")]
