"""Meta's rules for one server event, checked before anything is stored.

Each check returns human-readable problems that say what to fix; none of them contains a raw
user value, because problems are stored on the outbox row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pycountry
from django.utils import timezone

from .constants import ActionSource
from .exceptions import EventValidationError

MAX_EVENT_NAME_LENGTH = 50
MAX_EVENT_ID_LENGTH = 100
#: Meta refuses a whole request when one event is older than this.
MAX_EVENT_AGE = timedelta(days=7)
MAX_PHYSICAL_STORE_EVENT_AGE = timedelta(days=62)
#: Meta documents no tolerance for future timestamps; allow clocks to disagree a little.
MAX_FUTURE_SKEW = timedelta(seconds=60)
#: Above this an ``event_time`` is surely in milliseconds, the commonest timestamp bug.
_MILLISECONDS_THRESHOLD = 10**11

#: Since Graph v13.0 an event whose customer information is only one of these sets (or a
#: subset of one) is rejected as unmatchable.
WEAK_USER_DATA_SETS: tuple[frozenset[str], ...] = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)


def max_event_age(action_source: str) -> timedelta:
    if action_source == ActionSource.PHYSICAL_STORE:
        return MAX_PHYSICAL_STORE_EVENT_AGE
    return MAX_EVENT_AGE


def check_event_name(event_name: object) -> list[str]:
    if not isinstance(event_name, str) or not event_name.strip():
        return ["event_name must be a non-empty string"]
    if len(event_name) > MAX_EVENT_NAME_LENGTH:
        return [f"event_name is longer than {MAX_EVENT_NAME_LENGTH} characters"]
    return []


def check_event_id(event_id: object) -> list[str]:
    if not isinstance(event_id, str) or not event_id.strip():
        return ["event_id must be a non-empty string"]
    if len(event_id) > MAX_EVENT_ID_LENGTH:
        return [f"event_id is longer than {MAX_EVENT_ID_LENGTH} characters"]
    return []


def check_action_source(action_source: object) -> list[str]:
    if action_source not in ActionSource.values:
        return [f"action_source must be one of {', '.join(ActionSource.values)}"]
    return []


def event_timestamp(value: object, action_source: str, *, now: datetime | None = None) -> int:
    """Return ``value`` (a datetime or Unix seconds) as Unix seconds inside Meta's window."""
    now = now or timezone.now()
    if isinstance(value, datetime):
        if timezone.is_naive(value):
            value = timezone.make_aware(value)
        seconds = int(value.timestamp())
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        if value > _MILLISECONDS_THRESHOLD:
            raise EventValidationError("event_time looks like milliseconds; Meta wants seconds")
        seconds = int(value)
    else:
        raise EventValidationError("event_time must be a datetime or Unix seconds")
    moment = datetime.fromtimestamp(seconds, tz=now.tzinfo)
    if moment > now + MAX_FUTURE_SKEW:
        raise EventValidationError("event_time is in the future")
    limit = max_event_age(action_source)
    if moment < now - limit:
        raise EventValidationError(
            f"event_time is more than {limit.days} days old; Meta rejects it"
        )
    return seconds


def check_website_fields(
    action_source: str, event_source_url: object, user_data: Mapping[str, Any]
) -> list[str]:
    problems = []
    if event_source_url is not None:
        parts = urlsplit(event_source_url) if isinstance(event_source_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append("event_source_url must be an absolute http(s) URL")
    if action_source == ActionSource.WEBSITE:
        if event_source_url is None:
            problems.append(
                "website event without event_source_url: "
                "provide event_source_url or another action_source"
            )
        if "client_user_agent" not in user_data:
            problems.append(
                "website event without client_user_agent: "
                "provide request_context or another action_source"
            )
    return problems


def check_matchable(user_data: Mapping[str, Any]) -> list[str]:
    keys = set(user_data)
    if any(keys <= weak for weak in WEAK_USER_DATA_SETS):
        named = ", ".join(sorted(keys)) or "none"
        return [
            (
                f"user_data cannot be matched to a person (it has only: {named}); "
                "add em, ph, external_id, fbp, fbc or client_ip_address"
            )
        ]
    return []


def clean_custom_data(custom_data: object, event_name: str) -> dict[str, Any]:
    """Return ``custom_data`` as plain JSON values; raise listing every value that is not."""
    if custom_data is None:
        custom_data = {}
    if not isinstance(custom_data, Mapping):
        raise EventValidationError("custom_data must be a dict")
    problems: list[str] = []
    cleaned = _to_json(custom_data, "custom_data", problems)
    assert isinstance(cleaned, dict)  # noqa: S101 - a Mapping always converts to a dict
    problems += _check_money(cleaned, event_name)
    if problems:
        raise EventValidationError(problems)
    return cleaned


def _check_money(custom_data: dict[str, Any], event_name: str) -> list[str]:
    problems = []
    value, currency = custom_data.get("value"), custom_data.get("currency")
    if event_name == "Purchase":
        if value is None:
            problems.append("Purchase needs custom_data value")
        if currency is None:
            problems.append("Purchase needs custom_data currency")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        problems.append("custom_data value must be a number")
    elif value is not None and value < 0:
        problems.append("custom_data value must not be negative")
    if currency is not None:
        code = currency.strip().upper() if isinstance(currency, str) else None
        if code is None or len(code) != 3 or pycountry.currencies.get(alpha_3=code) is None:
            problems.append("custom_data currency must be an ISO 4217 code such as 'EUR'")
        else:
            custom_data["currency"] = code
    return problems


def _to_json(value: object, path: str, problems: list[str]) -> Any:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float | Decimal):
        if not math.isfinite(value):
            problems.append(f"{path} is not a finite number")
            return None
        # JSON has no decimals; whole amounts stay integers so "10" never becomes "10.0".
        return (
            int(value)
            if isinstance(value, Decimal) and value == value.to_integral()
            else float(value)
        )
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"{path} has a key that is not a string")
                continue
            result[key] = _to_json(item, f"{path}[{key!r}]", problems)
        return result
    if isinstance(value, list | tuple):
        return [_to_json(item, f"{path}[{index}]", problems) for index, item in enumerate(value)]
    problems.append(f"{path} is a {type(value).__name__}, which JSON cannot carry")
    return None


def check_limited_data_use(value: object) -> list[str]:
    """``{"country": int, "state": int}`` (Meta: 1 and 1000 for California, 0 and 0 to let
    it geolocate) or None."""
    if value is None:
        return []
    if (
        not isinstance(value, Mapping)
        or set(value) != {"country", "state"}
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values())
    ):
        return ["limited_data_use must be None or {'country': <int>, 'state': <int>}"]
    return []
