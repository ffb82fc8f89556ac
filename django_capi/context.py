"""The browser's side of an event: IP, user agent, Meta's cookies and the page URL.

Captured while a request is being handled and stored with the event, because a worker that
sends it minutes later has no request to look at.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest

#: Keys a browser context may hold; all but ``event_source_url`` are ``user_data`` keys.
BROWSER_KEYS = ("client_ip_address", "client_user_agent", "fbc", "fbp", "event_source_url")

_current: ContextVar[Mapping[str, str] | None] = ContextVar("django_capi_browser", default=None)


def context_from_request(request: HttpRequest) -> dict[str, str]:
    """Read the browser context from ``request``; empty values are left out.

    The IP comes from ``REMOTE_ADDR`` only: a forwarded-for header is trivially spoofed. The
    page URL loses its query string and fragment, where shops and mail links put emails.
    """
    values = {
        "client_ip_address": request.META.get("REMOTE_ADDR", ""),
        "client_user_agent": request.META.get("HTTP_USER_AGENT", ""),
        "fbc": request.COOKIES.get("_fbc", ""),
        "fbp": request.COOKIES.get("_fbp", ""),
    }
    # A forged Host header makes no URL; the event may still carry an explicit one.
    with suppress(DisallowedHost):
        values["event_source_url"] = request.build_absolute_uri(request.path)
    return {key: value for key, value in values.items() if value}


def current_context() -> dict[str, str]:
    """The browser context of the request being handled, or ``{}`` outside one."""
    return dict(_current.get() or {})


@contextmanager
def use_browser_context(values: Mapping[str, str]) -> Iterator[None]:
    """Make ``values`` the browser context for events created inside the block."""
    token = _current.set(values)
    try:
        yield
    finally:
        _current.reset(token)
