"""``CapiMiddleware``: the browser context of each request, for every event it creates.

It reads the visitor's IP, user agent, ``_fbp``/``_fbc`` cookies and page, turns a Meta click
id (``fbclid``) into a first-party ``_fbc`` cookie, asks the ``CONSENT`` callable, and makes
the result the context of every ``send_event`` and model save during the request. It also
keeps the stable part in the session, and ``browser_context(request)`` hands it to views that
store it on an order for a payment webhook to use later.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase
from django.utils.cache import patch_vary_headers

from . import context
from .conf import CapiSettings, capi_settings
from .text import storable

logger = logging.getLogger(__name__)

#: Meta recommends keeping ``_fbc`` (and ``_fbp``) for 90 days.
COOKIE_MAX_AGE = 90 * 24 * 3600
SESSION_KEY = "django_capi_browser"
#: Kept in the session: Meta's ids of the browser, for a later checkout whose request lacks
#: the cookies. Not the IP or user agent: no reason to store those for every visitor.
_STABLE_KEYS = ("fbc", "fbp")
_REQUEST_ATTRIBUTE = "_django_capi_browser"
_COOKIES_ATTRIBUTE = "_django_capi_cookies"
_failures_logged: set[type[Exception]] = set()


def browser_context(request: HttpRequest) -> dict[str, object]:
    """The browser context of ``request``: store it on an order at checkout, and return it
    from ``ModelEvent.request_context`` when the order is paid later without a browser."""
    collected = getattr(request, _REQUEST_ATTRIBUTE, None)
    if collected is None:
        # Without the middleware: collected once per request all the same, not per tag.
        collected = _collect(request, capi_settings())
        setattr(request, _REQUEST_ATTRIBUTE, collected)
    return dict(collected)


def has_consent(request: HttpRequest | None) -> bool:
    """Whether Meta may hear of this visitor. Without a request to ask about, only when no
    consent is asked for at all."""
    if request is None:
        return capi_settings().consent is None
    return browser_context(request).get(context.CONSENT_KEY) is not False


class CapiMiddleware:
    """Place it after ``SessionMiddleware`` and ``AuthenticationMiddleware``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        values = self._before(request)
        with context.use_browser_context(values):
            response = self.get_response(request)
        self._after(request, response)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        # The session and the CONSENT callable may touch the database: not in the loop.
        values = await sync_to_async(self._before)(request)
        with context.use_browser_context(values):
            result: Awaitable[HttpResponseBase] = self.get_response(request)
            response = await result
        self._after(request, response)
        return response

    def _before(self, request: HttpRequest) -> dict[str, object]:
        values = _collect(request, capi_settings())
        setattr(request, _REQUEST_ATTRIBUTE, values)
        return values

    def _after(self, request: HttpRequest, response: HttpResponseBase) -> None:
        conf = capi_settings()
        if conf.consent is not None:
            patch_vary_headers(response, ("Cookie",))  # caches must not share the Pixel
        if getattr(request, _REQUEST_ATTRIBUTE, {}).get(context.CONSENT_KEY) is False:
            # A refusal takes back what was set before it.
            for name in ("_fbc", "_fbp"):
                if name in request.COOKIES:
                    response.delete_cookie(name, domain=conf.cookie_domain, samesite="Lax")
            return
        for name, value in getattr(request, _COOKIES_ATTRIBUTE, {}).items():
            response.set_cookie(
                name,
                value,
                max_age=COOKIE_MAX_AGE,
                domain=conf.cookie_domain,  # the Pixel's own cookies live on the site domain
                samesite="Lax",
                secure=request.is_secure(),
                httponly=False,  # the Pixel reads them too
            )


def _collect(request: HttpRequest, conf: CapiSettings) -> dict[str, object]:
    if not _consents(request, conf):
        session = getattr(request, "session", None)
        if session is not None and SESSION_KEY in session:
            del session[SESSION_KEY]
        return {context.CONSENT_KEY: False}
    try:
        return _read(request, conf)
    except Exception as exc:
        # The last resort: whatever a client sent, or a session store that fails, the page
        # is served, its events carrying what can still be read. Logged once per kind of
        # failure, not once per request.
        if type(exc) not in _failures_logged:
            _failures_logged.add(type(exc))
            logger.exception("django-capi: collecting the browser context failed")
        return dict(
            context.context_from_request(request, trusted_proxy_count=conf.trusted_proxy_count)
        )


def _read(request: HttpRequest, conf: CapiSettings) -> dict[str, object]:
    cookies: dict[str, str] = {}
    index = context.subdomain_index(conf.cookie_domain)
    fbc = context.fbc_for_click(request.COOKIES.get("_fbc"), context.click_id(request), index=index)
    if fbc:
        cookies["_fbc"] = fbc
    if conf.set_fbp_cookie and not request.COOKIES.get("_fbp"):
        cookies["_fbp"] = context.new_fbp(index=index)
    setattr(request, _COOKIES_ATTRIBUTE, cookies)
    values: dict[str, object] = dict(
        context.context_from_request(request, trusted_proxy_count=conf.trusted_proxy_count, fbc=fbc)
    )
    if "_fbp" in cookies:
        values["fbp"] = cookies["_fbp"]
    _remember(request, values)
    return values


def _consents(request: HttpRequest, conf: CapiSettings) -> bool:
    if conf.consent is None:
        return True
    try:
        return bool(conf.consent(request))
    except Exception:
        # A broken consent check must fail towards privacy.
        logger.exception("django-capi: the CONSENT callable raised; treating it as refused")
        return False


def _remember(request: HttpRequest, values: dict[str, object]) -> None:
    """Keep the browser's ids in the session, and fill ones this request lacks (cookies the
    browser dropped) from it."""
    session = getattr(request, "session", None)
    if session is None:
        return
    saved = session.get(SESSION_KEY)
    saved = saved if isinstance(saved, dict) else {}
    for key in _STABLE_KEYS:
        if key not in values and isinstance(saved.get(key), str) and saved[key]:
            # Saved by a version that stored the cookies as they came.
            values[key] = storable(saved[key])
    stable = {key: values[key] for key in _STABLE_KEYS if key in values}
    # Written only when the ids change, and never into a session that does not exist yet:
    # a visitor must not get a session row (and an uncacheable page) just for this.
    if stable != saved and session.session_key is not None:
        session[SESSION_KEY] = stable
