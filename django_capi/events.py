"""Building one Meta event from what the shop knows, and recording it in the outbox.

Everything here runs inside the shop's request and transaction: it never talks to Meta, and
a bad event becomes a visible ``failed`` row instead of an exception in the checkout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal, NamedTuple, TypeVar, overload

from django.contrib.contenttypes.models import ContentType
from django.db import DatabaseError, IntegrityError, connections, models, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field
from django.db.models.base import ModelState
from django.db.models.constants import OnConflict
from django.db.models.fields import NOT_PROVIDED
from django.http import HttpRequest
from django.utils import timezone

from . import context, normalize, sources, validation
from .browser import browser_context
from .conf import SETTING_NAME, CapiSettings, capi_settings, is_pixel_id
from .constants import ActionSource, match_key_bits
from .exceptions import (
    CapiConfigurationError,
    CapiError,
    EventValidationError,
    UnknownUserDataKey,
)
from .models import OutboxEvent
from .signals import outbox_committed, send_on_commit
from .text import is_storable, storable, storable_json

logger = logging.getLogger(__name__)

T = TypeVar("T")


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
    #: Meta's ``app_data`` of an app event (``sources.AppData``).
    app_data: Mapping[str, object] | None = None
    #: ``whatsapp``, ``messenger`` or ``instagram`` for a business-messaging event.
    messaging_channel: str | None = None
    #: The event this one refers to: ``event_name``, ``event_time``, ``order_id``, ``event_id``.
    original_event_data: Mapping[str, object] | None = None


@dataclass(frozen=True)
class BuiltEvent:
    """A Meta-ready event: ``payload`` is what the Graph API receives."""

    payload: dict[str, Any]
    event_time: datetime
    warnings: list[str]


def build_event(draft: EventDraft, *, default_phone_region: str | None = None) -> BuiltEvent:
    """Normalize, hash and validate ``draft``; raise ``EventValidationError`` listing every
    rule it breaks.

    Only what Meta documents that it rejects is a problem; anything else Meta would take is
    left out or converted, and said in ``BuiltEvent.warnings`` (meta-capi.md §10)."""
    problems = validation.check_event_name(draft.event_name)
    problems += validation.check_event_id(draft.event_id)
    problems += validation.check_action_source(draft.action_source)
    if not (type(draft.user_data) is dict or isinstance(draft.user_data, Mapping)) or not (
        type(draft.browser) is dict or isinstance(draft.browser, Mapping)
    ):  # exact dicts first: the check of an ABC costs a call into Python
        raise EventValidationError("user_data and request_context must be dicts")
    region_problems = validation.check_phone_region(draft.phone_region)
    problems += region_problems
    raw_user_data: dict[str, object] = {
        key: draft.browser[key] for key in context.USER_DATA_KEYS if key in draft.browser
    }
    raw_user_data.update(draft.user_data)
    try:
        user_data = normalize_user_data(
            raw_user_data,
            phone_region=None if region_problems else draft.phone_region,
            default_phone_region=default_phone_region,
        )
    except UnknownUserDataKey as exc:
        raise EventValidationError(exc.problems) from None
    warnings = list(user_data.problems)
    # App, messaging, offline and CRM events: Meta's rules per action source.
    app_data = sources.clean_app_data(draft.app_data, draft.action_source, problems, warnings)
    messaging_channel = sources.clean_messaging_channel(
        draft.messaging_channel,
        draft.action_source,
        draft.event_name,
        user_data,
        problems,
        warnings,
    )
    original_event_data = sources.clean_original_event_data(
        draft.original_event_data, problems, warnings
    )
    # Explicit URLs and contexts stored before scrubbing existed: no raw email reaches the row.
    event_source_url = context.scrub_url(
        draft.event_source_url or draft.browser.get("event_source_url")
    )
    referrer_url = context.scrub_url(draft.browser.get("referrer_url"))
    event_source_url = validation.clean_event_source_url(
        event_source_url, draft.action_source, problems, warnings
    )
    referrer_url = validation.clean_referrer_url(referrer_url, warnings)
    event_time = 0
    now = timezone.now()
    try:
        event_time = validation.event_timestamp(
            now if draft.event_time is None else draft.event_time,
            draft.action_source,
            now=now,
            warnings=warnings,
        )
    except EventValidationError as exc:
        problems += exc.problems
    problems += validation.check_website_fields(draft.action_source, user_data)
    problems += validation.check_matchable(user_data)
    custom_data: dict[str, Any] = {}
    try:
        custom_data = validation.clean_custom_data(draft.custom_data, draft.event_name, warnings)
    except EventValidationError as exc:
        problems += exc.problems
    sources.clean_order_id(custom_data, problems)
    warnings += sources.crm_warnings(draft.action_source, user_data, custom_data)
    problems += validation.check_limited_data_use(draft.limited_data_use)
    if problems:
        raise EventValidationError(problems, warnings=warnings)

    payload: dict[str, Any] = {
        # NUL or lone surrogates pass Meta's rules but no database stores them; record_event
        # keys the row by the same storable text (and gives such an event_id a suffix).
        "event_name": storable(draft.event_name),
        "event_time": event_time,
        "event_id": storable(draft.event_id),
        "action_source": draft.action_source,
        "user_data": dict(user_data),
    }
    if event_source_url:
        payload["event_source_url"] = event_source_url
    if referrer_url:
        payload["referrer_url"] = referrer_url
    if draft.limited_data_use is not None:
        payload["data_processing_options"] = ["LDU"]
        payload["data_processing_options_country"] = draft.limited_data_use["country"]
        payload["data_processing_options_state"] = draft.limited_data_use["state"]
    if custom_data:
        payload["custom_data"] = custom_data
    if app_data is not None:
        payload["app_data"] = app_data
    if messaging_channel is not None:
        payload["messaging_channel"] = messaging_channel
    if original_event_data is not None:
        payload["original_event_data"] = original_event_data
    return BuiltEvent(
        payload=payload,
        event_time=datetime.fromtimestamp(event_time, tz=UTC),
        warnings=[*warnings, *_browser_warnings(draft, user_data)],
    )


def normalize_user_data(
    data: Mapping[str, object],
    *,
    phone_region: str | None = None,
    default_phone_region: str | None | Literal["settings"] = "settings",
) -> normalize.NormalizedUserData:
    """Meta's normalization and hashing of ``data`` (``normalize.normalize_user_data``), with
    the ``DEFAULT_PHONE_REGION`` setting as the default region unless one is given (``None``
    for none): ``django_capi.normalize_user_data``."""
    if default_phone_region == "settings":
        default_phone_region = capi_settings().default_phone_region
    return normalize.normalize_user_data(
        data, phone_region=phone_region, default_phone_region=default_phone_region
    )


#: For a website event that carries no browser ids and no browser context at all.
NO_BROWSER_WARNING = (
    "website event without fbc or fbp and without a browser context: Meta matches it far less "
    "often. Store django_capi.browser_context(request) on the order at checkout (a JSONField) "
    "and return it from the ModelEvent's request_context (README: The browser side)"
)


def _browser_warnings(draft: EventDraft, user_data: Mapping[str, object]) -> list[str]:
    """Meta recommends fbc with every event and fbp for website events [FBC]. A context made by
    browser_context() always names its page, so one without a page was put together by hand
    (user agent and IP only) or is missing: the mapping, not the visitor, lost the ids."""
    if draft.action_source != ActionSource.WEBSITE or "fbc" in user_data or "fbp" in user_data:
        return []
    return [] if draft.browser.get("event_source_url") else [NO_BROWSER_WARNING]


@overload
def record_event(
    *,
    event_name: str,
    event_id: str,
    action_source: str,
    build: Callable[[], BuiltEvent],
    using: str,
    source: models.Model | None = None,
    error: str | None = None,
    pixel_id: object = None,
    row: Literal[True] = True,
) -> OutboxEvent: ...


@overload
def record_event(
    *,
    event_name: str,
    event_id: str,
    action_source: str,
    build: Callable[[], BuiltEvent],
    using: str,
    source: models.Model | None = None,
    error: str | None = None,
    pixel_id: object = None,
    row: bool,
) -> OutboxEvent | None: ...


def record_event(
    *,
    event_name: str,
    event_id: str,
    action_source: str,
    build: Callable[[], BuiltEvent],
    using: str,
    source: models.Model | None = None,
    error: str | None = None,
    pixel_id: object = None,
    row: bool = True,
) -> OutboxEvent | None:
    """Write the outbox row for one event in the current transaction on ``using``.

    ``pixel_id`` is the pixel the event goes to: None for ``PIXEL_ID``, else one of the
    configured pixels (``_resolve_pixel``).

    ``event_name`` and ``event_id`` must already be valid: they are the row's unique key with
    the pixel. A second call returns the first row untouched, unless that row failed while
    being built: it takes the new build, so fixing a mapping bug heals the event on the next
    save. ``build`` may raise anything, and ``error`` records a failure found before building;
    either way the row is ``failed`` and says why.

    The common case costs one statement: ``INSERT … ON CONFLICT DO NOTHING``, no savepoint.
    It cannot fail on the key, and every value of the row is one the database stores (strings
    made storable by ``text``, lengths bounded, ``custom_data`` finite JSON by ``validation``);
    what is left, a missing table or column, is caught by a savepoint around the first row of
    each database in the process. A row the database refuses anyway is recorded as ``failed``
    where the transaction survives it. The integrator's hooks run in ``in_savepoint``.

    Returns the row, or with ``row=False`` None when the row was inserted now: the INSERT
    then returns nothing, sparing the read-back of its generated columns (model saves, which
    discard the row, take this).
    """
    try:
        pixel_id, pixel_error = _resolve_pixel(capi_settings(), pixel_id)
    except CapiConfigurationError as exc:
        pixel_id, pixel_error = "", str(exc)
    error = error or pixel_error
    warnings: list[str] = []
    cleaned_id: str | None = None
    if not (is_storable(event_name) and is_storable(event_id)):
        warnings.append(
            "event_name or event_id held NUL or lone surrogates, which no database stores; "
            "they became U+FFFD and the event_id got a suffix derived from the original, so "
            "the Pixel's event may not be deduplicated with this one"
        )
        cleaned_id = _cleaned_event_id(event_name, event_id)
        event_name, event_id = storable(event_name), cleaned_id
    connection = connections[using]  # looked up once: each lookup goes through a Local
    built: BuiltEvent | None = None
    if error is None:
        try:
            built = _in_savepoint(connection, build)
        except EventValidationError as exc:
            error = str(exc)
            warnings += exc.warnings
        except CapiError as exc:
            error = str(exc)
        except Exception as exc:
            error = (
                f"building the event raised {type(exc).__name__}, which django-capi does not "
                "expect (a hook returned a value of an unusual type?); the traceback is in the log"
            )
            logger.exception("building %s %s for %s raised", event_name, event_id, _label(source))
    fields = (
        _pending_fields(built, warnings, cleaned_id)
        if built is not None
        else _failed_fields(error or "", warnings)
    )

    _warn_outside_transaction(connection)
    key = (pixel_id, event_name, event_id, action_source)
    try:
        stored = _store(connection, *key, fields, source, row=row)
    except DatabaseError as exc:
        if fields["status"] == _FAILED:
            raise
        logger.exception("storing %s %s for %s failed", event_name, event_id, _label(source))
        refused = (
            f"the database refused the event ({type(exc).__name__}); the traceback is in the log"
        )
        fields = _failed_fields(refused, warnings)
        stored = _store(connection, *key, fields, source, row=row)
    # None: the row of ``fields`` was inserted now.
    status, last_error = (
        (fields["status"], fields["last_error"])
        if stored is None
        else (stored.status, stored.last_error)
    )
    if status == _PENDING:
        send_on_commit(outbox_committed, using)
    else:
        logger.warning(
            "event %s %s for %s not sent: %s", event_name, event_id, _label(source), last_error
        )
    return stored


def _resolve_pixel(conf: CapiSettings, requested: object) -> tuple[str, str | None]:
    """The pixel id of the row, and why the event cannot be sent to it, if it cannot.

    Only configured pixels (``PIXEL_ID`` and the keys of ``PIXELS``) are sent to: a pixel
    nobody configured has no token of its own, and the Pixel tag does not initialise it, so
    its event could never be deduplicated nor (most likely) delivered. The row fails with
    the fix; once the pixel is configured, saving again (or the same ``send_event``) heals it.
    """
    if requested is None:
        if conf.pixel_id is None:
            return "", f"{SETTING_NAME}['PIXEL_ID'] (or CAPI_PIXEL_ID) is not set"
        return conf.pixel_id, None
    if isinstance(requested, int) and not isinstance(requested, bool):
        requested = str(requested)
    if not is_pixel_id(requested):
        # Stored under the default pixel, where the Pixel tag fires it; the value itself is
        # not repeated: a token pasted in the wrong place must not reach the row.
        return conf.pixel_id or "", (
            f"pixel_id {pixel_id_fault(requested)}: a pixel id is its digits only, as a str "
            f"or an int (configured pixels: {', '.join(conf.pixels) or 'none'})"
        )
    assert isinstance(requested, str)  # noqa: S101 - for mypy
    if conf.pixel(requested) is None:
        configured = ", ".join(conf.pixels) or "none"
        return requested, (
            f"pixel {requested} is not configured (configured: {configured}): add it to "
            f"{SETTING_NAME}['PIXELS'] with its ACCESS_TOKEN, then save again or repeat the "
            "send_event to record this event anew"
        )
    return requested, None


def recorded_events(
    keys: Iterable[tuple[str, str]], *, using: str, pixel_id: str | None = None
) -> set[tuple[str, str]]:
    """Those of ``keys`` (``(event_name, event_id)``) that have an outbox row for
    ``pixel_id`` (by default the ``PIXEL_ID`` setting): one query."""
    keys = set(keys)
    pixel_id = pixel_id or default_pixel_id()
    return {
        key
        for key in OutboxEvent.objects.using(using)
        .filter(pixel_id=pixel_id, event_id__in={event_id for _, event_id in keys})
        .values_list("event_name", "event_id")
        if key in keys
    }


def record_built_events(events: Sequence[BuiltEvent], *, using: str, dry_run: bool = False) -> int:
    """Write the outbox rows of ``events`` (made by ``build_event``) that are not recorded
    yet, in one ``INSERT … ON CONFLICT DO NOTHING`` executed for all of them; return how
    many that is (written unless ``dry_run``). For importers (``manage.py capi_import``):
    an event recorded before, or twice in ``events``, is skipped.

    Each event's key must be valid and storable (``validation.check_event_name`` and
    ``check_event_id``, ``text.is_storable``). The count is exact unless another process
    records the same events at the same time; the unique key keeps the rows right anyway.
    """
    pixel_id = default_pixel_id()
    batch = {(event.payload["event_name"], event.payload["event_id"]): event for event in events}
    recorded = recorded_events(batch, using=using, pixel_id=pixel_id)
    new = [event for key, event in batch.items() if key not in recorded]
    if dry_run or not new:
        return len(new)
    rows = [
        {
            "pixel_id": pixel_id,
            "event_name": event.payload["event_name"],
            "event_id": event.payload["event_id"],
            "action_source": event.payload["action_source"],
            **_pending_fields(event, [], None),
        }
        for event in new
    ]
    _insert_many(connections[using], rows)
    send_on_commit(outbox_committed, using)
    return len(new)


def pixel_id_fault(value: object) -> str:
    """What is wrong with ``value`` as a pixel id, without repeating it."""
    if not isinstance(value, str):
        return f"is a {type(value).__name__}"
    if not value.strip():
        return "is empty" if not value else "is only spaces"
    if is_pixel_id(value.strip()):
        return "has spaces around its digits"
    return "holds characters other than digits"


def default_pixel_id() -> str:
    """The default pixel, as ``_resolve_pixel`` finds it; raises when none is configured."""
    pixel_id, error = _resolve_pixel(capi_settings(), None)
    if error is not None:
        raise CapiConfigurationError(error)
    return pixel_id


def _cleaned_event_id(event_name: str, event_id: str) -> str:
    """``event_id`` made storable, with a suffix derived from the original key: "a\\x00" and
    "a\\ud800" both become "a\\ufffd", and one event must not find the other's row."""
    original = f"{event_name}\n{event_id}".encode("utf-8", "surrogatepass")
    suffix = hashlib.sha256(original).hexdigest()[:12]
    return f"{storable(event_id)[: validation.MAX_EVENT_ID_LENGTH - 13]}-{suffix}"


def _pending_fields(
    built: BuiltEvent, warnings: list[str], cleaned_id: str | None
) -> dict[str, Any]:
    payload = built.payload
    if cleaned_id is not None:
        payload = {**payload, "event_id": cleaned_id}  # Meta deduplicates on the row's id
    return {
        "event_time": built.event_time,
        "payload": _Json.of(payload),
        "match_keys": match_key_bits(payload.get("user_data")),
        "warnings": _Json.of([*warnings, *built.warnings]),
        "status": _PENDING,
        "failure_reason": "",
        "last_error": "",
    }


def _failed_fields(error: str, warnings: list[str]) -> dict[str, Any]:
    return {
        "event_time": timezone.now(),
        "payload": _Json.of({}),
        "match_keys": 0,
        "warnings": _Json.of(warnings),
        "status": _FAILED,
        "failure_reason": _INVALID,
        "last_error": storable(error),
    }


# The row's choices as plain strings: the INSERT binds a str as it is, an enum member only
# after Django prepares it.
_PENDING = str(OutboxEvent.Status.PENDING.value)
_FAILED = str(OutboxEvent.Status.FAILED.value)
_INVALID = str(OutboxEvent.FailureReason.INVALID.value)


class _Json(NamedTuple):
    """A JSON column's value, every string of it storable, and its JSON text: encoded once,
    for the INSERT, as Django's ``JSONField`` would encode it."""

    value: Any
    text: str

    @classmethod
    def of(cls, value: Any) -> _Json:
        if not value and type(value) in (list, dict):
            return cls(type(value)(), "[]" if type(value) is list else "{}")  # no warnings
        text = json.dumps(value)
        # json escapes NUL as \u0000 and every surrogate as \udxxx (ensure_ascii): text
        # without either holds only storable strings, found without walking the value in
        # Python. A character beyond U+FFFF also shows as \udxxx; the walk finds it fine.
        if "\\u0000" in text or "\\ud" in text:
            value = storable_json(value)
            text = json.dumps(value)
        return cls(value, text)


def in_savepoint(using: str, func: Callable[[], T]) -> T:
    """``func()`` such that a failing statement it runs never poisons the caller's transaction.

    The savepoint is opened just before ``func``'s first statement on ``using``: a hook that
    only reads the instance, the common case, costs no round trip. When ``func`` raises, or a
    statement failed inside, its writes are rolled back. Code that runs here (an integrator's
    hook) may catch a database error itself and return normally: its result still stands."""
    return _in_savepoint(connections[using], func)


def _in_savepoint(connection: BaseDatabaseWrapper, func: Callable[[], T]) -> T:
    using = connection.alias
    savepoint = _LazySavepoint(using)
    # What connection.execute_wrapper() does, without a generator-based context manager.
    wrappers = connection.execute_wrappers
    wrappers.append(savepoint)
    try:
        result = func()
    except BaseException:
        wrappers.pop()
        savepoint.close(failed=True)
        raise
    wrappers.pop()
    try:
        savepoint.close(failed=False)
    except DatabaseError:
        logger.warning(
            "a statement failed on %r and the code that ran it caught the error; "
            "django-capi rolled back to its savepoint and went on",
            using,
        )
    return result


#: Set while a ``_LazySavepoint`` opens its savepoint: enclosing ones let the statement by.
_opening_savepoint: ContextVar[bool] = ContextVar("django_capi_opening_savepoint", default=False)


class _LazySavepoint:
    """An execute wrapper that opens a savepoint before the first statement it sees.

    Not ``transaction.atomic()``: an ``atomic(savepoint=False)`` the guarded code entered
    earlier (Django's own ``bulk_create``, a multi-table save) would pop this savepoint's id
    from Django's stack as its own. The public savepoint functions keep it off that stack."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.sid: str | None = None
        self.opened = False

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        if not self.opened and not _opening_savepoint.get():
            token = _opening_savepoint.set(True)
            try:
                # None outside a transaction, where a failed statement poisons nothing.
                self.sid = transaction.savepoint(using=self.using)
            finally:
                _opening_savepoint.reset(token)
            self.opened = True
        return execute(sql, params, many, context)

    def close(self, *, failed: bool) -> None:
        """Release the savepoint, or roll back to it when ``failed`` or when a statement
        failed inside (then raise ``DatabaseError`` from the refused release)."""
        if self.sid is None:
            return
        sid, self.sid = self.sid, None
        if not failed and not transaction.get_rollback(using=self.using):
            try:
                transaction.savepoint_commit(sid, using=self.using)
                return
            except DatabaseError:
                # PostgreSQL refuses the release after a failed statement.
                self._roll_back(sid)
                raise
        self._roll_back(sid)

    def _roll_back(self, sid: str) -> None:
        # As atomic() does: the flag a failure inside set is cleared once its work is undone.
        transaction.set_rollback(False, using=self.using)
        try:
            transaction.savepoint_rollback(sid, using=self.using)
        except DatabaseError:
            transaction.set_rollback(True, using=self.using)
            raise


def send_event(
    event_name: str,
    *,
    user_data: Mapping[str, object] | None = None,
    custom_data: Mapping[str, object] | None = None,
    event_id: str | int | None = None,
    event_time: datetime | float | None = None,
    action_source: str = ActionSource.WEBSITE,
    event_source_url: str | None = None,
    request: HttpRequest | None = None,
    limited_data_use: Mapping[str, int] | None = None,
    using: str | None = None,
    app_data: Mapping[str, object] | None = None,
    messaging_channel: str | None = None,
    original_event_data: Mapping[str, object] | None = None,
    pixel_id: str | int | None = None,
) -> OutboxEvent | None:
    """Record an event that is not a model save (AddToCart, a CRM status change, …).

    The row is written in the current transaction, so it exists exactly when the caller's
    work commits. Invalid input never raises: the returned row is ``failed`` and its
    ``last_error`` says what to fix. Returns None, storing nothing, when the visitor of
    ``request`` (or of the request being handled) refused consent.

    ``event_id`` may be any string of up to 100 characters, or an integer such as an order
    number. ``limited_data_use`` overrides the ``LIMITED_DATA_USE`` setting for this event.
    ``using`` is the database alias of the row; by default the alias of the transaction the
    call runs in when exactly one is open, else the router's choice for ``OutboxEvent``.

    Beyond the website: ``app_data`` (Meta's dict; ``extinfo`` may be a ``django_capi.ExtInfo``)
    for ``action_source="app"``, ``messaging_channel`` (``"whatsapp"``, ``"messenger"``,
    ``"instagram"``) for ``"business_messaging"``, and ``original_event_data`` where an event
    refers to an earlier one.
    ``pixel_id`` sends the event to another configured pixel than ``PIXEL_ID`` (``PIXELS``);
    a pixel not configured fails the row, saying so.
    """
    if event_id is None:
        event_id = str(uuid.uuid4())
    elif isinstance(event_id, int | uuid.UUID) and not isinstance(event_id, bool):
        event_id = str(event_id)  # an order number is a fine event id
    key_problems = validation.check_event_name(event_name) + validation.check_event_id(event_id)
    if key_problems:
        # An unusable key cannot deduplicate anything; the failure gets a key of its own.
        usable_name = isinstance(event_name, str) and event_name.strip()
        event_name = event_name[: validation.MAX_EVENT_NAME_LENGTH] if usable_name else "(invalid)"
        event_id = str(uuid.uuid4())
    assert isinstance(event_id, str)  # noqa: S101 - for mypy
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
        app_data=app_data,
        messaging_channel=messaging_channel,
        original_event_data=original_event_data,
    )
    return record_event(
        event_name=event_name,
        event_id=event_id,
        action_source=action_source,
        build=lambda: build_event(draft, default_phone_region=capi_settings().default_phone_region),
        using=using or _transaction_alias() or router.db_for_write(OutboxEvent),
        error="; ".join(key_problems) or None,
        pixel_id=pixel_id,
    )


def _transaction_alias() -> str | None:
    """The alias of the one transaction open in this thread on a database with an outbox;
    None when there is none or more than one."""
    aliases = [
        connection.alias
        for connection in connections.all(initialized_only=True)
        if connection.in_atomic_block and router.allow_migrate_model(connection.alias, OutboxEvent)
    ]
    return aliases[0] if len(aliases) == 1 else None


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


def _store(
    connection: BaseDatabaseWrapper,
    pixel_id: str,
    event_name: str,
    event_id: str,
    action_source: str,
    fields: dict[str, Any],
    source: models.Model | None,
    *,
    row: bool = True,
) -> OutboxEvent | None:
    """The row of this event: the one inserted now, else the one already there (given
    ``fields`` if it failed while being built). With ``row=False``, None when the row of
    ``fields`` was inserted now."""
    using = connection.alias
    values = {
        "pixel_id": pixel_id,
        "event_name": event_name,
        "event_id": event_id,
        # Invalid ones fail the row, which still has to be stored.
        "action_source": storable(action_source)[:32] if isinstance(action_source, str) else "",
        **fields,
    }
    if source is not None and source.pk is not None:
        values["source_type_id"] = _content_type_id(using, source)
        values["source_id"] = storable(str(source.pk))[:64]
    inserted: OutboxEvent | bool | None  # None and False: the key was taken
    if using in _proven_outboxes:
        inserted = (
            _insert_unless_recorded(connection, values) if row else _insert_new(connection, values)
        )
    else:
        # The first row proves the table and its columns are there, in a savepoint: an
        # unmigrated outbox must not abort the shop's transaction.
        with transaction.atomic(using=using):
            inserted = (
                _insert_unless_recorded(connection, values)
                if row
                else _insert_new(connection, values)
            )
        _proven_outboxes.add(using)
    if isinstance(inserted, OutboxEvent):
        return inserted
    if inserted is True:
        return None
    # The rare path (an earlier save or a racing one recorded the event) affords a savepoint.
    with transaction.atomic(using=using):
        existing = _find(using, pixel_id, event_name, event_id)
        if existing is None:
            # SQLite's INSERT OR IGNORE and MariaDB's INSERT IGNORE skip a row that breaks
            # any constraint, not only the key.
            raise IntegrityError("the database ignored the outbox row without storing it")
        if not _failed_while_built(existing):
            return existing
        if fields["status"] == _FAILED:
            fields = {**fields, "event_time": existing.event_time}
        for name, value in fields.items():
            setattr(existing, name, value.value if isinstance(value, _Json) else value)
        existing.save(using=using, update_fields=list(fields))
        return existing


#: ``ContentType.objects.db_manager(alias)`` per alias: a manager is copied on each call,
#: and the copies share the model cache that ``ContentType.objects.clear_cache()`` clears.
_content_type_managers: dict[str, Any] = {}


def _content_type_id(using: str, source: models.Model) -> int:
    manager = _content_type_managers.get(using)
    if manager is None:
        manager = _content_type_managers[using] = ContentType.objects.db_manager(using)
    # get_for_model() caches per process: no query after the first event of a model.
    content_type: ContentType = manager.get_for_model(source)
    return content_type.pk


class _Insert(NamedTuple):
    """The outbox INSERT on one database alias, compiled once per process."""

    #: Named parameters (``%(attname)s``): on SQLite, Django converts positional ones with a
    #: regular expression over the whole statement, which cost more than the rest together.
    sql: str
    #: For each attname the row sets: its field and the type of value that becomes the
    #: parameter without the field's ``get_db_prep_save`` (whose hasattr() and lookups cost
    #: more than the statement's own binding): ``str`` or ``int`` as it is, a ``_Json`` by its
    #: text (what ``JSONField`` binds on every backend), an aware ``datetime`` by the backend's
    #: adaptation. Any other value is prepared by its field.
    binds: tuple[tuple[str, Field[Any, Any], type | None], ...]
    #: The parameters of the columns the row leaves to their field's default.
    constant: dict[str, Any]
    #: Where each attname sits among the model's concrete fields (for the row read back).
    positions: dict[str, int]
    #: A new row's values before the event's (defaults; those that are made per row, such as
    #: a dict, are made again by ``fresh``).
    defaults: tuple[Any, ...]
    fresh: tuple[tuple[int, Field[Any, Any]], ...]
    #: What the database returns (primary key first, then the ``db_default`` columns where
    #: it can return them): position in the row, column, converters. Empty without
    #: ``returns``.
    returned: tuple[tuple[int, Any, tuple[Callable[..., Any], ...]], ...]


@lru_cache(maxsize=64)
def _insert_statement(using: str, names: tuple[str, ...], *, returns: bool = True) -> _Insert:
    """The INSERT of a row whose values for ``names`` are known; the other columns take their
    default: the database's (``db_default``: its clock) or the field's. A column whose
    field default is NULL is left out, so the statement is as short as the row allows.
    ``returns``: with the primary key and the database defaults where the database can
    return them; without, the statement returns nothing (``executemany`` takes no statement
    returning rows, and a model save discards the row)."""
    connection = connections[using]
    ops = connection.ops
    meta = OutboxEvent._meta
    fields = list(meta.concrete_fields)
    by_database = [field for field in fields if field.db_default is not NOT_PROVIDED]
    inserted = [
        field
        for field in fields
        if field.attname in names
        or not (field.primary_key or field in by_database or field.get_default() is None)
    ]
    sql = "{insert} {table} ({columns}) VALUES ({values}) {on_conflict}".format(
        insert=ops.insert_statement(on_conflict=OnConflict.IGNORE),
        table=ops.quote_name(meta.db_table),
        columns=", ".join(ops.quote_name(str(field.column)) for field in inserted),
        values=", ".join(f"%({field.attname})s" for field in inserted),
        on_conflict=ops.on_conflict_suffix_sql(inserted, OnConflict.IGNORE, (), ()),
    )
    returning = [meta.pk] if returns else []
    if returns and connection.features.can_return_columns_from_insert:
        returning += by_database
        # Django 6.0 renamed return_insert_columns (5.2) to returning_columns; neither is in
        # django-stubs, and every backend that can return columns has one of them.
        returning_sql = getattr(ops, "returning_columns", None)
        if returning_sql is None:
            returning_sql = ops.return_insert_columns  # type: ignore[attr-defined]
        sql = f"{sql} {returning_sql(returning)[0]}"  # no parameters on any backend
    defaults = [None if field in returning else field.get_default() for field in fields]
    columns = [field.get_col(meta.db_table) for field in returning]
    return _Insert(
        sql=sql,
        binds=tuple(
            (field.attname, field, _taken(field)) for field in inserted if field.attname in names
        ),
        constant={
            field.attname: field.get_db_prep_save(defaults[fields.index(field)], connection)
            for field in inserted
            if field.attname not in names
        },
        positions={field.attname: fields.index(field) for field in inserted},
        defaults=tuple(defaults),
        fresh=tuple(
            (index, field)
            for index, field in enumerate(fields)
            if field in inserted
            and field.attname not in names
            and field.has_default()
            and callable(field.default)
        ),
        returned=tuple(
            (
                fields.index(field),
                column,
                (*ops.get_db_converters(column), *field.get_db_converters(connection)),
            )
            for field, column in zip(returning, columns, strict=True)
        ),
    )


def _taken(field: Field[Any, Any]) -> type | None:
    """The type of value ``field`` binds without preparation (``_Insert.binds``)."""
    internal = field.get_internal_type()
    if internal in ("CharField", "TextField"):
        return str
    if internal == "DateTimeField":
        return datetime
    if internal == "JSONField":
        return _Json
    target = getattr(field, "target_field", field)
    if target.get_internal_type() in (
        "AutoField",
        "BigAutoField",
        "IntegerField",
        "PositiveSmallIntegerField",
    ):
        return int
    return None


#: Aliases whose outbox took a row in this process.
_proven_outboxes: set[str] = set()


def _insert_unless_recorded(
    connection: BaseDatabaseWrapper, values: dict[str, Any]
) -> OutboxEvent | None:
    """Insert the row of ``values`` (by attname; ``_Json`` for the JSON columns) in one
    statement unless its key is taken: ``INSERT … ON CONFLICT DO NOTHING`` (``INSERT OR
    IGNORE`` on SQLite, ``INSERT IGNORE`` on MariaDB: Django's own mapping, as
    ``bulk_create(ignore_conflicts=True)``). Returns the new row, with its primary key and,
    where the database returns them, its database defaults; None when the key was taken.

    No model instance is built for the INSERT, and the ORM compiles nothing per row (the two
    were most of what a save cost): the statement is compiled once per alias, and each value
    is adapted as its field adapts it."""
    using = connection.alias
    insert = _insert_statement(using, tuple(values))
    params = _parameters(connection, insert, values)
    with connection.cursor() as cursor:
        cursor.execute(insert.sql, params)
        if len(insert.returned) > 1:
            # The driver's cursor: Django's wraps fetchone() anew on each access.
            with connection.wrap_database_errors:
                returned_values = cursor.cursor.fetchone()
            if returned_values is None:
                return None
        elif cursor.rowcount != 1:
            return None
        else:
            meta = OutboxEvent._meta
            pk = connection.ops.last_insert_id(cursor, meta.db_table, str(meta.pk.column))
            returned_values = (pk,)
    row = list(insert.defaults)
    for index, made in insert.fresh:
        row[index] = made.get_default()  # a dict or list of its own, as Model() makes it
    for name, value in values.items():
        row[insert.positions[name]] = value.value if type(value) is _Json else value
    for (index, column, converters), value in zip(insert.returned, returned_values, strict=True):
        for converter in converters:
            value = converter(value, column, connection)
        row[index] = value
    # The instance of a row read back, made as unpickling makes one: its values, and a state
    # saying where it lives (Model.__init__ would cost a fifth of the whole capture).
    instance = OutboxEvent.__new__(OutboxEvent)
    instance.__dict__.update(zip(_ATTNAMES, row, strict=True))
    instance._state = ModelState()
    instance._state.adding = False
    instance._state.db = using
    return instance


def _insert_new(connection: BaseDatabaseWrapper, values: dict[str, Any]) -> bool:
    """``_insert_unless_recorded`` returning nothing: whether the row was inserted (the
    statement's row count), with no row read back."""
    insert = _insert_statement(connection.alias, tuple(values), returns=False)
    with connection.cursor() as cursor:
        cursor.execute(insert.sql, _parameters(connection, insert, values))
        return bool(cursor.rowcount == 1)


_ATTNAMES = [field.attname for field in OutboxEvent._meta.concrete_fields]


def _parameters(
    connection: BaseDatabaseWrapper, insert: _Insert, values: dict[str, Any]
) -> dict[str, Any]:
    """The parameters of ``insert`` for the row of ``values``."""
    params = insert.constant.copy()
    for name, column, taken in insert.binds:
        value: Any = values[name]
        if type(value) is not taken:
            value = column.get_db_prep_save(
                value.value if type(value) is _Json else value, connection
            )
        elif isinstance(value, _Json):
            value = value.text
        elif isinstance(value, datetime):
            value = (
                connection.ops.adapt_datetimefield_value(value)
                if value.utcoffset() is not None
                else column.get_db_prep_save(value, connection)  # naive: Django warns
            )
        params[name] = value
    return params


def _insert_many(connection: BaseDatabaseWrapper, rows: Sequence[dict[str, Any]]) -> None:
    """``_insert_new``'s statement, executed for every row at once (``executemany``: one
    multi-row INSERT on MariaDB, a pipeline on PostgreSQL); rows whose key is taken are
    skipped. Every row sets the same columns (``values`` of ``_insert_unless_recorded``). Not
    ``bulk_create``: compiling its statement costs more than building the events."""
    if not rows:
        return
    insert = _insert_statement(connection.alias, tuple(rows[0]), returns=False)
    params = [_parameters(connection, insert, values) for values in rows]
    with connection.cursor() as cursor:
        cursor.executemany(insert.sql, params)


_warned_autocommit: set[str] = set()


def _warn_outside_transaction(connection: BaseDatabaseWrapper) -> None:
    using = connection.alias
    if not connection.in_atomic_block and using not in _warned_autocommit:
        _warned_autocommit.add(using)
        logger.warning(
            "django-capi recorded an event outside a transaction on %r: the business row and "
            "its event are not atomic. Use ATOMIC_REQUESTS or transaction.atomic().",
            using,
        )


def _label(source: models.Model | None) -> str:
    return f"{source._meta.label} pk={source.pk}" if source is not None else "send_event"
