"""Building one Meta event from what the shop knows, and recording it in the outbox.

Everything here runs inside the shop's request and transaction: it never talks to Meta, and
a bad event becomes a visible ``failed`` row instead of an exception in the checkout.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, connections, models, router, transaction
from django.http import HttpRequest
from django.utils import timezone

from . import context, validation
from .conf import capi_settings
from .constants import ActionSource
from .dispatch import wake_drainer_on_commit
from .exceptions import (
    CapiConfigurationError,
    CapiError,
    EventValidationError,
    UnknownUserDataKey,
)
from .middleware import browser_context
from .models import OutboxEvent
from .normalize import normalize_user_data

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventDraft:
    """What the shop knows about one event, before Meta's rules are applied."""

    event_name: str
    event_id: str
    event_time: datetime | float | None = None
    action_source: str = ActionSource.WEBSITE
    user_data: Mapping[str, object] = field(default_factory=dict)
    custom_data: Mapping[str, object] | None = None
    event_source_url: str | None = None
    #: The browser's IP, user agent, fbc, fbp and pages; explicit ``user_data`` wins.
    browser: Mapping[str, object] = field(default_factory=dict)
    phone_region: str | None = None
    #: Limited Data Use: ``{"country": …, "state": …}``, or None.
    limited_data_use: Mapping[str, int] | None = None


@dataclass(frozen=True)
class BuiltEvent:
    """A Meta-ready event: ``payload`` is what the Graph API receives."""

    payload: dict[str, Any]
    event_time: datetime
    warnings: list[str]


def build_event(draft: EventDraft, *, default_phone_region: str | None = None) -> BuiltEvent:
    """Normalize, hash and validate ``draft``; raise ``EventValidationError`` listing every
    rule it breaks."""
    problems = validation.check_event_name(draft.event_name)
    problems += validation.check_event_id(draft.event_id)
    problems += validation.check_action_source(draft.action_source)
    if not isinstance(draft.user_data, Mapping) or not isinstance(draft.browser, Mapping):
        raise EventValidationError("user_data and request_context must be dicts")
    raw_user_data: dict[str, object] = {
        key: draft.browser[key] for key in context.USER_DATA_KEYS if key in draft.browser
    }
    raw_user_data.update(draft.user_data)
    try:
        user_data = normalize_user_data(
            raw_user_data,
            phone_region=draft.phone_region,
            default_phone_region=default_phone_region,
        )
    except UnknownUserDataKey as exc:
        raise EventValidationError(exc.problems) from None
    # Explicit URLs and contexts stored before scrubbing existed: no raw email reaches the row.
    event_source_url = context.scrub_url(
        draft.event_source_url or draft.browser.get("event_source_url")
    )
    referrer_url = context.scrub_url(draft.browser.get("referrer_url"))
    event_time = 0
    try:
        event_time = validation.event_timestamp(
            timezone.now() if draft.event_time is None else draft.event_time,
            draft.action_source,
        )
    except EventValidationError as exc:
        problems += exc.problems
    problems += validation.check_website_fields(draft.action_source, event_source_url, user_data)
    problems += validation.check_matchable(user_data)
    custom_data: dict[str, Any] = {}
    try:
        custom_data = validation.clean_custom_data(draft.custom_data, draft.event_name)
    except EventValidationError as exc:
        problems += exc.problems
    problems += validation.check_limited_data_use(draft.limited_data_use)
    if problems:
        raise EventValidationError(problems)

    payload: dict[str, Any] = {
        "event_name": draft.event_name,
        "event_time": event_time,
        "event_id": draft.event_id,
        "action_source": draft.action_source,
        "user_data": dict(user_data),
    }
    if event_source_url:
        payload["event_source_url"] = event_source_url
    if isinstance(referrer_url, str) and referrer_url:
        payload["referrer_url"] = referrer_url
    if draft.limited_data_use is not None:
        payload["data_processing_options"] = ["LDU"]
        payload["data_processing_options_country"] = draft.limited_data_use["country"]
        payload["data_processing_options_state"] = draft.limited_data_use["state"]
    if custom_data:
        payload["custom_data"] = custom_data
    return BuiltEvent(
        payload=payload,
        event_time=datetime.fromtimestamp(event_time, tz=UTC),
        warnings=list(user_data.problems),
    )


def record_event(
    *,
    event_name: str,
    event_id: str,
    action_source: str,
    build: Callable[[], BuiltEvent],
    using: str,
    source: models.Model | None = None,
    error: str | None = None,
) -> OutboxEvent:
    """Write the outbox row for one event in the current transaction on ``using``.

    ``event_name`` and ``event_id`` must already be valid: they are the row's unique key with
    the pixel. A second call finds the first row and returns it untouched, unless that row
    failed while being built; it is built again, so fixing a mapping bug heals the event on
    the next save. ``build`` may raise anything, and ``error`` records a failure found before
    building; either way the row is ``failed`` and says why.

    Every statement runs in its own savepoint: whatever fails here, even in the integrator's
    hooks, the caller's transaction stays usable.
    """
    try:
        pixel_id = capi_settings().pixel_id or ""
    except CapiConfigurationError as exc:
        pixel_id, error = "", str(exc)
    if not pixel_id and error is None:
        error = "DJANGO_CAPI['PIXEL_ID'] (or CAPI_PIXEL_ID) is not set"
    with transaction.atomic(using=using):
        existing = _find(using, pixel_id, event_name, event_id)
    if existing is not None and not _failed_while_built(existing):
        return existing

    built: BuiltEvent | None = None
    if error is None:
        try:
            with transaction.atomic(using=using):
                built = build()
        except CapiError as exc:
            error = str(exc)
        except Exception as exc:
            error = f"unexpected {type(exc).__name__} while building the event; see the log"
            logger.exception("building %s %s for %s raised", event_name, event_id, _label(source))
    if built is not None:
        fields: dict[str, Any] = {
            "event_time": built.event_time,
            "payload": built.payload,
            "warnings": built.warnings,
            "status": OutboxEvent.Status.PENDING,
            "failure_reason": "",
            "last_error": "",
        }
    else:
        fields = {
            "event_time": timezone.now() if existing is None else existing.event_time,
            "payload": {},
            "warnings": [],
            "status": OutboxEvent.Status.FAILED,
            "failure_reason": OutboxEvent.FailureReason.INVALID,
            "last_error": error,
        }

    _warn_outside_transaction(using)
    row = _save(using, existing, pixel_id, event_name, event_id, action_source, fields, source)
    if row.status == OutboxEvent.Status.PENDING:
        wake_drainer_on_commit(using)
    else:
        logger.warning(
            "event %s %s for %s not sent: %s", event_name, event_id, _label(source), row.last_error
        )
    return row


def send_event(
    event_name: str,
    *,
    user_data: Mapping[str, object] | None = None,
    custom_data: Mapping[str, object] | None = None,
    event_id: str | None = None,
    event_time: datetime | float | None = None,
    action_source: str = ActionSource.WEBSITE,
    event_source_url: str | None = None,
    request: HttpRequest | None = None,
    limited_data_use: Mapping[str, int] | None = None,
) -> OutboxEvent | None:
    """Record an event that is not a model save (AddToCart, a CRM status change, …).

    The row is written in the current transaction, so it exists exactly when the caller's
    work commits. Invalid input never raises: the returned row is ``failed`` and its
    ``last_error`` says what to fix. Returns None, storing nothing, when the visitor of
    ``request`` (or of the request being handled) refused consent.

    ``limited_data_use`` overrides the ``LIMITED_DATA_USE`` setting for this event.
    """
    event_id = str(uuid.uuid4()) if event_id is None else event_id
    key_problems = validation.check_event_name(event_name) + validation.check_event_id(event_id)
    if key_problems:
        # An unusable key cannot deduplicate anything; the failure gets a key of its own.
        event_name = str(event_name)[: validation.MAX_EVENT_NAME_LENGTH] or "(invalid)"
        event_id = str(uuid.uuid4())
    if request is not None:
        browser = browser_context(request)
    elif action_source == ActionSource.WEBSITE:
        browser = context.current_context()
    else:
        browser = {}  # a CRM or phone event must not take a staff member's browser
    if browser.get(context.CONSENT_KEY) is False:
        return None
    draft = EventDraft(
        event_name=event_name,
        event_id=event_id,
        event_time=event_time,
        action_source=action_source,
        user_data=user_data or {},
        custom_data=custom_data,
        event_source_url=event_source_url,
        browser=browser,
        limited_data_use=limited_data_use or capi_settings().limited_data_use,
    )
    return record_event(
        event_name=event_name,
        event_id=event_id,
        action_source=action_source,
        build=lambda: build_event(draft, default_phone_region=capi_settings().default_phone_region),
        using=router.db_for_write(OutboxEvent),
        error="; ".join(key_problems) or None,
    )


def _find(using: str, pixel_id: str, event_name: str, event_id: str) -> OutboxEvent | None:
    return (
        OutboxEvent.objects.using(using)
        .filter(pixel_id=pixel_id, event_name=event_name, event_id=event_id)
        .first()
    )


def _failed_while_built(row: OutboxEvent) -> bool:
    return (
        row.status == OutboxEvent.Status.FAILED
        and row.failure_reason == OutboxEvent.FailureReason.INVALID
    )


def _save(
    using: str,
    existing: OutboxEvent | None,
    pixel_id: str,
    event_name: str,
    event_id: str,
    action_source: str,
    fields: dict[str, Any],
    source: models.Model | None,
) -> OutboxEvent:
    # Savepoints, so that a failing statement never poisons the caller's transaction.
    if existing is not None:
        for name, value in fields.items():
            setattr(existing, name, value)
        with transaction.atomic(using=using):
            existing.save(using=using, update_fields=list(fields))
        return existing
    row = OutboxEvent(
        pixel_id=pixel_id,
        event_name=event_name,
        event_id=event_id,
        action_source=str(action_source)[:32],
        **fields,
    )
    try:
        with transaction.atomic(using=using):
            if source is not None and source.pk is not None:
                row.source_type = ContentType.objects.db_manager(using).get_for_model(source)
                row.source_id = str(source.pk)
            row.save(using=using, force_insert=True)
    except IntegrityError:
        # Another transaction recorded the same event first; theirs is the one.
        found = _find(using, pixel_id, event_name, event_id)
        if found is None:
            raise
        return found
    return row


_warned_autocommit: set[str] = set()


def _warn_outside_transaction(using: str) -> None:
    if not connections[using].in_atomic_block and using not in _warned_autocommit:
        _warned_autocommit.add(using)
        logger.warning(
            "django-capi recorded an event outside a transaction on %r: the business row and "
            "its event are not atomic. Use ATOMIC_REQUESTS or transaction.atomic().",
            using,
        )


def _label(source: models.Model | None) -> str:
    return f"{source._meta.label} pk={source.pk}" if source is not None else "send_event"
