"""Declaring which model saves are conversions, and turning those saves into outbox rows.

Each installed app's ``capi`` module registers ``ModelEvent`` subclasses; one ``post_save``
receiver then records an event in the same transaction and database as the save. The
integrator's hooks are called inside a guard: whatever they do, ``save()`` succeeds.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from django.db import models, router
from django.db.models.signals import post_save

from . import context, validation
from .conf import capi_settings, is_pixel_id
from .constants import ActionSource
from .events import (
    BuiltEvent,
    EventDraft,
    build_event,
    in_savepoint,
    pixel_id_fault,
    record_event,
)
from .exceptions import CapiConfigurationError, CapiError, EventValidationError, HookError
from .installation import event_id_namespace

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=models.Model)
E = TypeVar("E", bound="ModelEvent[Any]")


class ModelEvent(Generic[M]):
    """One kind of conversion recorded when a model is saved.

    Subclass it, set ``event_name`` and override the hooks you need; register it with
    ``@register(Model)``. Hooks receive the saved instance and run inside its transaction.
    """

    #: Meta's event name: a standard one (``Purchase``, ``Lead``) or your own (≤ 50 chars).
    event_name: ClassVar[str]
    #: Where the conversion happened; website events need a user agent and a page URL.
    action_source: ClassVar[str] = ActionSource.WEBSITE
    #: Region for phone numbers written without a country code (else the customer's country,
    #: else ``DEFAULT_PHONE_REGION``).
    phone_region: ClassVar[str | None] = None

    def should_send(self, instance: M, created: bool) -> bool:
        """Whether this save is the conversion. By default: the row was just created."""
        return created

    def user_data(self, instance: M) -> Mapping[str, object]:
        """Raw customer data (``em``, ``ph``, ``fn``, …): normalized and hashed for you."""
        return {}

    def custom_data(self, instance: M) -> Mapping[str, object] | None:
        """Meta's ``custom_data``: ``value`` and ``currency`` for a Purchase, contents, …"""
        return None

    def event_time(self, instance: M) -> datetime | float | None:
        """When the conversion happened; by default, now."""
        return None

    def event_source_url(self, instance: M) -> str | None:
        """The page the conversion happened on; by default, the current request's URL."""
        return None

    def request_context(self, instance: M) -> Mapping[str, object]:
        """The browser's ``client_ip_address``, ``client_user_agent``, ``fbc``, ``fbp`` and
        pages. By default, those of the request being handled (``CapiMiddleware``), if any;
        override it to return ``django_capi.browser_context(request)`` stored on the order
        at checkout. A context whose ``consent`` is False stores no event.

        Only website events take the current request's by default: a system or phone event
        recorded while staff work in the admin must not carry the staff's browser."""
        if self.action_source != ActionSource.WEBSITE:
            return {}
        return context.current_context()

    def limited_data_use(self, instance: M) -> Mapping[str, int] | None:
        """Limited Data Use for this event (``{"country": 1, "state": 1000}``); by default
        the ``LIMITED_DATA_USE`` setting."""
        return capi_settings().limited_data_use

    def app_data(self, instance: M) -> Mapping[str, object] | None:
        """Meta's ``app_data``, required for ``action_source = "app"``:
        ``advertiser_tracking_enabled``, ``application_tracking_enabled`` and ``extinfo``
        (Meta's 16 strings, or a ``django_capi.ExtInfo`` that names them)."""
        return None

    def messaging_channel(self, instance: M) -> str | None:
        """``"whatsapp"``, ``"messenger"`` or ``"instagram"``: required for
        ``action_source = "business_messaging"``. A class attribute of that name (a string)
        does as well, as ``action_source`` does."""
        return None

    def original_event_data(self, instance: M) -> Mapping[str, object] | None:
        """The earlier event this one refers to (``event_name``, ``event_time``,
        ``order_id``, ``event_id``), where Meta asks for it."""
        return None

    def pixel_id(self, instance: M) -> str | None:
        """The pixel this event goes to: one of ``PIXELS`` (a str, or an int taken as its
        digits); by default (None) ``PIXEL_ID``. A class attribute of that name (a pixel id)
        does as well, as ``action_source`` does."""
        return None

    def event_id(self, instance: M) -> str:
        """The id the Pixel shares for deduplication; stable for (model, pk, event name)."""
        return default_event_id(instance, self.event_name, model=self.model)

    #: The model this instance was registered on (set by ``register``).
    model: type[models.Model]


_registry: dict[type[models.Model], list[ModelEvent[Any]]] = {}


def register(*model_classes: type[models.Model]) -> Callable[[type[E]], type[E]]:
    """Class decorator: record ``event_class`` whenever one of ``model_classes`` is saved."""

    def decorator(event_class: type[E]) -> type[E]:
        name = getattr(event_class, "event_name", None)
        problems = validation.check_event_name(name)
        problems += validation.check_action_source(event_class.action_source)
        if problems:
            raise CapiConfigurationError(f"{event_class.__qualname__}: {'; '.join(problems)}")
        for model in model_classes:
            events = _registry.setdefault(model, [])
            if any(type(existing) is event_class for existing in events):
                continue  # imported twice: the same declaration
            if any(existing.event_name == name for existing in events):
                # Both would claim the same event ids; one of them would silently never send.
                raise CapiConfigurationError(
                    f"{model._meta.label} already has a {name!r} event registered"
                )
            event = event_class()
            event.model = model
            events.append(event)
        return event_class

    return decorator


def registered_events(model: type[models.Model]) -> list[ModelEvent[Any]]:
    """The ``ModelEvent`` instances that apply to saves of ``model``: those registered on it
    or on a model it inherits from (proxies and multi-table children)."""
    return [event for klass in model.__mro__ for event in _registry.get(klass, ())]


def default_event_id(
    instance: models.Model, event_name: str, *, model: type[models.Model] | None = None
) -> str:
    """A UUIDv5 of (model label, pk, event name) under the namespace of the instance's
    database (``installation.py``): the same order number in two installations gives two ids.
    ``model`` is the registered model, so a proxy or a multi-table child gets the same id as
    the model the event was declared on."""
    if instance.pk is None:
        raise ValueError("an event id needs a saved instance (its pk is None)")
    model = model or type(instance)
    label = (model._meta.concrete_model or model)._meta.label_lower
    alias = instance._state.db or router.db_for_write(type(instance), instance=instance)
    return _uuid5_text(event_id_namespace(alias), f"{label}:{instance.pk}:{event_name}")


def _uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))``, written from the SHA-1 digest's hex without a
    ``UUID`` (whose constructor cost most of an event id): RFC 4122's version 5 in the
    13th digit, its variant in the two high bits of the 17th."""
    digest = hashlib.sha1(namespace.bytes + name.encode(), usedforsecurity=False).hexdigest()
    variant = "89ab"[int(digest[16], 16) & 3]
    return f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-{variant}{digest[17:20]}-{digest[20:32]}"


def event_id_for(instance: models.Model, event_name: str) -> str:
    """The ``event_id`` of ``instance``'s ``event_name`` event, for the Pixel to reuse.

    It is known before the outbox row exists, so a page may render the Pixel first.
    """
    for model_event in registered_events(type(instance)):
        if model_event.event_name == event_name:
            try:
                return _event_id(model_event, instance)
            except CapiError:
                # The row was recorded under the default id too (see _capture).
                return default_event_id(instance, event_name, model=model_event.model)
    return default_event_id(instance, event_name)


def pixel_id_for(instance: models.Model, event_name: str) -> str | None:
    """The pixel ``instance``'s ``event_name`` event goes to (its ``pixel_id`` hook), for the
    Pixel to fire it there; None for the default pixel, or when the hook fails (the row then
    goes there too, failed: see ``_capture``)."""
    for model_event in registered_events(type(instance)):
        if model_event.event_name == event_name:
            try:
                value = _pixel_of(model_event, instance)
            except HookError:
                return None  # logged where it was raised
            return _hook_pixel(model_event, value)[0]
    return None


def connect_signals() -> None:
    post_save.connect(_on_post_save, dispatch_uid="django_capi.registry")


def _on_post_save(
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    raw: bool,
    using: str,
    **kwargs: object,
) -> None:
    if raw:  # loaddata replays history; it is not a conversion
        return
    for model_event in registered_events(sender):
        try:
            _capture(model_event, instance, created=created, using=using)
        except Exception:
            # Last line of defence: not even a database error here may fail the save.
            logger.exception(
                "django-capi could not record %s for %s pk=%s",
                model_event.event_name,
                instance._meta.label,
                instance.pk,
            )


def _capture(
    model_event: ModelEvent[Any], instance: models.Model, *, created: bool, using: str
) -> None:
    def decide() -> tuple[str, Mapping[str, object], object] | None:
        if not _call(model_event, "should_send", instance, created, as_bool=True):
            return None
        event_id = _event_id(model_event, instance)
        browser = _call(model_event, "request_context", instance) or {}
        return event_id, browser, _pixel_of(model_event, instance)

    error: str | None = None
    try:
        # A savepoint: a hook whose query fails must not abort the shop's transaction.
        decided = in_savepoint(using, decide)
    except CapiError as exc:
        error = str(exc)
        event_id = default_event_id(instance, model_event.event_name, model=model_event.model)
        # A pixel the class declares is known without a hook: the failed row stays on the
        # pixel the fixed hook will save to, so it heals there.
        decided = event_id, {}, _declared_pixel(model_event)
    if decided is None:
        return
    event_id, browser, hooked = decided
    pixel_id, pixel_error = _hook_pixel(model_event, hooked)
    error = error or pixel_error
    if isinstance(browser, Mapping) and browser.get(context.CONSENT_KEY) is False:
        return  # the shopper refused tracking: Meta hears nothing of this order
    record_event(
        event_name=model_event.event_name,
        event_id=event_id,
        action_source=model_event.action_source,
        build=lambda: _build(model_event, instance, event_id, browser),
        using=using,
        source=instance,
        error=error,
        pixel_id=pixel_id,
        row=False,  # the save has no use for the row: none is read back
    )


def _pixel_of(model_event: ModelEvent[Any], instance: models.Model) -> object:
    """The ``pixel_id`` hook's value, or the class attribute that replaces the hook."""
    declared = _declared_pixel(model_event)
    return declared if declared is not None else _call(model_event, "pixel_id", instance)


def _declared_pixel(model_event: ModelEvent[Any]) -> object:
    """The pixel given as a class attribute instead of a hook, or None."""
    declared = model_event.pixel_id
    if isinstance(declared, str | int) and not isinstance(declared, bool):
        return declared
    return None


def _hook_pixel(model_event: ModelEvent[Any], value: object) -> tuple[str | None, str | None]:
    """The ``pixel_id`` hook's pixel (an int is taken as its digits; None is the default
    pixel), and why the row fails if the value is no pixel id: that row, like the Pixel
    (``pixel_id_for``), then goes to the default pixel, never to an empty one."""
    fault = None
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) < 10**32:
            value = str(value)
        else:  # no pixel id is that long, and str() of a huge int raises
            fault = "is an int of more than 32 digits"
    if fault is None and (value is None or is_pixel_id(value)):
        assert value is None or isinstance(value, str)  # noqa: S101 - for mypy
        return value, None
    return None, (
        f"{type(model_event).__name__}.pixel_id() returned a value that "
        f"{fault or pixel_id_fault(value)}: return a configured pixel id (digits, as a str or "
        "an int), or None for the default pixel"
    )


def _event_id(model_event: ModelEvent[Any], instance: models.Model) -> str:
    value = _call(model_event, "event_id", instance)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # an order number is a fine event id
    if validation.check_event_id(value):
        raise EventValidationError(
            f"{type(model_event).__name__}.event_id() must return a non-empty string of at "
            f"most {validation.MAX_EVENT_ID_LENGTH} characters, not {type(value).__name__}"
        )
    return str(value)


def _build(
    model_event: ModelEvent[Any],
    instance: models.Model,
    event_id: str,
    browser: Mapping[str, object],
) -> BuiltEvent:
    draft = EventDraft(
        event_name=model_event.event_name,
        event_id=event_id,
        event_time=_call(model_event, "event_time", instance),
        action_source=model_event.action_source,
        user_data=_call(model_event, "user_data", instance) or {},
        custom_data=_call(model_event, "custom_data", instance),
        event_source_url=_call(model_event, "event_source_url", instance),
        browser=browser,
        phone_region=model_event.phone_region,
        limited_data_use=_call(model_event, "limited_data_use", instance),
        app_data=_call(model_event, "app_data", instance),
        messaging_channel=(
            model_event.messaging_channel
            if isinstance(model_event.messaging_channel, str)
            else _call(model_event, "messaging_channel", instance)
        ),
        original_event_data=_call(model_event, "original_event_data", instance),
    )
    return build_event(draft, default_phone_region=capi_settings().default_phone_region)


def _call(
    model_event: ModelEvent[Any],
    hook: str,
    instance: models.Model,
    *args: Any,
    as_bool: bool = False,
) -> Any:
    try:
        value = getattr(model_event, hook)(instance, *args)
        # Inside the guard: the truth of some values raises (a NumPy array, a QuerySet whose
        # query fails).
        return bool(value) if as_bool else value
    except Exception as exc:
        where = f"{type(model_event).__name__}.{hook}()"
        logger.exception("%s raised for %s pk=%s", where, instance._meta.label, instance.pk)
        raise HookError(where, exc) from exc


# Reading the registry (the admin's filters, the system checks) and isolating it in tests.


def registered_models() -> list[type[models.Model]]:
    """The models ``register`` was called with, in registration order."""
    return list(_registry)


def all_events() -> list[ModelEvent[Any]]:
    """Every registered ``ModelEvent`` instance, one per (model, event class)."""
    return [event for events in _registry.values() for event in events]


@contextmanager
def isolated() -> Iterator[None]:
    """Registrations made inside the block are forgotten when it ends (for tests)."""
    saved = {model: list(events) for model, events in _registry.items()}
    try:
        yield
    finally:
        _registry.clear()
        _registry.update(saved)
