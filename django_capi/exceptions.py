"""Exceptions raised by django-capi.

``CapiError`` is the root of everything that can go wrong with an *event*. Configuration
problems derive from Django's ``ImproperlyConfigured`` instead and deliberately sit outside
that tree, so code that catches event errors never swallows a broken setup.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.core.exceptions import ImproperlyConfigured


class CapiError(Exception):
    """Base class for event errors raised by django-capi."""


class EventValidationError(CapiError, ValueError):
    """An event breaks one of Meta's rules; ``problems`` says what to fix, one line each.

    ``warnings`` are what was dropped or converted on the way, kept on the failed row: they
    often explain a problem ("cannot be matched" because the only email was dropped)."""

    def __init__(self, problems: str | Sequence[str], *, warnings: Sequence[str] = ()) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        self.warnings: tuple[str, ...] = tuple(warnings)
        super().__init__("; ".join(self.problems))


class UnknownUserDataKey(EventValidationError):
    """``user_data`` holds a key Meta does not know (usually a typo such as ``email``)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"unknown user_data key {key!r}")


class CapiConfigurationError(ImproperlyConfigured):
    """``DJANGO_CAPI`` (or its environment variables) is missing a value or holds a bad one."""


class HookError(CapiError):
    """An integrator's ``ModelEvent`` hook raised; the event is recorded as failed, not lost.

    Only the exception's type is kept in the message: it is stored on the outbox row, and an
    exception's text may quote the customer. The traceback goes to the log.
    """

    def __init__(self, where: str, error: BaseException) -> None:
        self.where = where
        super().__init__(f"{where} raised {type(error).__name__}; the traceback is in the log")
