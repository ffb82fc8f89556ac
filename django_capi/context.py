"""The browser's side of an event: IP, user agent, Meta's click and browser ids, the page.

Captured while a request is being handled and stored with the event, because a worker that
sends it minutes later has no request to look at. Meta's rules (fbc/fbp formats, when a click
id replaces the cookie) live here; the middleware only applies them to a request.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from ipaddress import ip_address
from urllib.parse import parse_qs, urlsplit

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest

#: The keys of a browser context that are ``user_data`` keys.
USER_DATA_KEYS = ("client_ip_address", "client_user_agent", "fbc", "fbp")
#: ``consent`` is False when the visitor refused tracking: no event may be stored for it.
CONSENT_KEY = "consent"
_CLICK_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")

_current: ContextVar[Mapping[str, object] | None] = ContextVar("django_capi_browser", default=None)


def context_from_request(
    request: HttpRequest, *, trusted_proxy_count: int = 0, fbc: str | None = None
) -> dict[str, str]:
    """Read the browser context from ``request``; empty values are left out.

    The page URL loses its query string and fragment, where shops and mail links put emails.
    ``fbc`` overrides the cookie (the middleware has just made one from a click id).
    """
    values = {
        "client_ip_address": client_ip(request, trusted_proxy_count),
        "client_user_agent": request.META.get("HTTP_USER_AGENT", ""),
        "fbc": fbc or request.COOKIES.get("_fbc", ""),
        "fbp": request.COOKIES.get("_fbp", ""),
        "referrer_url": _without_query(request.META.get("HTTP_REFERER", "")),
    }
    # A forged Host header makes no URL; the event may still carry an explicit one.
    with suppress(DisallowedHost):
        values["event_source_url"] = request.build_absolute_uri(request.path)
    return {key: value for key, value in values.items() if value}


def client_ip(request: HttpRequest, trusted_proxy_count: int = 0) -> str:
    """The visitor's IP: ``REMOTE_ADDR``, or with ``trusted_proxy_count`` proxies in front,
    the address the outermost trusted proxy saw. Entries further left in
    ``X-Forwarded-For`` are whatever the client chose to send, so they are never used."""
    remote = str(request.META.get("REMOTE_ADDR", ""))
    if trusted_proxy_count <= 0:
        return remote
    forwarded = str(request.META.get("HTTP_X_FORWARDED_FOR", ""))
    hops = [hop.strip() for hop in forwarded.split(",")]
    hops = [hop for hop in hops if hop]
    if len(hops) < trusted_proxy_count:
        return remote  # fewer hops than proxies: the header is not what the setting promises
    candidate = hops[-trusted_proxy_count]
    try:
        return str(ip_address(candidate))
    except ValueError:
        return remote


def click_id(request: HttpRequest) -> str | None:
    """Meta's ``fbclid`` from the URL or, failing that, from the referrer (the landing page
    may have redirected before Django saw it). Its case is kept: Meta's ids are
    case-sensitive."""
    value = request.GET.get("fbclid", "")
    if not value:
        referrer = request.META.get("HTTP_REFERER", "")
        value = parse_qs(urlsplit(referrer).query).get("fbclid", [""])[0]
    value = value.strip()
    # Anything else is not Meta's: a link could otherwise plant a cookie big enough to get
    # every later request of the browser refused.
    return value if _CLICK_ID.fullmatch(value) else None


def subdomain_index(cookie_domain: str | None) -> int:
    """Meta's index of the domain a cookie is defined on: ``com`` 0, ``example.com`` 1,
    ``www.example.com`` 2; 1, Meta's value for a server, for a host-only cookie."""
    if not cookie_domain:
        return 1
    return len(cookie_domain.strip(".").split(".")) - 1


def fbc_for_click(cookie: str | None, fbclid: str | None, *, index: int = 1) -> str | None:
    """A new ``_fbc`` value when ``fbclid`` is new to this browser, else None.

    Meta: set it when there is no ``_fbc`` or when the click id after its last dot differs.
    The creation time is in milliseconds.
    """
    if not fbclid:
        return None
    if cookie and _fbc_click_id(cookie) == fbclid:
        return None
    return f"fb.{index}.{int(time.time() * 1000)}.{fbclid}"


def new_fbp(*, index: int = 1) -> str:
    """A browser id in Meta's ``fb.<index>.<ms>.<random>`` layout."""
    return f"fb.{index}.{int(time.time() * 1000)}.{secrets.randbelow(2**31)}"


def current_context() -> dict[str, object]:
    """The browser context of the request being handled, or ``{}`` outside one."""
    return dict(_current.get() or {})


@contextmanager
def use_browser_context(values: Mapping[str, object]) -> Iterator[None]:
    """Make ``values`` the browser context for events created inside the block."""
    token = _current.set(values)
    try:
        yield
    finally:
        _current.reset(token)


def _fbc_click_id(cookie: str) -> str | None:
    """The click id of ``fb.<index>.<ms>.<fbclid>``, with or without the Parameter Builder's
    appendix after it."""
    parts = cookie.split(".")
    return parts[3] if len(parts) in (4, 5) and parts[0] == "fb" else None


def _without_query(url: str) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
