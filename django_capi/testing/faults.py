"""Scripted failures for the Graph emulator, and how each one (or a normal answer) is rendered.

A fault stands in for one request's fate on the real Graph API: an error code a sender must
handle, a proxy's bare status, a slow answer, a dropped connection, rate-limit headers.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from . import rules


class Fault:
    """One request's scripted fate; see :meth:`GraphEmulator.script`."""


@dataclass(frozen=True)
class HttpStatus(Fault):
    """A bare status with any body: what a proxy or load balancer in front of Graph sends
    (an HTML 502 page, an empty 503). Nothing counts as received."""

    status: int
    body: str | bytes | Mapping[str, Any] = b""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GraphError(Fault):
    """A Graph-shaped error, for the codes a sender must tell apart (retry, throttle, new
    token, give up). Defaults per code come from :data:`rules.GRAPH_ERRORS`: HTTP 500 for 1
    and 2, 401 for 190, 400 otherwise; every field can be overridden. Nothing counts as
    received."""

    code: int
    subcode: int | None = None
    status: int | None = None
    is_transient: bool | None = None
    message: str | None = None
    error_type: str | None = None
    error_user_title: str | None = None
    error_user_msg: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def http_status(self) -> int:
        return self.status if self.status is not None else rules.error_spec(self.code).status

    def body(self, fbtrace_id: str) -> dict[str, Any]:
        spec = rules.error_spec(self.code)
        message = self.message or rules.SUBCODE_MESSAGES.get(
            (self.code, self.subcode or 0), spec.message
        )
        error_type = self.error_type or (
            "GraphMethodException" if (self.code, self.subcode) == (100, 33) else spec.type
        )
        return error_body(
            message=message,
            error_type=error_type,
            code=self.code,
            subcode=self.subcode,
            is_transient=spec.is_transient if self.is_transient is None else self.is_transient,
            user_title=self.error_user_title,
            user_msg=self.error_user_msg,
            fbtrace_id=fbtrace_id,
        )


@dataclass(frozen=True)
class Delay(Fault):
    """Answer late, to run past the sender's read timeout. The request is handled on arrival,
    before the pause: with ``then=None`` its events count (Meta usually has them although the
    sender saw a timeout), so a retry shows up as a duplicate. ``then`` replaces the normal
    answer with another fault (e.g. ``Delay(2, then=HttpStatus(504))``)."""

    seconds: float
    then: Fault | None = None


@dataclass(frozen=True)
class ConnectionReset(Fault):
    """Drop the connection with a TCP reset and no response (the sender sees a connection
    error). ``processed=True`` handles the request first, as when Meta got the events but the
    answer was lost; by default nothing counts."""

    processed: bool = False


@dataclass(frozen=True)
class WithHeaders(Fault):
    """Add response headers (rate-limit usage, say) to the normal answer or to ``then``."""

    headers: Mapping[str, str]
    then: Fault | None = None


class Chaos(Fault):
    """A random fate per request, for chaos tests: each of ``faults`` with its probability
    (``(0.05, HttpStatus(503))``), else a normal answer. Seeded, so a failing run can be
    replayed. The emulator records the fault it drew, not this one."""

    def __init__(self, faults: Sequence[tuple[float, Fault]], *, seed: int | None = None) -> None:
        if sum(probability for probability, _ in faults) > 1:
            raise ValueError("the probabilities of a Chaos add up to more than 1")
        self.faults = tuple(faults)
        self.seed = seed
        self._random = random.Random(seed)  # noqa: S311 - a test's dice, not a secret
        self._lock = threading.Lock()

    def draw(self) -> Fault | None:
        with self._lock:
            roll = self._random.random()
        for probability, fault in self.faults:
            if roll < probability:
                return fault
            roll -= probability
        return None

    def __repr__(self) -> str:
        return f"Chaos({self.faults!r}, seed={self.seed!r})"


def business_use_case_usage(
    business_id: str,
    *,
    estimated_time_to_regain_access: int = 0,
    call_count: int = 100,
    total_cputime: int = 25,
    total_time: int = 25,
    rate_limit_type: str = "ads_management",
    ads_api_access_tier: str = "standard_access",
) -> dict[str, str]:
    """``X-Business-Use-Case-Usage`` as Graph sends it; the wait is in minutes."""
    usage = {
        business_id: [
            {
                "type": rate_limit_type,
                "call_count": call_count,
                "total_cputime": total_cputime,
                "total_time": total_time,
                "estimated_time_to_regain_access": estimated_time_to_regain_access,
                "ads_api_access_tier": ads_api_access_tier,
            }
        ]
    }
    return {"X-Business-Use-Case-Usage": json.dumps(usage, separators=(",", ":"))}


def app_usage(call_count: int = 0, total_cputime: int = 0, total_time: int = 0) -> dict[str, str]:
    """``X-App-Usage`` as Graph sends it (percentages of the app's quota)."""
    usage = {"call_count": call_count, "total_cputime": total_cputime, "total_time": total_time}
    return {"X-App-Usage": json.dumps(usage, separators=(",", ":"))}


# --- rendering ---------------------------------------------------------------------------


@dataclass
class Reply:
    """An answer still to be sent: the handler may have to wait, or reset instead."""

    status: int
    payload: Any = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False


def new_fbtrace_id() -> str:
    return "A" + secrets.token_urlsafe(16)[:22]


def error_body(
    *,
    message: str,
    error_type: str,
    code: int,
    subcode: int | None,
    is_transient: bool,
    user_title: str | None,
    user_msg: str | None,
    fbtrace_id: str,
) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": error_type, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["is_transient"] = is_transient
    if user_title is not None:
        error["error_user_title"] = user_title
    if user_msg is not None:
        error["error_user_msg"] = user_msg
    error["fbtrace_id"] = fbtrace_id
    return {"error": error}


def json_reply(
    status: int, payload: dict[str, Any], headers: Mapping[str, str] | None = None
) -> Reply:
    fbtrace_id = payload.get("fbtrace_id") or payload["error"]["fbtrace_id"]
    return Reply(
        status,
        payload=payload,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        headers={
            "Content-Type": "application/json; charset=UTF-8",
            "x-fb-trace-id": fbtrace_id,
            **(headers or {}),
        },
    )


def graph_error_reply(fault: GraphError) -> Reply:
    headers = dict(fault.headers)
    if fault.code == 190:
        headers.setdefault("WWW-Authenticate", 'OAuth "Facebook Platform" "invalid_token"')
    return json_reply(fault.http_status(), fault.body(new_fbtrace_id()), headers)


def rejection_reply(rejection: rules.Rejection) -> Reply:
    return graph_error_reply(
        GraphError(
            100,
            rejection.subcode,
            message="Invalid parameter",
            error_user_title=rejection.title,
            error_user_msg=rejection.message,
        )
    )


def http_status_reply(fault: HttpStatus) -> Reply:
    if isinstance(fault.body, Mapping):
        payload: Any = dict(fault.body)
        body = json.dumps(payload).encode()
        content_type = "application/json; charset=UTF-8"
    else:
        body = fault.body.encode() if isinstance(fault.body, str) else fault.body
        payload = body.decode(errors="replace")
        content_type = "text/html; charset=utf-8"
    return Reply(fault.status, payload, body, {"Content-Type": content_type, **fault.headers})


# --- standing conditions (capi_fakegraph options and POST /_faults) ------------------------

#: What a 5xx of ``fail_rate`` looks like: Graph's own transient failure, HTTP 500.
FAIL = GraphError(2)
#: ``rate_limit_rate``: Graph's rate-limit error with the wait (1 minute) in its header.
RATE_LIMITED = GraphError(
    613, headers=business_use_case_usage("0", estimated_time_to_regain_access=1)
)
#: ``token_invalid``: the answer to a token that expired.
TOKEN_EXPIRED = GraphError(190, 463)


#: The longest wait a condition may impose, in seconds: a day is past every sender's timeout.
MAX_WAIT = 86400


@dataclass(frozen=True)
class Conditions:
    """Standing faults, for demos and manual testing rather than for scripting one request:
    a latency on every answer, shares of requests that fail (HTTP 500, code 2), time out
    (answered after ``timeout_seconds`` with a 504, nothing received) or are rate limited
    (code 613), a token that is refused (190/463), and events Meta rejects by name.

    ``reject_event_names`` with ``reject_rate`` rejects that share of those events (all
    events when no name is given), chosen by ``event_id``: the same event is always
    rejected, so the sender can isolate it by halving the batch as it does for Meta. Rates
    are shares of requests (or events) from 0 to 1; ``fail_rate``, ``timeout_rate`` and
    ``rate_limit_rate`` add up to 1 at most."""

    latency_ms: float = 0.0
    fail_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_seconds: float = 60.0
    rate_limit_rate: float = 0.0
    token_invalid: bool = False
    reject_event_names: frozenset[str] = frozenset()
    reject_rate: float = 0.0

    #: The names :meth:`from_json` and :meth:`as_json` use.
    FIELDS: ClassVar[tuple[str, ...]] = (
        "latency_ms",
        "fail_rate",
        "timeout_rate",
        "timeout_seconds",
        "rate_limit_rate",
        "token_invalid",
        "reject_event_names",
        "reject_rate",
    )

    def __post_init__(self) -> None:
        for name in ("fail_rate", "timeout_rate", "rate_limit_rate", "reject_rate"):
            rate = getattr(self, name)
            if not 0 <= rate <= 1:
                raise ValueError(f"{name} must be between 0 and 1, not {rate!r}")
        if self.fail_rate + self.timeout_rate + self.rate_limit_rate > 1:
            raise ValueError("fail_rate + timeout_rate + rate_limit_rate must not exceed 1")
        if self.latency_ms < 0 or self.timeout_seconds < 0:
            raise ValueError("latency_ms and timeout_seconds cannot be negative")
        # NaN passes every comparison above; an infinite wait overflows the handler's.
        for name, limit in (("latency_ms", MAX_WAIT * 1000), ("timeout_seconds", MAX_WAIT)):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) > limit:
                raise ValueError(f"{name} must be a finite number from 0 to {limit:g}")

    def draw(self, roll: float) -> Fault | None:
        """The fault of one request, given a uniform ``roll`` in [0, 1)."""
        fault: Fault | None = None
        if self.token_invalid:
            fault = TOKEN_EXPIRED
        elif roll < self.fail_rate:
            fault = FAIL
        elif roll < self.fail_rate + self.timeout_rate:
            fault = Delay(self.timeout_seconds, then=HttpStatus(504, "Gateway Time-out"))
        elif roll < self.fail_rate + self.timeout_rate + self.rate_limit_rate:
            fault = RATE_LIMITED
        if self.latency_ms > 0:
            fault = Delay(self.latency_ms / 1000, then=fault)
        return fault

    def rejects(self, event: Mapping[str, Any]) -> bool:
        """Whether ``event`` is one of the events these conditions reject."""
        if self.reject_rate <= 0:
            return False
        if self.reject_event_names and event.get("event_name") not in self.reject_event_names:
            return False
        key = event.get("event_id")
        if not isinstance(key, str):
            key = json.dumps(event, sort_keys=True, default=str)
        # Stable across processes and retries, unlike hash().
        share = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8]) / 2**64
        return share < self.reject_rate

    def rejection(self, event: Mapping[str, Any]) -> rules.Rejection:
        names = " ".join(sorted(self.reject_event_names)) or "any"
        return rules.Rejection(
            rules.INVALID_PARAMETER,
            f"The emulator rejects this {event.get('event_name')} event on purpose "
            f"(reject_event_names: {names}, reject_rate: {self.reject_rate:g}).",
        )

    @classmethod
    def from_json(cls, data: object, base: Conditions | None = None) -> Conditions:
        """Conditions from a JSON object of :data:`FIELDS`; the fields it leaves out keep
        their value in ``base``. A ``ValueError`` says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("send a JSON object")  # noqa: TRY004 - one error type for callers
        unknown = sorted(set(data) - set(cls.FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name == "token_invalid":
                if not isinstance(value, bool):
                    raise ValueError("token_invalid must be true or false")
            elif name == "reject_event_names":
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError("reject_event_names must be a list of event names")
                value = frozenset(value)
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            values[name] = value
        if "reject_event_names" in values and "reject_rate" not in values:
            # Names alone reject all of them; an empty list stops rejecting.
            values["reject_rate"] = 1.0 if values["reject_event_names"] else 0.0
        return replace(base or cls(), **values)

    def as_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.FIELDS}
        data["reject_event_names"] = sorted(self.reject_event_names)
        return data

    def describe(self) -> str:
        """One line for a log: what goes wrong, or "no faults"."""
        parts = []
        if self.latency_ms:
            parts.append(f"latency {self.latency_ms:g} ms")
        if self.fail_rate:
            parts.append(f"{self.fail_rate:.0%} HTTP 500")
        if self.timeout_rate:
            parts.append(f"{self.timeout_rate:.0%} time out ({self.timeout_seconds:g} s)")
        if self.rate_limit_rate:
            parts.append(f"{self.rate_limit_rate:.0%} rate limited")
        if self.token_invalid:
            parts.append("token refused")
        if self.reject_rate:
            names = ", ".join(sorted(self.reject_event_names)) or "all"
            parts.append(f"{self.reject_rate:.0%} of {names} events rejected")
        return "; ".join(parts) or "no faults"
