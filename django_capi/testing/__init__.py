"""Test helpers: a local Graph API emulator that answers like Meta's Conversions endpoint.

``GraphEmulator`` serves ``POST /{version}/{pixel_id}/events`` on 127.0.0.1 with Meta's
validation, whole-request rejection and 48-hour deduplication; ``script()`` feeds it faults
(``GraphError``, ``HttpStatus``, ``Delay``, ``ConnectionReset``, ``WithHeaders``), and
``Conditions`` sets standing faults (rates, latency, a refused token, rejected events). The
``capi_graph`` pytest fixture (registered by the package's pytest plugin) points
``DJANGO_CAPI`` at one for a test.

Names are imported lazily: the pytest plugin imports this package in every pytest run.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = [
    "DEFAULT_ACCESS_TOKEN",
    "REDACTED_TOKEN",
    "Chaos",
    "Conditions",
    "ConnectionReset",
    "Delay",
    "Fault",
    "GraphEmulator",
    "GraphError",
    "HttpStatus",
    "ManualClock",
    "ReceivedEvent",
    "RecordedRequest",
    "WithHeaders",
    "app_usage",
    "business_use_case_usage",
]

if TYPE_CHECKING:
    from .emulator import DEFAULT_ACCESS_TOKEN as DEFAULT_ACCESS_TOKEN
    from .emulator import REDACTED_TOKEN as REDACTED_TOKEN
    from .emulator import GraphEmulator as GraphEmulator
    from .emulator import ManualClock as ManualClock
    from .emulator import ReceivedEvent as ReceivedEvent
    from .emulator import RecordedRequest as RecordedRequest
    from .faults import Chaos as Chaos
    from .faults import Conditions as Conditions
    from .faults import ConnectionReset as ConnectionReset
    from .faults import Delay as Delay
    from .faults import Fault as Fault
    from .faults import GraphError as GraphError
    from .faults import HttpStatus as HttpStatus
    from .faults import WithHeaders as WithHeaders
    from .faults import app_usage as app_usage
    from .faults import business_use_case_usage as business_use_case_usage


_FAULTS = {
    "Chaos",
    "Conditions",
    "ConnectionReset",
    "Delay",
    "Fault",
    "GraphError",
    "HttpStatus",
    "WithHeaders",
    "app_usage",
    "business_use_case_usage",
}


def __getattr__(name: str) -> Any:
    if name in __all__:
        module = ".faults" if name in _FAULTS else ".emulator"
        return getattr(import_module(module, __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
