"""Meta's rules for one server event, checked before anything is stored.

Each check returns human-readable problems that say what to fix; none of them contains a raw
user value, because problems are stored on the outbox row.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

import pycountry
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone
from django.utils.functional import Promise

from .constants import ActionSource
from .exceptions import EventValidationError
from .normalize import normalize_user_data
from .text import MAX_BROWSER_VALUE_LENGTH, is_storable, storable

#: Meta's limit for custom event names [PXCT], and the outbox column's.
MAX_EVENT_NAME_LENGTH = 50
#: The outbox column's length (``OutboxEvent.event_id``): Meta documents no limit [SEP].
MAX_EVENT_ID_LENGTH = 100
#: Meta refuses a whole request when one event is older than this [SEP].
MAX_EVENT_AGE = timedelta(days=7)
MAX_PHYSICAL_STORE_EVENT_AGE = timedelta(days=62)
#: Meta documents no limit for future timestamps (meta-capi.md §2, UNCONFIRMED), so a future
#: ``event_time`` is sent as it is; beyond this skew the row carries a warning, because a
#: server clock that runs fast is the likeliest cause.
MAX_FUTURE_SKEW = timedelta(seconds=300)
#: Meta wants Unix *seconds* [SEP] (meta-capi.md §2); read as seconds, anything above this is
#: after the year 5000, so it is surely milliseconds, the commonest timestamp bug: failed
#: locally, since sending it could only be wrong.
_MILLISECONDS_THRESHOLD = 10**11
#: Deeper ``custom_data`` is a mistake (Meta's deepest standard value is ``contents``, a
#: list of objects), and converting it would exhaust Python's recursion limit.
MAX_CUSTOM_DATA_DEPTH = 20
#: Characters a URL may carry as they are; everything else is percent-encoded (RFC 3986).
_URL_SAFE = ";/?:@&=+$,-_.!~*'()#[]%"
_PARTIAL_ESCAPE = re.compile(r"%[0-9A-Fa-f]?\Z")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")

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


#: ``ActionSource.values`` builds its list from the enum on every call.
_ACTION_SOURCES = frozenset(ActionSource.values)


def check_action_source(action_source: object) -> list[str]:
    if not isinstance(action_source, str) or action_source not in _ACTION_SOURCES:
        return [f"action_source must be one of {', '.join(ActionSource.values)}"]
    return []


def check_phone_region(phone_region: object) -> list[str]:
    if phone_region is None:
        return []
    if isinstance(phone_region, str):
        try:
            normalize_user_data({}, phone_region=phone_region, default_phone_region=None)
        except ValueError:
            pass
        else:
            return []
    return ["phone_region must be a country code such as 'US'"]


def event_timestamp(
    value: object,
    action_source: str,
    *,
    now: datetime | None = None,
    warnings: list[str] | None = None,
) -> int:
    """Return ``value`` (a datetime or Unix seconds) as Unix seconds inside Meta's window.

    A time in the future is returned as it is, with a line in ``warnings`` past the skew."""
    now_seconds = (now or timezone.now()).timestamp()
    seconds: float | int | Decimal
    if isinstance(value, datetime):
        try:
            seconds = (
                timezone.make_aware(value) if timezone.is_naive(value) else value
            ).timestamp()
        except (ValueError, OverflowError):
            raise EventValidationError(
                "event_time is a datetime outside any usable range"
            ) from None
        if seconds > _MILLISECONDS_THRESHOLD:
            # Past the year 5000 the row's own event_time could overflow a datetime.
            raise EventValidationError("event_time is a datetime after the year 5000")
    elif _is_number(value):
        assert isinstance(value, int | float | Decimal)  # noqa: S101 - for mypy
        # Compared as they are: a huge int would overflow a float.
        if value > _MILLISECONDS_THRESHOLD * 1000:
            raise EventValidationError("event_time is not a Unix time; Meta wants seconds")
        if value > _MILLISECONDS_THRESHOLD:
            raise EventValidationError("event_time looks like milliseconds; Meta wants seconds")
        seconds = value
    else:
        raise EventValidationError("event_time must be a datetime or Unix seconds")
    if seconds > now_seconds + MAX_FUTURE_SKEW.total_seconds() and warnings is not None:
        warnings.append(
            f"event_time is {int(float(seconds) - now_seconds)} s in the future; Meta documents no"
            " limit, sent as is — is the server clock right?"
        )
    limit = max_event_age(action_source)
    if seconds < now_seconds - limit.total_seconds():
        raise EventValidationError(
            f"event_time is more than {limit.days} days old; Meta rejects it"
        )
    return int(seconds)


def clean_event_source_url(
    url: object, action_source: str, problems: list[str], warnings: list[str]
) -> str | None:
    """The page of the event, percent-encoded where a browser would encode it.

    Meta requires an absolute http(s) URL for website events only [SEP], [BP]; for other
    events it is optional, and one that is not a string is dropped with a warning."""
    website = action_source == ActionSource.WEBSITE
    if url is None or url == "":
        if website:
            problems.append(
                "website event without event_source_url (Meta requires it for website "
                "events): provide event_source_url or another action_source"
            )
        return None
    if not isinstance(url, str):
        if website:
            problems.append("event_source_url must be an absolute http(s) URL")
        else:
            warnings.append("event_source_url: not a string; dropped")
        return None
    encoded, web = _web_url(url)
    url = _bounded_url("event_source_url", encoded, warnings)
    if website and not web:
        problems.append(
            "event_source_url must be an absolute http(s) URL (Meta requires the page's "
            "address for website events)"
        )
    return url


def clean_referrer_url(url: object, warnings: list[str]) -> str | None:
    """The referrer, optional for Meta: one that is not an http(s) URL is dropped."""
    if url is None or url == "":
        return None
    encoded, web = _web_url(url) if isinstance(url, str) else ("", False)
    if not web:
        warnings.append("referrer_url: not an absolute http(s) URL; dropped")
        return None
    return _bounded_url("referrer_url", encoded, warnings)


def _bounded_url(key: str, url: str, warnings: list[str]) -> str:
    """``url`` (percent-encoded) cut to ``MAX_BROWSER_VALUE_LENGTH``, never inside an escape
    nor inside the escapes of one UTF-8 character: the page's address and path stay, which
    is what Meta reads from it."""
    if len(url) <= MAX_BROWSER_VALUE_LENGTH:
        return url
    warnings.append(f"{key}: longer than {MAX_BROWSER_VALUE_LENGTH} characters; cut to that length")
    cut = _PARTIAL_ESCAPE.sub("", url[:MAX_BROWSER_VALUE_LENGTH])
    start = len(cut)
    while start >= 3 and _ESCAPE.fullmatch(cut, start - 3, start):
        start -= 3
    encoded = bytes.fromhex(cut[start:].replace("%", ""))
    # The last byte that starts a character (UTF-8's continuation bytes are 10xxxxxx): if
    # fewer bytes follow it than it announces, the character was cut in two.
    for back in range(1, min(4, len(encoded)) + 1):
        lead = encoded[-back]
        if lead & 0xC0 != 0x80:
            length = 4 if lead >= 0xF0 else 3 if lead >= 0xE0 else 2 if lead >= 0xC0 else 1
            if length > back:
                cut = cut[: len(cut) - 3 * back]
            break
    return cut


@lru_cache(maxsize=256)
def _web_url(url: str) -> tuple[str, bool]:
    """``url`` encoded, and whether it is an absolute http(s) URL. Cached: a shop's events
    come from a few pages (their addresses scrubbed of personal data before they get here),
    and ``quote`` and ``urlsplit`` are written in Python."""
    encoded = _encode_url(url)
    return encoded, _is_web_url(encoded)


def _encode_url(url: str) -> str:
    # Spaces, quotes, non-ASCII and control characters are percent-encoded as browsers do;
    # NUL and lone surrogates first become U+FFFD, which UTF-8 can encode.
    return quote(storable(url.strip()), safe=_URL_SAFE)


def _is_web_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[": an unterminated IPv6 host
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def check_website_fields(action_source: str, user_data: Mapping[str, Any]) -> list[str]:
    if action_source == ActionSource.WEBSITE and "client_user_agent" not in user_data:
        return [
            (
                "website event without client_user_agent (Meta requires it for website "
                "events): provide request_context or another action_source"
            )
        ]
    return []


#: The keys of the weak sets: data with any other key is matchable.
_WEAK_KEYS = frozenset().union(*WEAK_USER_DATA_SETS)


def check_matchable(user_data: Mapping[str, Any]) -> list[str]:
    if not _WEAK_KEYS.issuperset(user_data):
        return []
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


def clean_custom_data(
    custom_data: object, event_name: str, warnings: list[str] | None = None
) -> dict[str, Any]:
    """Return ``custom_data`` as plain JSON values; raise listing every value that is not.

    Values are converted the way ``DjangoJSONEncoder`` converts them (dates, times, UUIDs,
    decimals, lazy strings); strings lose NUL and lone surrogates, which no database stores.
    What Meta would still take becomes a line in ``warnings`` instead of a failure."""
    warnings = [] if warnings is None else warnings
    if custom_data is None:
        custom_data = {}
    if not isinstance(custom_data, Mapping):
        raise EventValidationError("custom_data must be a dict")
    problems: list[str] = []
    cleaned = _plain_copy(custom_data, 0) if type(custom_data) is dict else _UNUSUAL
    if cleaned is _UNUSUAL:
        converter = _JsonConverter(problems, warnings)
        cleaned = converter.convert(custom_data, ("custom_data",), depth=0)
    assert isinstance(cleaned, dict)  # noqa: S101 - a Mapping always converts to a dict
    required = {"value", "currency"} if event_name == "Purchase" else set()
    for key in [key for key, value in cleaned.items() if value is None and key not in required]:
        del cleaned[key]
        warnings.append(f"custom_data[{key!r}] is None; dropped")
    problems += _check_money(cleaned, event_name, warnings)
    if problems:
        raise EventValidationError(problems)
    return cleaned


def _check_money(custom_data: dict[str, Any], event_name: str, warnings: list[str]) -> list[str]:
    problems = []
    value, currency = custom_data.get("value"), custom_data.get("currency")
    if event_name == "Purchase":
        # Meta: value and currency are "Required for purchase events" [STD], [PXREF]; a
        # Purchase without currency is rejected (2804010).
        if value is None:
            problems.append("Purchase needs custom_data value (Meta requires it for purchases)")
        if currency is None:
            problems.append("Purchase needs custom_data currency (Meta rejects it without)")
    if isinstance(value, str):
        # Meta's own fbc example sends "142.52" [FBC]; a number is what its docs describe.
        try:
            number: Decimal | None = Decimal(value.strip())
        except InvalidOperation:
            number = None
        if number is not None and number.is_finite() and number.adjusted() < _MAX_INT_DIGITS:
            value = custom_data["value"] = _json_number(number)
    if value is not None and not _is_number(value):
        problems.append("custom_data value must be a number (or a numeric string)")
    elif isinstance(value, int | float) and value < 0:
        # Meta documents no sign rule (meta-capi.md §10): a refund may well be negative.
        warnings.append("custom_data value is negative; sent as it is")
    if currency is not None:
        code = currency.strip().upper() if isinstance(currency, str) else None
        if code is None or len(code) != 3 or not _is_iso_4217(code):
            problems.append("custom_data currency must be an ISO 4217 code such as 'EUR'")
        else:
            custom_data["currency"] = code
    return problems


#: Codes ISO 4217 withdrew lately (for XCG in 2025, the euro in 2026) that pycountry no
#: longer lists but shops and Meta's currency list still use: Meta decides on them.
_WITHDRAWN_CURRENCIES = frozenset({"ANG", "BGN"})


@lru_cache(maxsize=256)
def _is_iso_4217(code: str) -> bool:
    return code in _WITHDRAWN_CURRENCIES or pycountry.currencies.get(alpha_3=code) is not None


def _is_number(value: object) -> bool:
    if isinstance(value, Decimal):
        return value.is_finite()
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


#: Python refuses to print integers of more than 4,300 digits (``sys.int_info``), so JSON
#: cannot carry them; no amount or id Meta knows comes near.
_MAX_INT_DIGITS = 4000
_TOO_LARGE = 10**_MAX_INT_DIGITS


def _json_number(value: Decimal) -> int | float | Decimal:
    """``value`` as a JSON number: whole amounts stay integers, so "10" never becomes "10.0".
    A value that is not finite or too large is returned as it is, for the caller to reject."""
    if not value.is_finite() or value.adjusted() >= _MAX_INT_DIGITS:
        return value
    if value == value.to_integral():
        return int(value)
    return float(value)


#: Where a value sits in ``custom_data``: keys and list positions after the name of the root.
#: Formatted (``_where``) only when a problem or warning names it.
_Path = tuple[str | int, ...]


def _where(path: _Path) -> str:
    return str(path[0]) + "".join(
        f"[{step}]" if isinstance(step, int) else f"[{step!r}]" for step in path[1:]
    )


def _plain(item: object) -> bool:
    """An ASCII str without NUL or an int of usual size: its own JSON value (the common case,
    told apart without a call to ``convert``)."""
    if type(item) is str:
        return item.isascii() and "\x00" not in item
    return type(item) is int and -_TOO_LARGE < item < _TOO_LARGE


#: What ``_plain_copy`` returns for a value it leaves to ``_JsonConverter``.
_UNUSUAL: Any = object()


def _plain_copy(value: dict[Any, Any] | list[Any], depth: int) -> Any:
    """``value`` as ``_JsonConverter`` converts it, when every value in it is of the kinds
    shops send (dicts with storable string keys, lists, storable strings, finite numbers,
    booleans, None) and converts without a problem or a warning; else ``_UNUSUAL``, and the
    converter, which says what and where, walks it again. Without the converter's
    bookkeeping (paths, the containers being walked) this walk costs a third of its: a
    cycle only shows as a value nested too deep, and then the converter finds it."""
    if depth >= MAX_CUSTOM_DATA_DEPTH:
        return _UNUSUAL
    depth += 1
    if type(value) is dict:
        result: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str or not _plain_text(key):
                return _UNUSUAL
            item = _plain_value(item, depth)
            if item is _UNUSUAL:
                return _UNUSUAL
            result[key] = item
        return result
    items: list[Any] = []
    for item in value:
        item = _plain_value(item, depth)
        if item is _UNUSUAL:
            return _UNUSUAL
        items.append(item)
    return items


def _plain_text(text: str) -> bool:
    """Whether ``text`` is stored as it is (ASCII without NUL is, the common case, at once)."""
    return text.isascii() and "\x00" not in text or is_storable(text)


def _plain_value(item: Any, depth: int) -> Any:
    """One value of a container ``_plain_copy`` walks: its JSON value, or ``_UNUSUAL``."""
    kind = type(item)
    if kind is str:
        return item if _plain_text(item) else _UNUSUAL
    if kind is int:
        return item if -_TOO_LARGE < item < _TOO_LARGE else _UNUSUAL
    if kind is dict or kind is list:
        return _plain_copy(item, depth)
    if kind is Decimal:
        number = _json_number(item)
        if type(number) is Decimal or (type(number) is float and not math.isfinite(number)):
            return _UNUSUAL
        return number
    return item if _plain_scalar(item, kind) else _UNUSUAL


def _plain_scalar(item: object, kind: type) -> bool:
    """A finite float, a bool or None: its own JSON value."""
    if kind is float:
        return math.isfinite(item)  # type: ignore[arg-type]
    return item is None or kind is bool


class _JsonConverter:
    """Turns one ``custom_data`` into JSON values, noting problems and warnings by path.

    One walk validates the value and makes it storable (no NUL, no lone surrogate: ``text``):
    the outbox stores the result as it is. The common types are recognised by their exact
    type first; subclasses and the rarer types take the general checks after."""

    def __init__(self, problems: list[str], warnings: list[str]) -> None:
        self.problems = problems
        self.warnings = warnings
        self.path_ids: set[int] = set()

    def convert(self, value: object, path: _Path, depth: int) -> Any:
        if type(value) is str:
            return value if is_storable(value) else self._text(value, path)
        if type(value) is int:
            return value if -_TOO_LARGE < value < _TOO_LARGE else self._number(value, path)
        if type(value) is float:
            return value if math.isfinite(value) else self._number(value, path)
        if type(value) is dict or type(value) is list:
            return self._container(value, path, depth)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return self._text(value, path)
        if isinstance(value, int | float | Decimal):
            return self._number(value, path)
        if isinstance(value, datetime | date | time | timedelta | uuid.UUID | Promise):
            # DjangoJSONEncoder's conversions, so the Pixel and the server see one value.
            return self._text(str(DjangoJSONEncoder().default(value)), path)
        if isinstance(value, Mapping | list | tuple):
            return self._container(value, path, depth)
        self.problems.append(f"{_where(path)} is a {type(value).__name__}, which JSON cannot carry")
        return None

    def _text(self, text: str, path: _Path, suffix: str = "") -> str:
        if not is_storable(text):
            self.warnings.append(
                f"{_where(path)}{suffix}: NUL or lone surrogates, which no database stores, "
                "became U+FFFD"
            )
        return storable(text)

    def _number(self, value: float | Decimal, path: _Path) -> int | float | None:
        if isinstance(value, Decimal):
            value = _json_number(value)
        if isinstance(value, Decimal | float) and not _is_number(value):
            self.problems.append(f"{_where(path)} is not a finite number")
            return None
        if isinstance(value, Decimal) or (isinstance(value, int) and abs(value) >= _TOO_LARGE):
            self.problems.append(f"{_where(path)} is a number too large to send")
            return None
        return value

    def _container(
        self, value: Mapping[Any, Any] | list[Any] | tuple[Any, ...], path: _Path, depth: int
    ) -> Any:
        if id(value) in self.path_ids:
            self.problems.append(f"{_where(path)} contains itself")
            return None
        if depth >= MAX_CUSTOM_DATA_DEPTH:
            self.problems.append(
                f"{_where(path)} is nested more than {MAX_CUSTOM_DATA_DEPTH} levels deep"
            )
            return None
        self.path_ids.add(id(value))
        depth += 1
        try:
            if type(value) is dict or isinstance(value, Mapping):
                result = {}
                for key, item in value.items():
                    if type(key) is not str or not is_storable(key):
                        if not isinstance(key, str):
                            self.problems.append(f"{_where(path)} has a key that is not a string")
                            continue
                        key = self._text(key, path, " key")
                    result[key] = item if _plain(item) else self.convert(item, (*path, key), depth)
                return result
            return [
                item if _plain(item) else self.convert(item, (*path, index), depth)
                for index, item in enumerate(value)
            ]
        finally:
            self.path_ids.discard(id(value))


def check_limited_data_use(value: object) -> list[str]:
    """``{"country": int, "state": int}`` (Meta: 1 and 1000 for California, 0 and 0 to let
    it geolocate) or None."""
    if value is None:
        return []
    if (
        not isinstance(value, Mapping)
        or set(value) != {"country", "state"}
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31
            for v in value.values()
        )
    ):
        return ["limited_data_use must be None or {'country': <int>, 'state': <int>}"]
    return []
