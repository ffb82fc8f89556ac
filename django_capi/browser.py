"""A request's browser context: what the visitor consented to, and what Meta may hear of them.

``browser_context(request)`` reads the visitor's IP, user agent, ``_fbp``/``_fbc`` cookies and
page once per request with Meta's rules (``context.py``), asks the ``CONSENT`` callable, and
keeps Meta's ids of the browser in the session for a later request that lacks the cookies.
Views store it on an order for a payment webhook to use later; ``CapiMiddleware`` collects it
for every request, makes it the context of the events the request creates and sets the
cookies it made (``new_cookies``).

Capture: it needs the settings and the session, so it is not pure like ``context.py``, and it
never touches a response.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest

from . import context
from .conf import CapiSettings, capi_settings
from .text import storable

logger = logging.getLogger(__name__)

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
        collected = collect(request)
    return dict(collected)


def collect(request: HttpRequest) -> dict[str, object]:
    """Read ``request``'s browser context afresh and keep it as the request's own (what
    ``browser_context`` returns from now on)."""
    values = _collect(request, capi_settings())
    setattr(request, _REQUEST_ATTRIBUTE, values)
    return values


def has_consent(request: HttpRequest | None) -> bool:
    """Whether Meta may hear of this visitor. Without a request to ask about, only when no
    consent is asked for at all."""
    if request is None:
        return capi_settings().consent is None
    return browser_context(request).get(context.CONSENT_KEY) is not False


def new_cookies(request: HttpRequest) -> dict[str, str]:
    """The first-party cookies collecting ``request``'s context made (``_fbc`` from a click
    id, a new ``_fbp``), for the response to set."""
    return dict(getattr(request, _COOKIES_ATTRIBUTE, {}))


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
