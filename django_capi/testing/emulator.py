"""A local Graph API Conversions endpoint (``POST /{version}/{pixel_id}/events``).

Meta cannot be reached from tests, so this answers in its place, over real HTTP, with Meta's
rules (see :mod:`django_capi.testing.rules`), whole-request rejection, 48-hour deduplication
and scriptable failures. Standard library only, and nothing here needs Django.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from . import rules
from .faults import (
    Chaos,
    Conditions,
    ConnectionReset,
    Delay,
    Fault,
    GraphError,
    HttpStatus,
    Reply,
    WithHeaders,
    graph_error_reply,
    http_status_reply,
    json_reply,
    new_fbtrace_id,
    rejection_reply,
)
from .server import Server, parse_params

#: Stands in for the access token wherever a request is recorded.
REDACTED_TOKEN = "[redacted access_token]"  # noqa: S105 - a placeholder
#: Accepted when no token is given: obviously fake, never a real Meta token.
DEFAULT_ACCESS_TOKEN = "capi-emulator-token"  # noqa: S105 - a fake

#: The emulator's own control endpoint (not Graph's): GET, POST and DELETE standing faults.
FAULTS_PATH = "/_faults"
#: The emulator's own read-only view of what it received, for a process that only has HTTP.
RECEIVED_PATH = "/_received"

_EDGE = re.compile(r"/(v\d+\.\d+)/(\d+)/events")
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_.|\-]{1,4096}")


class ManualClock:
    """A clock a test moves by hand, so events age past 7 days or 48 hours instantly."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, timestamp: float) -> None:
        with self._lock:
            self._now = timestamp


# --- records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator saw it, with the access token replaced."""

    method: str
    path: str
    pixel_id: str | None
    api_version: str | None
    params: dict[str, Any]
    headers: dict[str, str]
    events: list[dict[str, Any]]
    #: ``None`` when the connection was reset instead of answered.
    status: int | None
    #: The decoded JSON answer (or the raw text of an ``HttpStatus`` body).
    response: Any
    time: float
    fault: Fault | None

    @property
    def error(self) -> dict[str, Any] | None:
        error = self.response.get("error") if isinstance(self.response, dict) else None
        return error if isinstance(error, dict) else None

    @property
    def token_check(self) -> bool:
        """A request to the events edge with an empty ``data``: how ``capi_doctor
        --check-token`` asks whether the token may post, with nothing to record."""
        if self.pixel_id is None:
            return False
        try:
            return rules.decode_data(self.params.get("data")) == []
        except rules.Rejection:
            return False


@dataclass(frozen=True)
class ReceivedEvent:
    """An event of an accepted request; duplicates are kept, flagged, as Meta counts them."""

    pixel_id: str
    api_version: str
    data: dict[str, Any]
    test_event_code: str | None
    partner_agent: str | None
    received_at: float
    duplicate: bool

    @property
    def event_name(self) -> str:
        return str(self.data["event_name"])

    @property
    def event_id(self) -> str | None:
        event_id = self.data.get("event_id")
        return event_id if isinstance(event_id, str) else None


# --- the emulator ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    pixel_id: str
    api_version: str
    params: dict[str, Any]
    body_error: str | None
    arrived: float


class GraphEmulator:
    """The Graph API's Conversions endpoint on ``127.0.0.1`` (a free port by default).

    ``access_tokens`` may be changed while running (token rotation); ``pixel_ids`` limits the
    pixels that exist (any numeric id by default); ``now`` is the clock for event windows and
    deduplication; ``on_request`` sees each :class:`RecordedRequest` (from a server thread).
    ``app_secret`` (also changeable) is the secret of an app with "Require App Secret": every
    request must then carry ``appsecret_proof``, the hex HMAC-SHA256 of its token keyed with
    it, and a missing or wrong one is refused with code 100 as Meta does.
    """

    def __init__(
        self,
        access_tokens: Iterable[str] = (DEFAULT_ACCESS_TOKEN,),
        *,
        now: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
        pixel_ids: Iterable[str] | None = None,
        on_request: Callable[[RecordedRequest], None] | None = None,
        conditions: Conditions | None = None,
        seed: int | None = None,
        on_faults: Callable[[str], None] | None = None,
        app_secret: str | None = None,
    ) -> None:
        self.now = now
        self.on_faults = on_faults
        self.app_secret = app_secret
        self.host = host
        self.on_request = on_request
        self._port = port
        self._lock = threading.Lock()
        self._tokens = _token_set(access_tokens)
        self._pixel_ids = None if pixel_ids is None else frozenset(pixel_ids)
        self._script: deque[Fault] = deque()
        self._always: Fault | None = None
        self._base = conditions or Conditions()
        self._window: Conditions | None = None
        self._window_ends: float | None = None
        self._random = random.Random(seed)  # noqa: S311 - a demo's dice, not a secret
        self._requests: list[RecordedRequest] = []
        self._events: list[ReceivedEvent] = []
        self._first_seen: dict[tuple[str, str, str], float] = {}
        self._stopping = threading.Event()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = Server((self.host, self._port), self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_until_woken,
            name=f"capi-graph-emulator:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections, so a pooled one cannot reach a dead server."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.wake()
        if thread is not None:
            thread.join(timeout=5)
        server.close_connections()
        server.server_close()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The base URL to use as ``GRAPH_API_URL``, e.g. ``http://127.0.0.1:54321``."""
        if self._server is None:
            raise RuntimeError("The Graph emulator is not running: call start() first.")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    def events_url(self, pixel_id: str, api_version: str = "v25.0") -> str:
        return f"{self.url}/{api_version}/{pixel_id}/events"

    @property
    def access_tokens(self) -> frozenset[str]:
        with self._lock:
            return self._tokens

    @access_tokens.setter
    def access_tokens(self, tokens: Iterable[str]) -> None:
        with self._lock:
            self._tokens = _token_set(tokens)

    # faults

    def script(self, *faults: Fault) -> None:
        """Queue faults for the next requests to the events edge, one each, first in first out;
        once they are used up, requests are handled normally again."""
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"not a Fault: {fault!r}")
        with self._lock:
            self._script.extend(faults)

    def fail_always(self, fault: Fault | None) -> None:
        """Apply ``fault`` to every request the script leaves alone (an outage); ``None``
        ends it."""
        with self._lock:
            self._always = fault

    def clear_faults(self) -> None:
        """End every fault: the script, ``fail_always``, the conditions and their window."""
        with self._lock:
            self._clear_faults_locked()

    def _clear_faults_locked(self) -> None:
        self._script.clear()
        self._always = None
        self._base = Conditions()
        self._window = self._window_ends = None

    @property
    def conditions(self) -> Conditions:
        """The standing faults in force: an open window's, else the base ones."""
        with self._lock:
            return self._conditions_locked()

    @conditions.setter
    def conditions(self, conditions: Conditions) -> None:
        """The base conditions, in force whenever no window is open."""
        with self._lock:
            self._base = conditions

    def open_window(self, conditions: Conditions, seconds: float | None = None) -> None:
        """Put ``conditions`` in force for ``seconds`` (until :meth:`lift_window` when
        ``None``); then the base conditions apply again."""
        with self._lock:
            self._window = conditions
            self._window_ends = None if seconds is None else time.monotonic() + seconds

    def lift_window(self) -> None:
        with self._lock:
            self._window = self._window_ends = None

    def faults_state(self) -> dict[str, Any]:
        """What ``GET /_faults`` answers: the conditions in force, the base ones, and the
        seconds left in the window (``None``: no window, or one without an end)."""
        with self._lock:
            active = self._conditions_locked()
            window = self._window is not None
            left = None if self._window_ends is None else self._window_ends - time.monotonic()
            base = self._base
        return {
            "active": active.as_json(),
            "base": base.as_json(),
            "window": window,
            "window_seconds_left": None if left is None else round(max(left, 0.0), 1),
            "describe": active.describe(),
        }

    def _conditions_locked(self) -> Conditions:
        if self._window_ends is not None and time.monotonic() >= self._window_ends:
            self._window = self._window_ends = None
        return self._window if self._window is not None else self._base

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._script)

    # what was received

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def received_events(
        self, pixel_id: str | None = None, *, include_duplicates: bool = True
    ) -> list[ReceivedEvent]:
        with self._lock:
            return [
                event
                for event in self._events
                if (pixel_id is None or event.pixel_id == pixel_id)
                and (include_duplicates or not event.duplicate)
            ]

    def event_ids(
        self, pixel_id: str | None = None, *, include_duplicates: bool = True
    ) -> list[str]:
        """The ``event_id`` of each received event in arrival order (events without one skipped)."""
        return [
            event.event_id
            for event in self.received_events(pixel_id, include_duplicates=include_duplicates)
            if event.event_id is not None
        ]

    def lost_answers(self, read_timeout: float) -> list[RecordedRequest]:
        """Requests whose events were accepted but whose sender never read the answer: the
        connection was reset after processing, or the answer came after ``read_timeout``."""
        return [
            request
            for request in self.requests
            if isinstance(request.response, dict)
            and "events_received" in request.response
            and (
                request.status is None
                or (isinstance(request.fault, Delay) and request.fault.seconds >= read_timeout)
            )
        ]

    def received_state(self) -> dict[str, Any]:
        """What ``GET /_received`` answers: every received event (duplicates flagged) and a
        short line per Graph request (its status and error, never its parameters)."""
        with self._lock:
            events, requests = list(self._events), list(self._requests)
        return {
            "events": [
                {
                    "pixel_id": event.pixel_id,
                    "api_version": event.api_version,
                    "event_name": event.event_name,
                    "event_id": event.event_id,
                    "duplicate": event.duplicate,
                    "received_at": event.received_at,
                    "test_event_code": event.test_event_code,
                    "data": event.data,
                }
                for event in events
            ],
            "requests": [
                {
                    "time": request.time,
                    "method": request.method,
                    "path": request.path,
                    "pixel_id": request.pixel_id,
                    "status": request.status,
                    "events": len(request.events),
                    "error": request.error,
                }
                for request in requests
            ],
        }

    @property
    def duplicates(self) -> list[ReceivedEvent]:
        with self._lock:
            return [event for event in self._events if event.duplicate]

    def reset(self) -> None:
        """Forget requests, events, deduplication history and faults (tokens and clock stay)."""
        with self._lock:
            self._requests.clear()
            self._events.clear()
            self._first_seen.clear()
            self._clear_faults_locked()

    # request handling (called from server threads)

    def _respond(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        """Answer one request and record it. Faults are only used up by the events edge, so
        a request to a wrong path cannot swallow the fault a test meant for the next send."""
        arrived = self.now()
        split = urlsplit(target)
        if split.path == FAULTS_PATH:
            return self._control(method, body)
        if split.path == RECEIVED_PATH:
            if method != "GET":
                return _control_reply(405, {"error": "read-only: use GET"})
            return _control_reply(200, self.received_state())
        params, body_error = parse_params(split.query, _header(headers, "Content-Type"), body)
        token = params.get("access_token")
        if token is None:
            scheme, _, credentials = _header(headers, "Authorization").partition(" ")
            if scheme.lower() in ("oauth", "bearer") and credentials:
                token = credentials.strip()
        match = _EDGE.fullmatch(split.path) if method == "POST" else None
        fault: Fault | None = None
        if match is None:
            message = rules.unsupported_request(method)
            reply = graph_error_reply(GraphError(100, 33, status=404, message=message))
        else:
            fault = self._next_fault()
            request = _Request(match[2], match[1], params, body_error, arrived)
            reply = self._apply(fault, request, token)
        record = RecordedRequest(
            method=method,
            path=split.path,
            pixel_id=match[2] if match else None,
            api_version=match[1] if match else None,
            params=_redacted(params),
            headers={
                name: REDACTED_TOKEN if name.lower() == "authorization" else value
                for name, value in headers.items()
            },
            events=_events_or_empty(params),
            status=None if reply.reset else reply.status,
            response=reply.payload,
            time=arrived,
            fault=fault,
        )
        with self._lock:
            self._requests.append(record)
        if self.on_request is not None:
            self.on_request(record)
        return reply

    def _control(self, method: str, body: bytes) -> Reply:
        """``/_faults``: GET shows the standing faults; POST opens a window of the faults
        in its JSON object (fields left out keep their base value; ``for_seconds`` ends it);
        DELETE lifts the window. Not a Graph request: never recorded."""
        if method == "POST":
            try:
                data = json.loads(body or b"{}")
                seconds = data.pop("for_seconds", None) if isinstance(data, dict) else None
                if seconds is not None and not _positive(seconds):
                    raise ValueError("for_seconds must be a positive number")
                with self._lock:
                    base = self._base
                conditions = Conditions.from_json(data, base)
            except ValueError as exc:  # JSONDecodeError included
                return _control_reply(400, {"error": str(exc)})
            except RecursionError:
                return _control_reply(400, {"error": "the JSON is nested too deeply"})
            self.open_window(conditions, seconds)
        elif method == "DELETE":
            self.lift_window()
        elif method != "GET":
            return _control_reply(405, {"error": "use GET, POST or DELETE"})
        state = self.faults_state()
        if method != "GET" and self.on_faults is not None:
            self.on_faults(state["describe"])
        return _control_reply(200, state)

    def _pause(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            fault = self._script.popleft() if self._script else self._always
            if fault is None:
                return self._conditions_locked().draw(self._random.random())
        return fault.draw() if isinstance(fault, Chaos) else fault

    def _apply(self, fault: Fault | None, request: _Request, token: object) -> Reply:
        if fault is None:
            return self._process(request, token)
        if isinstance(fault, Delay):
            reply = self._apply(fault.then, request, token)
            reply.delay += fault.seconds
            return reply
        if isinstance(fault, WithHeaders):
            reply = self._apply(fault.then, request, token)
            reply.headers.update(fault.headers)
            return reply
        if isinstance(fault, ConnectionReset):
            reply = self._process(request, token) if fault.processed else Reply(0)
            reply.reset = True
            return reply
        if isinstance(fault, GraphError):
            return graph_error_reply(fault)
        if isinstance(fault, HttpStatus):
            return http_status_reply(fault)
        raise TypeError(f"unknown fault {fault!r}")

    def _process(self, request: _Request, token: object) -> Reply:
        if request.body_error is not None:
            return rejection_reply(rules.Rejection(rules.INVALID_DATA, request.body_error))
        if not isinstance(token, str) or not _TOKEN_SHAPE.fullmatch(token):
            return graph_error_reply(GraphError(190))
        with self._lock:
            token_ok = token in self._tokens
        if not token_ok:
            return graph_error_reply(GraphError(190, 467))
        proof_error = self._proof_error(token, request.params.get("appsecret_proof"))
        if proof_error is not None:
            return graph_error_reply(proof_error)
        if self._pixel_ids is not None and request.pixel_id not in self._pixel_ids:
            message = rules.unsupported_request("POST", request.pixel_id)
            return graph_error_reply(GraphError(100, 33, status=404, message=message))
        try:
            events = rules.decode_data(request.params.get("data"))
            rules.validate_request(request.params, events, request.arrived)
            conditions = self.conditions
            for event in events:
                if conditions.rejects(event):
                    raise conditions.rejection(event)
        except rules.Rejection as rejection:
            return rejection_reply(rejection)
        self._accept(request, events)
        payload = {"events_received": len(events), "messages": [], "fbtrace_id": new_fbtrace_id()}
        return json_reply(200, payload)

    def _proof_error(self, token: str, proof: object) -> GraphError | None:
        """Meta's answer to a missing or wrong ``appsecret_proof`` when the app requires one:
        code 100 without a subcode, the message naming the parameter."""
        secret = self.app_secret
        if secret is None:
            return None
        if not isinstance(proof, str) or not proof:
            message = "API calls from the server require an appsecret_proof argument"
        else:
            expected = hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()
            if hmac.compare_digest(proof.encode(), expected.encode()):
                return None
            message = "Invalid appsecret_proof provided in the API argument"
        return GraphError(100, message=message, error_type="GraphMethodException")

    def _accept(self, request: _Request, events: list[dict[str, Any]]) -> None:
        test_event_code = request.params.get("test_event_code")
        partner_agent = request.params.get("partner_agent")
        with self._lock:
            for event in events:
                duplicate = False
                event_id = event.get("event_id")
                if isinstance(event_id, str):
                    key = (request.pixel_id, event["event_name"], event_id)
                    first = self._first_seen.get(key)
                    if first is not None and request.arrived - first < rules.DEDUP_WINDOW:
                        duplicate = True
                    else:
                        self._first_seen[key] = request.arrived
                self._events.append(
                    ReceivedEvent(
                        pixel_id=request.pixel_id,
                        api_version=request.api_version,
                        data=event,
                        test_event_code=test_event_code,
                        partner_agent=partner_agent,
                        received_at=request.arrived,
                        duplicate=duplicate,
                    )
                )


# --- helpers -----------------------------------------------------------------------------


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _control_reply(status: int, payload: dict[str, Any]) -> Reply:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Reply(status, payload, body, {"Content-Type": "application/json"})


def _token_set(tokens: Iterable[str]) -> frozenset[str]:
    return frozenset([tokens] if isinstance(tokens, str) else tokens)


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return ""


def _redacted(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: REDACTED_TOKEN if name == "access_token" else value for name, value in params.items()
    }


def _events_or_empty(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    try:
        return rules.decode_data(params.get("data"))
    except rules.Rejection:
        return []
