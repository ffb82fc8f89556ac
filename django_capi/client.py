"""The Graph API's Conversions endpoint over ``requests``: one POST, one classified answer.

It knows nothing of models or the outbox. The request is one JSON body, ``{"data": [...],
"access_token": ...}`` (Meta documents a JSON body [UTA]; see meta-capi.md §1.1): the token
travels in it, never in the URL, so it cannot leak through a log line, a proxy log or an
exception message; it is never re-sent to where a redirect points, and no traceback local
shows it. The events an outbox stores as JSON text go into the body as they are: building
the body is one join, with no decoding and re-encoding of each event.

Every answer is read defensively: whatever a proxy, a portal or a broken Graph sends (any
status, header or body) becomes a classified ``GraphResult`` whose values can be stored.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from django.views.decorators.debug import sensitive_variables

from .conf import API_VERSIONS, SETTING_NAME, CapiSettings, PixelSettings, capi_settings
from .text import storable

#: Graph error codes for throttling (Meta's "recovery tactic": wait, then retry), and 368,
#: "temporarily blocked for policy violations… wait and retry": a pause, not the events' fault.
RATE_LIMIT_CODES = frozenset({4, 17, 32, 341, 368, 613, 80004})
#: Token expired or revoked (190, 102) and permission errors (10, 200–299): no retry helps.
AUTH_CODES = frozenset({10, 102, 190, *range(200, 300)})
#: Meta's temporary downtime codes.
TRANSIENT_CODES = frozenset({1, 2})
#: "Invalid parameter": the one code that blames the events themselves.
INVALID_PARAMETER = 100
#: Graph code 100 with this subcode: the pixel does not exist or the token may not use it.
UNSUPPORTED_POST_SUBCODE = 33
#: "You are calling a deprecated version of the API": every request fails until upgraded.
DEPRECATED_API_VERSION = 2635
#: Code 100 naming this parameter, without a subcode: "Invalid appsecret_proof provided in the
#: API argument" (HTTP 400, GraphMethodException; as answered in facebook-python-business-sdk
#: issue 528), or "API calls from the server require an appsecret_proof argument" when an app
#: with "Require App Secret" gets none. The app secret is wrong or missing: a setup error, not
#: the events' fault.
APPSECRET_PROOF = "appsecret_proof"

#: Meta's answers are a few hundred bytes; anything longer than this is not read.
MAX_ANSWER_BYTES = 1 << 20
#: Longest error message, title, type or warning kept from an answer.
MAX_TEXT = 2000
#: The largest ``events_received`` a database column holds (PostgreSQL ``integer``).
MAX_COUNT = 2**31 - 1
#: Longest wait a ``Retry-After`` header is believed for (the caller caps it again).
MAX_RETRY_AFTER = 7 * 24 * 3600.0
_SECONDS = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,6})?", re.ASCII)


class ErrorKind(enum.StrEnum):
    """What a failed request means for the events in it."""

    TRANSIENT = "transient"  # try the same events again later
    RATE_LIMIT = "rate_limit"  # pause the pixel; the events are fine
    #: The token, its permissions, the pixel id or the API version is wrong: every request
    #: would fail the same way, so stop sending until the setup is fixed.
    SETUP = "setup"
    INVALID = "invalid"  # Meta refused the payload: at least one event is bad


@dataclass(frozen=True)
class GraphFailure:
    kind: ErrorKind
    message: str
    code: int | None = None
    subcode: int | None = None
    type: str = ""
    title: str = ""
    is_transient: bool | None = None
    #: Seconds Meta asks us to wait (``estimated_time_to_regain_access``), when it says.
    retry_after: float | None = None

    def describe(self, http_status: int | None) -> str:
        """One line for the outbox row and the log: who answered what."""
        if http_status is None:
            return self.message
        if self.code is None and not self.title:
            return f"HTTP {http_status} {self.message}"  # a proxy's or a portal's answer
        code = "" if self.code is None else f" code {self.code}"
        code += "" if self.subcode is None else f"/{self.subcode}"
        title = f" {self.title}:" if self.title else ""
        return f"Meta HTTP {http_status}{code}{title} {self.message}".strip()


@dataclass(frozen=True)
class GraphResult:
    """One request's answer. ``http_status`` is None when no answer arrived at all."""

    http_status: int | None
    duration_ms: int
    events_received: int | None = None
    fbtrace_id: str = ""
    error: GraphFailure | None = None
    #: Meta's ``messages``: warnings about the events it received [APE].
    messages: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


class GraphClient:
    """Posts batches of events for one pixel. Subclass and override ``create_session`` to
    mount adapters (proxies, client certificates); everything else reads the settings.

    A drain may call ``post_events`` from a thread of its own (while it claims the next
    batch), never two at once: an override must not use the database."""

    def __init__(self, conf: CapiSettings | None = None) -> None:
        self.conf = conf or capi_settings()
        self.session = self.create_session()

    def create_session(self) -> requests.Session:
        session = requests.Session()
        session.headers["User-Agent"] = "django-capi"
        return session

    def close(self) -> None:
        self.session.close()

    @sensitive_variables("body")
    def post_events(self, pixel_id: str, events: Sequence[Mapping[str, Any] | str]) -> GraphResult:
        """Send ``events`` in one request to ``pixel_id``, with that pixel's token, test code,
        API version and app secret: event objects, or their JSON text as stored (a ``str`` is
        taken to be one JSON object and sent as it is). Never raises for network or HTTP
        errors: they come back classified in ``GraphResult.error``."""
        pixel = self.conf.credentials(pixel_id)
        body = _Body(self._body(events, pixel).encode())
        started = time.monotonic()
        try:
            # Never follow a redirect: requests would post the body, token included, to
            # whatever host the Location names.
            response = self.session.post(
                self.conf.events_url(pixel_id),
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=(self.conf.connect_timeout, self.conf.read_timeout),
                allow_redirects=False,
                stream=True,
            )
            with response:
                answer = _read_capped(response)
        except requests.RequestException as exc:
            return GraphResult(
                http_status=None,
                duration_ms=_elapsed_ms(started),
                error=GraphFailure(ErrorKind.TRANSIENT, _describe_network_error(exc)),
            )
        return parse_response(response, _elapsed_ms(started), body=answer)

    @sensitive_variables("fields")
    def _body(self, events: Sequence[Mapping[str, Any] | str], pixel: PixelSettings) -> str:
        """``{"data": [...], ...}``: each event's stored JSON text joined as it is, the
        other fields encoded once. ``appsecret_proof`` travels in the body like the token."""
        data = ",".join(
            event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
            for event in events
        )
        fields = {"access_token": pixel.access_token or ""}
        if pixel.app_secret:
            fields["appsecret_proof"] = appsecret_proof(pixel.app_secret, pixel.access_token)
        if pixel.test_event_code:
            fields["test_event_code"] = pixel.test_event_code
        return f'{{"data":[{data}],{json.dumps(fields, separators=(",", ":"))[1:]}'


@sensitive_variables("app_secret", "access_token")
def appsecret_proof(app_secret: str, access_token: str | None) -> str:
    """Meta's ``appsecret_proof``: the hex HMAC-SHA256 of the access token keyed with the app
    secret (Graph API, "Securing requests"; meta-capi.md §1.2 [SDK] ``util.py``)."""
    key, message = app_secret.encode(), (access_token or "").encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class _Body(bytes):
    """The encoded request, token included: ``requests`` and ``urllib3`` keep it in locals
    that a debug page or an error tracker shows by ``repr``, so its ``repr`` hides it."""

    def __repr__(self) -> str:
        return "<request body with the access token, hidden>"

    __str__ = __repr__


def _read_capped(response: requests.Response) -> bytes:
    """The answer's body; empty, as if there were none, when it is longer than anything Meta
    sends (the rest is never read)."""
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            return b""
    return b"".join(chunks)


def parse_response(
    response: requests.Response, duration_ms: int, *, body: bytes | None = None
) -> GraphResult:
    """Classify an answer; ``body`` is its content when already read (else the response's).
    Never raises, whatever the status, headers or body."""
    status = response.status_code
    content = response.content if body is None else body
    answer = _json_object(content)
    error_body = answer.get("error")
    fbtrace_id = _text(answer.get("fbtrace_id")) or (
        _text(error_body.get("fbtrace_id")) if isinstance(error_body, dict) else ""
    )
    fbtrace_id = fbtrace_id[:64]
    if 300 <= status < 400:
        # A GRAPH_API_URL that redirects (http:// to https://, a moved host) is a setup
        # error: the body was not re-sent, and the Location (maybe with a query) is not shown.
        failure = GraphFailure(
            ErrorKind.SETUP,
            f"a redirect (HTTP {status}) instead of an answer: redirects are never followed, "
            f"so the access token stays here; set GRAPH_API_URL to the final address",
        )
        return GraphResult(status, duration_ms, None, fbtrace_id, failure)
    received = answer.get("events_received")
    if 200 <= status < 300 and not error_body:
        if isinstance(received, int) and not isinstance(received, bool):
            return GraphResult(
                http_status=status,
                duration_ms=duration_ms,
                events_received=min(max(received, 0), MAX_COUNT),
                fbtrace_id=fbtrace_id,
                messages=_messages(answer.get("messages")),
            )
        # A captive portal, a proxy's page or a wrong GRAPH_API_URL: nothing says Meta has
        # the events, so they must not count as delivered.
        failure = GraphFailure(ErrorKind.TRANSIENT, "without events_received: not the Graph API")
        return GraphResult(status, duration_ms, None, fbtrace_id, failure)
    return GraphResult(
        http_status=status,
        duration_ms=duration_ms,
        fbtrace_id=fbtrace_id,
        error=classify(status, error_body, response.headers),
    )


def _json_object(content: bytes | None) -> dict[str, Any]:
    if not content:
        return {}
    try:
        value = json.loads(content)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or absurdly nested
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: object, limit: int = MAX_TEXT) -> str:
    """A string field of Meta's answer, storable and bounded; anything else counts as empty."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return storable(str(value))[:limit]


def _messages(value: object) -> tuple[str, ...]:
    """Meta's ``messages`` are strings [APE]; anything else in there is kept as its JSON."""
    if not isinstance(value, list):
        return ()
    kept = []
    for item in value[:100]:
        if not isinstance(item, str):
            try:
                item = json.dumps(item, ensure_ascii=False, allow_nan=False)[:MAX_TEXT]
            except (TypeError, ValueError, RecursionError):
                continue
        kept.append(storable(item)[:MAX_TEXT])
    return tuple(kept)


def classify(
    http_status: int, error_body: object, headers: Mapping[str, str] | None = None
) -> GraphFailure:
    """Turn Meta's error answer into what it means for the events that were sent."""
    if not isinstance(error_body, dict):
        # No Graph error: a proxy, a load balancer or a wrong GRAPH_API_URL answered.
        kind = ErrorKind.TRANSIENT
        if http_status == 429:
            kind = ErrorKind.RATE_LIMIT
        elif http_status in (401, 403, 404):
            kind = ErrorKind.SETUP
        return GraphFailure(
            kind,
            "without a Graph API error body: not Meta's answer",
            retry_after=_retry_after(headers or {}) if kind is ErrorKind.RATE_LIMIT else None,
        )
    code = _int_or_none(error_body.get("code"))
    subcode = _int_or_none(error_body.get("error_subcode"))
    is_transient = error_body.get("is_transient")
    message = _text(error_body.get("error_user_msg")) or _text(error_body.get("message"))
    setup = (
        code in AUTH_CODES
        or (code == INVALID_PARAMETER and subcode == UNSUPPORTED_POST_SUBCODE)
        or _is_appsecret_proof_error(code, subcode, f"{_text(error_body.get('message'))} {message}")
    )
    if setup:
        kind = ErrorKind.SETUP
    elif code in RATE_LIMIT_CODES or http_status == 429:
        kind = ErrorKind.RATE_LIMIT
    elif code in TRANSIENT_CODES or is_transient is True or http_status >= 500:
        kind = ErrorKind.TRANSIENT
    elif code == INVALID_PARAMETER:
        kind = ErrorKind.INVALID
    else:
        # Any other code is about the request, not an event (a retired API version, say):
        # bisecting would fail every event of the backlog for nothing.
        kind = ErrorKind.SETUP
    if code == DEPRECATED_API_VERSION:
        message += " (upgrade DJANGO_CAPI['API_VERSION'] to a version Meta serves)"
    return GraphFailure(
        kind=kind,
        message=message,
        code=code,
        subcode=subcode,
        type=_text(error_body.get("type"), 100),
        title=_text(error_body.get("error_user_title"), 200),
        is_transient=is_transient if isinstance(is_transient, bool) else None,
        retry_after=_retry_after(headers or {}) if kind is ErrorKind.RATE_LIMIT else None,
    )


def _is_appsecret_proof_error(code: int | None, subcode: int | None, message: str) -> bool:
    """Meta refuses a missing or wrong proof with code 100 and no subcode; only the message
    tells it from an invalid event, which carries a subcode of its own."""
    return code == INVALID_PARAMETER and subcode is None and APPSECRET_PROOF in message


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds until Meta restores access, from ``X-Business-Use-Case-Usage`` (minutes there)
    or a plain ``Retry-After`` (seconds; its HTTP-date form is not used by Graph). Headers
    that say nothing sensible say nothing."""
    minutes: list[float] = []
    try:
        usage = json.loads(headers.get("X-Business-Use-Case-Usage") or "{}")
    except (ValueError, RecursionError):
        usage = None
    for entries in usage.values() if isinstance(usage, dict) else ():
        for entry in entries if isinstance(entries, list) else ():
            value = entry.get("estimated_time_to_regain_access") if isinstance(entry, dict) else 0
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                minutes.append(float(value))
    seconds = max(minutes) * 60 if minutes else None
    if seconds is None:
        # ASCII digits only: "²".isdigit() is True, and float() refuses it.
        retry_after = (headers.get("Retry-After") or "").strip()
        seconds = float(retry_after) if _SECONDS.fullmatch(retry_after) else None
    return None if seconds is None else min(seconds, MAX_RETRY_AFTER)


def _describe_network_error(exc: requests.RequestException) -> str:
    # The URL is safe to show (no token in it), but the type says enough and stays short.
    if isinstance(exc, requests.Timeout):
        return f"no answer from the Graph API in time ({type(exc).__name__})"
    return f"could not reach the Graph API ({type(exc).__name__})"


def _int_or_none(value: object) -> int | None:
    """An integer a database ``integer`` column holds, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_COUNT:
        return value
    return None


def _elapsed_ms(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))


# What a person should do about a failed request (``capi_doctor``, ``capi_test_event``).

#: The ``AUTH_CODES`` that say the token itself is invalid, expired or revoked; the others
#: are permission errors.
INVALID_TOKEN_CODES = frozenset({102, 190})


def graph_failure_fix(failure: GraphFailure, http_status: int | None, pixel_id: str) -> str:
    """The fix for ``failure``, in one or two sentences."""
    if http_status is None:
        return (
            "This host cannot reach the Graph API: check its network, proxy and GRAPH_API_URL, "
            "then try again."
        )
    if failure.code in INVALID_TOKEN_CODES:
        return (
            "The access token is invalid, expired or revoked: generate a new one in Events "
            "Manager (your dataset, Settings, Conversions API) and set CAPI_ACCESS_TOKEN."
        )
    if failure.code in AUTH_CODES:
        return (
            f"The token may not send events for pixel {pixel_id}: generate it on that pixel's "
            "Settings page in Events Manager, or give its system user access to the dataset."
        )
    if failure.code == INVALID_PARAMETER and failure.subcode == UNSUPPORTED_POST_SUBCODE:
        return (
            f"Meta finds no pixel {pixel_id} this token may use: check PIXEL_ID, and that the "
            "token was generated for this pixel."
        )
    if _is_appsecret_proof_error(failure.code, failure.subcode, failure.message):
        return (
            f"Meta refused the appsecret_proof: set APP_SECRET (for pixel {pixel_id}) to the "
            "secret of the app that generated its token (App Dashboard, App settings, Basic), "
            "or remove it if that app does not require one."
        )
    if failure.code == DEPRECATED_API_VERSION:
        return (
            f"Meta no longer serves this API_VERSION: set {SETTING_NAME}['API_VERSION'] to "
            f"{next(iter(API_VERSIONS))} (or remove it to use the newest this release knows)."
        )
    if failure.kind is ErrorKind.SETUP:
        return "Meta refused the request itself: check API_VERSION and GRAPH_API_URL."
    if failure.kind is ErrorKind.RATE_LIMIT:
        return "Meta is rate-limiting this pixel: try again in a few minutes."
    if failure.kind is ErrorKind.INVALID:
        return "Meta refused the event's data: the message says which field."
    if failure.code is None:
        return (
            "Something other than the Graph API answered (a proxy?): check GRAPH_API_URL and "
            "the network, then try again."
        )
    return "Meta had a temporary problem: try again in a few minutes."
