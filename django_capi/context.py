"""The browser's side of an event: IP, user agent, Meta's click and browser ids, the page.

Captured while a request is being handled and stored with the event, because a worker that
sends it minutes later has no request to look at. Meta's rules (fbc/fbp formats, when a click
id replaces the cookie) live here; the middleware only applies them to a request.

Everything here reads what a client chose to send: no header, cookie or path may make it
raise, and what it returns can be stored as is in a ``JSONField`` on every database.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from ipaddress import ip_address
from typing import overload
from urllib.parse import SplitResult, parse_qs, unquote, unquote_plus, urlsplit, urlunsplit

from django.core.exceptions import DisallowedHost, SuspiciousOperation
from django.http import HttpRequest

from .text import MAX_BROWSER_VALUE_LENGTH, storable

logger = logging.getLogger(__name__)

#: The keys of a browser context that are ``user_data`` keys.
USER_DATA_KEYS = ("client_ip_address", "client_user_agent", "fbc", "fbp")
#: ``consent`` is False when the visitor refused tracking: no event may be stored for it.
CONSENT_KEY = "consent"
_CLICK_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")
_PORT = re.compile(r":[0-9]{1,5}")
# What a header may put in the browser context, which shops keep on their orders: twice what
# an event keeps, so the event still sees, and says on its row, that a value was cut.
_READ_LIMIT = 2 * MAX_BROWSER_VALUE_LENGTH
# A run of a URL between its delimiters: a path segment, a query name or value, ...
_URL_TOKEN = re.compile(r"[^/?#&=;:\s]+")
# An email address once decoded, malformed ones included: something@ (a local part, even
# with no domain or a second "@"), or @label.more (a domain with no local part). A lone
# handle such as "@shop" stays. Linear: each "@" scans to the next dot at most.
_EMAIL = re.compile(r"(?<=[^\s@])@|@[^\s@.]+\.[^\s@.]")
_EMAIL_PLACEHOLDER = "redacted"
# Query parameters whose values usually identify a person, by their name in lower case with
# letters and digits only. Any name containing "mail" or "phone" counts too: user_email,
# customer[e-mail], mobilePhone.
_PERSONAL_PARAMETERS = frozenset(
    {
        "em", "ph", "tel", "telephone", "mobile", "msisdn",
        "user", "username", "login", "name", "fn", "ln", "firstname", "lastname", "fullname",
        "surname", "address", "street", "zip", "zipcode", "postcode", "postalcode",
        "dob", "birthday", "birthdate", "password", "passwd", "pwd",
    }
)  # fmt: skip
_logged_unreadable: set[str] = set()

_current: ContextVar[Mapping[str, object] | None] = ContextVar("django_capi_browser", default=None)


def context_from_request(
    request: HttpRequest, *, trusted_proxy_count: int = 0, fbc: str | None = None
) -> dict[str, str]:
    """Read the browser context from ``request``; empty values are left out.

    The page URL and the referrer lose their query string and fragment, where shops and mail
    links put emails, and any email address left in their path (``scrub_url``).
    ``fbc`` overrides the cookie (the middleware has just made one from a click id).
    Every value is ``storable``; a value that cannot be read is left out, never raised.
    """
    readers: dict[str, Callable[[], str]] = {
        "client_ip_address": lambda: client_ip(request, trusted_proxy_count),
        "client_user_agent": lambda: _meta(request, "HTTP_USER_AGENT"),
        "fbc": lambda: fbc or _cookie(request, "_fbc"),
        "fbp": lambda: _cookie(request, "_fbp"),
        "referrer_url": lambda: scrub_url(_without_query(_meta(request, "HTTP_REFERER"))),
        "event_source_url": lambda: scrub_url(_page_url(request)),
    }
    values = {}
    for key, read in readers.items():
        try:
            value = read()
        except Exception:
            # The last resort: every input above is handled, yet a page must never fail
            # because of what a client sent. Once per key, not once per request.
            if key not in _logged_unreadable:
                _logged_unreadable.add(key)
                logger.exception("django-capi: could not read %s from the request", key)
            continue
        if value:
            values[key] = storable(value[:_READ_LIMIT])
    return values


@overload
def scrub_url(url: str) -> str: ...
@overload
def scrub_url(url: object) -> object: ...
def scrub_url(url: object) -> object:
    """``url`` without the personal data that mail links and sign-up forms put in URLs.

    Every email address (in the path, the query or the fragment, plain or percent-encoded)
    becomes ``redacted``; the query parameters that usually carry personal data (``email``,
    ``user_email``, ``phone``, ``name``, ``login``, ...) and a ``user:password@`` go. The
    scheme, host, path and other parameters stay: Meta wants the page. Anything but a string
    is returned as it is, for validation to report.
    """
    if not isinstance(url, str):
        return url
    if "@" not in url and "%" not in url and "?" not in url:
        return url  # the common page: no query, no address, nothing encoded that could hide one
    parts = _split(url)
    if parts is not None:
        query = "&".join(pair for pair in parts.query.split("&") if not _personal_parameter(pair))
        host = parts.netloc.rpartition("@")[2]
        if (query, host) != (parts.query, parts.netloc):  # else the URL stays as it was written
            url = urlunsplit(parts._replace(netloc=host, query=query))
    return _URL_TOKEN.sub(_scrub_token, url)


def client_ip(request: HttpRequest, trusted_proxy_count: int = 0) -> str:
    """The visitor's IP: ``REMOTE_ADDR``, or with ``trusted_proxy_count`` proxies in front,
    the address the outermost trusted proxy saw. Entries further left in
    ``X-Forwarded-For`` are whatever the client chose to send, so they are never used."""
    # An ASGI server on a Unix socket has no address; what is not an IP is left out.
    remote = _ip(_meta(request, "REMOTE_ADDR"))
    if trusted_proxy_count <= 0:
        return remote
    hops = [hop.strip() for hop in _meta(request, "HTTP_X_FORWARDED_FOR").split(",")]
    hops = [hop for hop in hops if hop]
    if len(hops) < trusted_proxy_count:
        return remote  # fewer hops than proxies: the header is not what the setting promises
    return _ip(_without_port(hops[-trusted_proxy_count])) or remote


def click_id(request: HttpRequest) -> str | None:
    """Meta's ``fbclid`` from the URL or, failing that, from the referrer (the landing page
    may have redirected before Django saw it). Its case is kept: Meta's ids are
    case-sensitive."""
    try:
        value = request.GET.get("fbclid", "")
    except SuspiciousOperation:
        # More parameters than DATA_UPLOAD_MAX_NUMBER_FIELDS: a view that reads them gets
        # Django's 400; a page that does not must not get it from here.
        value = ""
    if not value:
        referrer = _split(_meta(request, "HTTP_REFERER"))
        value = parse_qs(referrer.query).get("fbclid", [""])[0] if referrer else ""
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
    parts = _split(url)
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        return ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _page_url(request: HttpRequest) -> str:
    try:
        # An ASGI server may hand over a path with lone surrogates, which no URL can encode.
        return request.build_absolute_uri(storable(request.path))
    except DisallowedHost:
        return ""  # a forged Host header makes no URL; the event may still carry an explicit one


def _personal_parameter(pair: str) -> bool:
    name = re.sub(r"[\W_]+", "", unquote_plus(pair.partition("=")[0]).casefold())
    return "mail" in name or "phone" in name or name in _PERSONAL_PARAMETERS


def _scrub_token(match: re.Match[str]) -> str:
    token = match.group()
    decoded = token
    for _ in range(3):  # double (or triple) encoding: john%2540example.com
        decoded = unquote(decoded)
    return _EMAIL_PLACEHOLDER if _EMAIL.search(decoded) else token


def _split(url: str) -> SplitResult | None:
    try:
        return urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL", a netloc that NFKC normalization changes, ...
        return None


def _meta(request: HttpRequest, name: str) -> str:
    value = request.META.get(name, "")
    return value if isinstance(value, str) else ""


def _cookie(request: HttpRequest, name: str) -> str:
    return request.COOKIES.get(name, "")


def _without_port(hop: str) -> str:
    """The address of an ``X-Forwarded-For`` entry some proxies (Azure's, IIS ARR) write with
    the client's port: ``203.0.113.9:4711``, ``[2001:db8::1]:443``. A bare IPv6 address has
    colons of its own and is left as it is."""
    if hop.startswith("["):
        address, bracket, port = hop[1:].partition("]")
        return address if bracket and (not port or _PORT.fullmatch(port)) else hop
    address, colon, port = hop.partition(":")
    return address if colon and _PORT.fullmatch(f":{port}") else hop


def _ip(text: str) -> str:
    try:
        return str(ip_address(text))
    except ValueError:
        return ""
