"""django-capi: reliable Meta Conversions API tracking for Django shops.

The public API (everything else may change between releases):

- ``ModelEvent`` and ``register``: declare which model saves are conversions, in a ``capi``
  module of your app (its ``pixel_id`` hook picks one of ``DJANGO_CAPI["PIXELS"]``).
- ``send_event``: record an event that is not a model save (``pixel_id=`` likewise).
- ``event_id_for``: the ``event_id`` the Pixel must reuse for a model's event.
- ``browser_context``: a request's IP, user agent, fbc and fbp, to store on an order for an
  event recorded later (``CapiMiddleware`` collects them; ``{% load capi %}`` renders the
  Pixel).
- ``normalize_user_data``: Meta's normalization and hashing of customer data.
- ``ExtInfo``: the 16 ``extinfo`` values of an app event's ``app_data``, by name
  (``send_event(..., action_source="app", app_data={...})``, ``ModelEvent.app_data``).
- ``OutboxEvent``: the outbox row, with its delivery status.

Names are imported lazily so that ``import django_capi`` works before Django's app registry
is ready (``INSTALLED_APPS`` imports the package first).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "ModelEvent": "registry",
    "register": "registry",
    "event_id_for": "registry",
    "send_event": "events",
    "browser_context": "browser",
    "normalize_user_data": "events",
    "ExtInfo": "sources",
    "OutboxEvent": "models",
}

__all__ = [
    "ExtInfo",
    "ModelEvent",
    "OutboxEvent",
    "__version__",
    "browser_context",
    "event_id_for",
    "normalize_user_data",
    "register",
    "send_event",
]

if TYPE_CHECKING:
    from .browser import browser_context as browser_context
    from .events import normalize_user_data as normalize_user_data
    from .events import send_event as send_event
    from .models import OutboxEvent as OutboxEvent
    from .registry import ModelEvent as ModelEvent
    from .registry import event_id_for as event_id_for
    from .registry import register as register
    from .sources import ExtInfo as ExtInfo


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
