"""Per-pixel delivery state shared by all workers: rate-limit pauses and the setup circuit.

When Meta says a token is expired or lacks permission (or the pixel or API version is wrong),
every further request fails the same way; sending anyway would burn every event's attempts.
So the pixel's circuit opens: no sends, one alert, a one-event probe every
``TOKEN_PROBE_SECONDS``, and a probe at once when the pixel's configured token (or app
secret) changes. Each pixel has its own token: one pixel's broken setup never holds back
another's events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.db import DatabaseError, transaction
from django.db.models import BooleanField, ExpressionWrapper, F, Q
from django.db.models.functions import Now
from django.utils.crypto import salted_hmac

from . import outbox
from .conf import CapiSettings, PixelSettings
from .models import PixelState

logger = logging.getLogger(__name__)

#: Longest rate-limit pause, whatever a usage header says: a bad header must not stall
#: delivery for days.
MAX_PAUSE_SECONDS = 3600.0
#: First pause for a rate limit that does not say how long it lasts; it doubles while they
#: keep coming.
DEFAULT_PAUSE_SECONDS = 60.0


def token_fingerprint(token: str | None) -> str:
    """Tells tokens apart without storing one: an HMAC keyed with ``SECRET_KEY``."""
    return salted_hmac("django_capi.token", token or "").hexdigest()[:32]


def setup_fingerprint(pixel: PixelSettings) -> str:
    """Tells a pixel's credentials apart: its token, and its app secret when it has one (a
    fixed secret must get a probe at once, as a new token does)."""
    if not pixel.app_secret:
        return token_fingerprint(pixel.access_token)
    return token_fingerprint(f"{pixel.access_token or ''}\x00{pixel.app_secret}")


@dataclass(frozen=True)
class PixelGate:
    """Which pixels a drain must leave alone, and which it may only probe."""

    blocked: frozenset[str]
    probing: frozenset[str]


def gate(using: str, conf: CapiSettings) -> PixelGate:
    """Pixels paused or with an open circuit are blocked; an open circuit whose probe is due,
    or which was opened under other credentials than the pixel has now, is probed. Its
    waiting rows become due. One query while no pixel is in trouble (the drain asks before
    every batch)."""
    states = PixelState.objects.using(using)
    troubled = (
        states.filter(Q(paused_until__gt=Now()) | Q(circuit_opened_at__isnull=False))
        .annotate(
            paused=ExpressionWrapper(Q(paused_until__gt=Now()), output_field=BooleanField()),
            circuit_open=ExpressionWrapper(
                Q(circuit_opened_at__isnull=False), output_field=BooleanField()
            ),
            probe_waits=ExpressionWrapper(Q(next_probe_at__gt=Now()), output_field=BooleanField()),
        )
        .values_list("pixel_id", "token_fingerprint", "paused", "circuit_open", "probe_waits")
    )
    blocked: set[str] = set()
    probing: set[str] = set()
    for pixel_id, fingerprint, paused, circuit_open, probe_waits in troubled:
        waiting = circuit_open and probe_waits
        if waiting and fingerprint != setup_fingerprint(conf.credentials(pixel_id)):
            # New credentials: probe them now rather than at the next probe time.
            states.filter(pixel_id=pixel_id).update(next_probe_at=Now())
            outbox.resume_pixel(using, pixel_id)
            waiting = False
        if paused or waiting:
            blocked.add(pixel_id)
        elif circuit_open:
            probing.add(pixel_id)
    return PixelGate(blocked=frozenset(blocked), probing=frozenset(probing))


def pause(using: str, pixel_id: str, seconds: float | None, error: str) -> float:
    """Stop sending to ``pixel_id`` for ``seconds`` (Meta's estimate), or for a pause that
    doubles with each rate limit in a row; return the pause chosen."""
    state, _ = PixelState.objects.using(using).get_or_create(pixel_id=pixel_id)
    if seconds is None:
        seconds = DEFAULT_PAUSE_SECONDS * 2 ** min(state.rate_limit_streak, 10)
    seconds = min(seconds, MAX_PAUSE_SECONDS)
    delay = timedelta(seconds=seconds)
    PixelState.objects.using(using).filter(pk=state.pk).update(
        paused_until=Now() + delay,
        rate_limit_streak=F("rate_limit_streak") + 1,
        last_error=error,
    )
    _postpone(using, pixel_id, delay)
    return seconds


def open_circuit(
    using: str, pixel_id: str, *, fingerprint: str, probe_seconds: int, error: str
) -> bool:
    """Stop sending to ``pixel_id`` until a probe succeeds. True for the one worker that
    opened it (it raises the alert); False when it was open already. ``fingerprint`` is the
    pixel's ``setup_fingerprint`` at the time: new credentials get a probe at once."""
    delay = timedelta(seconds=probe_seconds)
    state, _ = PixelState.objects.using(using).get_or_create(pixel_id=pixel_id)
    this = PixelState.objects.using(using).filter(pk=state.pk)
    # Opened and its probe time set together: an opened circuit always has its probe.
    with transaction.atomic(using=using):
        opened = bool(this.filter(circuit_opened_at=None).update(circuit_opened_at=Now()))
        this.update(
            next_probe_at=Now() + delay,
            token_fingerprint=fingerprint,
            last_error=error,
        )
    _postpone(using, pixel_id, delay)
    return opened


def _postpone(using: str, pixel_id: str, delay: timedelta) -> None:
    """Postponing the waiting rows only spares claims from scanning them (the gate blocks the
    pixel anyway), so a failure here must not undo the pause or the circuit decided above."""
    try:
        outbox.postpone_pixel(using, pixel_id, delay)
    except DatabaseError:
        logger.exception("django-capi: could not postpone the waiting rows of pixel %s", pixel_id)


def record_success(using: str, pixel_id: str) -> bool:
    """A request went through: the pixel works. True when this closed an open circuit."""
    states = PixelState.objects.using(using).filter(pixel_id=pixel_id)
    closed = states.filter(circuit_opened_at__isnull=False).update(
        circuit_opened_at=None, next_probe_at=None, last_error=""
    )
    states.filter(rate_limit_streak__gt=0).update(rate_limit_streak=0)
    return bool(closed)
