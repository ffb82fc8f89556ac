"""``{% load capi %}``: the Meta Pixel, sharing each event's ``event_id`` with the outbox.

``{% capi_pixel %}`` goes in ``<head>``; ``{% capi_event order "Purchase" %}`` or
``{% capi_event outbox_event %}`` on the page where the conversion shows. Rendering never
creates a conversion: the tag reads the id the outbox row has (or will have), so reloading
a thank-you page cannot count a purchase twice on the server. Every value is encoded for a
``<script>`` element.

A tag never breaks a page: what it cannot render (an unsaved order, an event nobody
declared) renders nothing and logs a warning saying why. Only a model without an event
name, a mistake in the template itself, raises ``TemplateSyntaxError``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from django import template
from django.db import models
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from ..browser import has_consent
from ..conf import capi_settings
from ..constants import STANDARD_EVENTS
from ..events import send_event
from ..models import OutboxEvent
from ..normalize import normalize_user_data
from ..registry import ModelEvent, event_id_for, pixel_id_for, registered_events
from ..text import is_storable
from ..validation import check_event_id, clean_custom_data

if TYPE_CHECKING:  # a project may leave django.contrib.auth out; only the type needs it
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

register = template.Library()
logger = logging.getLogger(__name__)

FBEVENTS_URL = "https://connect.facebook.net/en_US/fbevents.js"
#: Where a page keeps the pixels its tags initialised.
INITIALISED = "_capi_initialised_pixels"

# Characters that could end a <script> element or a JS string early, whatever the value.
_SCRIPT_ESCAPES = {ord("<"): "\\u003C", ord(">"): "\\u003E", ord("&"): "\\u0026"}


def js(value: object) -> str:
    """``value`` as a JavaScript literal that is safe anywhere inside ``<script>``: no
    ``</script>``, ``<!--`` or U+2028/U+2029 can break out of it."""
    # ensure_ascii escapes U+2028 and U+2029, which end a line in older JavaScript.
    return json.dumps(value, ensure_ascii=True, sort_keys=True).translate(_SCRIPT_ESCAPES)


@register.simple_tag(takes_context=True)
def capi_pixel(context: template.Context, *pixels: object) -> SafeString:
    """Meta's Pixel base code: ``init`` (with advanced matching for a signed-in user), a
    ``PageView`` with its own ``eventID`` and the ``<noscript>`` image.

    The default pixel is always initialised; ``pixels`` adds others: pixel ids, outbox rows
    or model instances (the pixels of their registered events), or lists of them. With
    several pixels each gets its own ``PageView`` (``trackSingle``), so that a pixel's events
    never reach another."""
    request: HttpRequest | None = context.get("request")
    conf = capi_settings()
    if not conf.pixel_id or not has_consent(request):
        return SafeString("")
    pixel_ids = _page_pixels(conf.pixel_id, pixels)
    initialised = _initialised(context, request)
    initialised.update(pixel_ids)
    event_id = str(uuid.uuid4())
    if conf.server_page_view and request is not None:
        for pixel_id in pixel_ids:
            try:
                send_event("PageView", event_id=event_id, request=request, pixel_id=pixel_id)
            except Exception:
                # The browser's PageView still counts; only its server twin is missing.
                logger.exception("capi_pixel: recording the server PageView raised")
    calls = []
    if conf.limited_data_use is not None:
        ldu = conf.limited_data_use
        # Must come before init for the Pixel's own events to be Limited Data Use too.
        calls.append(
            f"fbq({js('dataProcessingOptions')}, {js(['LDU'])}, "
            f"{js(ldu['country'])}, {js(ldu['state'])});"
        )
    matching = _advanced_matching(request)
    calls += [f"fbq({js('init')}, {js(pixel_id)}, {js(matching)});" for pixel_id in pixel_ids]
    options = js({"eventID": event_id})
    if len(conf.pixels) > 1 or len(pixel_ids) > 1:
        calls += [
            f"fbq({js('trackSingle')}, {js(pixel_id)}, {js('PageView')}, {{}}, {options});"
            for pixel_id in pixel_ids
        ]
    else:
        calls.append(f"fbq({js('track')}, {js('PageView')}, {{}}, {options});")
    script = (
        "!function(f,b,e,v,n,t,s){if(f.fbq)return;n=f.fbq=function(){n.callMethod?"
        "n.callMethod.apply(n,arguments):n.queue.push(arguments)};if(!f._fbq)f._fbq=n;"
        "n.push=n;n.loaded=!0;n.version='2.0';n.queue=[];t=b.createElement(e);t.async=!0;"
        "t.src=v;s=b.getElementsByTagName(e)[0];s.parentNode.insertBefore(t,s)}"
        f"(window,document,'script',{js(FBEVENTS_URL)});" + "".join(calls)
    )
    images = [
        format_html(
            '<img height="1" width="1" style="display:none" alt="" '
            'src="https://www.facebook.com/tr?id={}&amp;ev=PageView&amp;eid={}&amp;noscript=1">',
            pixel_id,
            event_id,
        )
        for pixel_id in pixel_ids
    ]
    return format_html(
        "<script{}>{}</script><noscript>{}</noscript>",
        _nonce(context, request),
        mark_safe(script),  # noqa: S308 - every value in it went through js()
        mark_safe("".join(images)),  # noqa: S308 - each built by format_html
    )


@register.simple_tag(takes_context=True)
def capi_event(
    context: template.Context, source: models.Model, event_name: str | None = None
) -> SafeString:
    """``fbq('track', name, custom_data, {eventID})`` for the outbox row of ``source``'s
    ``event_name`` event, or for ``source`` itself when it is an ``OutboxEvent``. With several
    pixels, ``fbq('trackSingle', pixel, …)`` to the event's own pixel (initialised first if
    ``{% capi_pixel %}`` did not)."""
    request: HttpRequest | None = context.get("request")
    if source is None or not has_consent(request):
        return SafeString("")
    event: tuple[str, str, Any, str | None] | None
    if isinstance(source, OutboxEvent):
        event = (
            source.event_name,
            source.event_id,
            source.payload.get("custom_data", {}),
            source.pixel_id,
        )
    elif isinstance(source, models.Model):
        if not event_name:
            raise template.TemplateSyntaxError("capi_event needs an event name for a model")
        event = _model_event(source, event_name)
    else:
        logger.warning("capi_event: %s is neither a model instance nor an outbox row", type(source))
        event = None
    if event is None:
        return SafeString("")
    name, event_id, custom_data, pixel_id = event
    conf = capi_settings()
    pixel_id = pixel_id or conf.pixel_id
    if not pixel_id or conf.pixel(pixel_id) is None:
        # Its server twin has no pixel to go to either (the row failed, saying so).
        logger.warning("capi_event: pixel %s of %r is not configured", pixel_id, name)
        return SafeString("")
    standard = name in STANDARD_EVENTS
    options = js({"eventID": event_id})
    initialised = _initialised(context, request)
    if len(conf.pixels) == 1 and initialised <= {pixel_id}:
        method = "track" if standard else "trackCustom"
        call = f"fbq({js(method)}, {js(name)}, {js(custom_data)}, {options});"
    else:
        # Several pixels: "track" would send the conversion to every one of them.
        call = ""
        if pixel_id not in initialised:
            initialised.add(pixel_id)
            call = f"fbq({js('init')}, {js(pixel_id)}, {js(_advanced_matching(request))});"
        method = "trackSingle" if standard else "trackSingleCustom"
        call += f"fbq({js(method)}, {js(pixel_id)}, {js(name)}, {js(custom_data)}, {options});"
    return format_html(
        "<script{}>{}</script>",
        _nonce(context, request),
        mark_safe(call),  # noqa: S308
    )


def _page_pixels(default: str, extra: Iterable[object]) -> list[str]:
    """The default pixel, then each configured pixel ``extra`` names, once each."""
    conf = capi_settings()
    found = [default]
    for item in _flatten(extra):
        if item is None or item == "":
            continue  # a variable the page left unset
        if isinstance(item, OutboxEvent):
            found.append(item.pixel_id)
        elif isinstance(item, models.Model):
            found += [
                pixel_id_for(item, event.event_name) or default
                for event in registered_events(type(item))
            ]
        elif isinstance(item, str | int) and not isinstance(item, bool):
            found.append(str(item))
        else:
            logger.warning("capi_pixel: %s names no pixel", type(item))
    pixel_ids = []
    for pixel_id in dict.fromkeys(found):
        if conf.pixel(pixel_id) is None:
            logger.warning("capi_pixel: pixel %s is not configured; not initialised", pixel_id)
        else:
            pixel_ids.append(pixel_id)
    return pixel_ids


def _flatten(items: Iterable[object]) -> Iterator[object]:
    for item in items:
        if isinstance(item, list | tuple | set | frozenset | models.QuerySet):
            yield from item
        else:
            yield item


def _initialised(context: template.Context, request: HttpRequest | None) -> set[str]:
    """The pixels this page initialised so far: kept on the request, which every template of
    the page shares (included ones too), else on the render context."""
    if request is None:
        render_context: Any = context.render_context  # its stubs allow fewer value types
        return render_context.setdefault(INITIALISED, set())  # type: ignore[no-any-return]
    if not hasattr(request, INITIALISED):
        setattr(request, INITIALISED, set())
    return getattr(request, INITIALISED)  # type: ignore[no-any-return]


def _model_event(
    source: models.Model, name: str
) -> tuple[str, str, dict[str, Any], str | None] | None:
    """Name, event id, custom data and pixel of ``source``'s ``name`` event, or None (and a
    warning saying why) when the Pixel must not fire it."""
    model_event = next((e for e in registered_events(type(source)) if e.event_name == name), None)
    if model_event is None:
        # A browser event with no server twin could never be deduplicated.
        logger.warning("capi_event: no %r event is registered for %s", name, type(source))
        return None
    if source.pk is None:
        # No pk, no event id: the Pixel's event could never meet its server twin.
        logger.warning("capi_event: %s is not saved; its %r is not rendered", type(source), name)
        return None
    event_id = _event_id(source, name)
    if event_id is None:
        return None
    pixel_id = pixel_id_for(source, name) or capi_settings().pixel_id
    row = OutboxEvent.objects.filter(
        pixel_id=pixel_id or "", event_name=name, event_id=event_id
    ).first()
    if row is None and not _will_send(model_event, source):
        return None  # not a conversion (yet): an unpaid order is no Purchase
    return name, event_id, _custom_data(row, model_event, source), pixel_id


def _event_id(source: models.Model, name: str) -> str | None:
    try:
        event_id = event_id_for(source, name)
    except Exception:
        logger.exception("capi_event: no event id for %s %r", type(source), name)
        return None
    if check_event_id(event_id) or not is_storable(event_id):
        # The outbox row cannot carry it either (and PostgreSQL refuses to look it up).
        logger.warning("capi_event: the event id of %s %r is unusable", type(source), name)
        return None
    return event_id


def _will_send(model_event: ModelEvent[Any], source: models.Model) -> bool:
    try:
        return bool(model_event.should_send(source, False))  # noqa: FBT003 - hook signature
    except Exception:
        logger.exception("capi_event: %s.should_send raised", type(model_event).__name__)
        return False


def _custom_data(
    row: OutboxEvent | None, model_event: ModelEvent[Any], source: models.Model
) -> dict[str, Any]:
    if row is not None and row.payload:
        return dict(row.payload.get("custom_data", {}))
    # The row is not there yet (or failed): the hook gives what it will carry.
    try:
        return clean_custom_data(model_event.custom_data(source), model_event.event_name)
    except Exception:
        logger.exception("capi_event: no custom_data for %s", model_event.event_name)
        return {}


def _advanced_matching(request: HttpRequest | None) -> dict[str, Any]:
    """The signed-in user's email and id, hashed as the server hashes them, so the Pixel and
    the Conversions API describe the same person the same way."""
    user: AbstractBaseUser | AnonymousUser | None = getattr(request, "user", None)
    if not capi_settings().advanced_matching or user is None or not user.is_authenticated:
        return {}
    email = getattr(user, "email", "") or ""
    matched = normalize_user_data({"em": email, "external_id": str(user.pk)})
    return {key: matched[key] for key in ("em", "external_id") if key in matched}


def _nonce(context: template.Context, request: HttpRequest | None) -> SafeString:
    # django-csp sets request.csp_nonce; Django 6's own CSP puts csp_nonce in the context.
    nonce = getattr(request, "csp_nonce", None) or context.get("csp_nonce")
    return format_html(' nonce="{}"', nonce) if nonce else SafeString("")
