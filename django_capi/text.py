"""Text that every supported database can store.

PostgreSQL refuses NUL (``\\x00``) in ``text`` and ``jsonb``, and a lone surrogate (which
Python strings may hold, from a cookie or a ``surrogateescape`` decode) cannot be encoded as
UTF-8 by any driver. Both reach us from browsers and integrators; both become U+FFFD, the
replacement character, so the rest of the value is kept and the loss stays visible.

Pure: no Django, no settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REPLACEMENT = "\ufffd"
#: The longest user agent or page URL an event keeps. Meta documents no limit; common front
#: ends refuse a header line longer than about 8 KB (nginx's 8k buffers, Apache's and
#: gunicorn's 8190), so no real browser's value is ever cut, while a forged 100 KB one cannot
#: bloat every row and request it is part of.
MAX_BROWSER_VALUE_LENGTH = 8192
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def is_storable(text: str) -> bool:
    """True when ``text`` can be stored as is on every supported database."""
    if text.isascii():  # O(1) in CPython; then NUL is the only character to look for
        return "\x00" not in text
    return _UNSTORABLE.search(text) is None


def storable(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD."""
    if is_storable(text):
        return text if type(text) is str else str.__str__(text)  # a plain str, as re.sub gives
    return _UNSTORABLE.sub(REPLACEMENT, text)


def storable_json(value: Any) -> Any:
    """A copy of a JSON-like ``value`` (dicts, lists, tuples, scalars) whose strings, keys
    included, are all ``storable``. Other objects are returned as they are."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, Mapping):
        return {
            (storable(key) if isinstance(key, str) else key): storable_json(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [storable_json(item) for item in value]
    return value
