"""pytest plugin (entry point ``pytest11``): the ``capi_graph`` fixture.

pytest loads this module in every run of every project that installs django-capi, Django or
not, so importing it must stay cheap: Django and the emulator are imported inside the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from django_capi.testing.emulator import GraphEmulator

#: The token the fixture configures when the settings do not name one.
FIXTURE_ACCESS_TOKEN = "capi-test-token"  # noqa: S105 - a fake for tests


@pytest.fixture
def capi_graph(request: pytest.FixtureRequest) -> Iterator[GraphEmulator]:
    """A running Graph emulator that ``DJANGO_CAPI`` points at for the test.

    ``GRAPH_API_URL`` becomes the emulator's URL and ``ACCESS_TOKEN`` a token it accepts (the
    configured one if set; the tokens of ``PIXELS`` are accepted too); ``WAKE`` becomes
    ``"none"``, so a commit queues no drain task on the developer's broker (the test calls
    ``drain()`` itself): nothing leaves the process but requests to the emulator. The other
    ``DJANGO_CAPI`` keys are kept. Needs pytest-django (its ``settings`` fixture restores the
    settings after the test).
    """
    from django.conf import settings as django_settings

    from django_capi.conf import capi_settings
    from django_capi.testing.emulator import GraphEmulator

    current: dict[str, Any] = dict(getattr(django_settings, "DJANGO_CAPI", None) or {})
    conf = capi_settings()
    token = conf.access_token or FIXTURE_ACCESS_TOKEN
    tokens = {token, *(pixel.access_token for pixel in conf.pixels.values() if pixel.access_token)}
    with GraphEmulator(access_tokens=tokens) as emulator:
        overridden = {
            **current,
            "GRAPH_API_URL": emulator.url,
            "ACCESS_TOKEN": token,
            "WAKE": "none",
        }
        try:
            settings = request.getfixturevalue("settings")  # pytest-django restores it after
        except pytest.FixtureLookupError:
            from django.test import override_settings

            with override_settings(DJANGO_CAPI=overridden):
                yield emulator
        else:
            settings.DJANGO_CAPI = overridden
            yield emulator
