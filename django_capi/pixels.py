"""Per-pixel delivery state shared by all workers: rate-limit pauses and the token circuit.

When Meta says a token is expired or lacks permission, every further request fails the same
way; sending anyway would burn every event's attempts. So the pixel's circuit opens: no
sends, one alert, a probe after ``TOKEN_PROBE_SECONDS``, and at once when the configured
token changes.
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Q
from django.db.models.functions import Now
from django.utils.crypto import salted_hmac

from . import outbox
from .models import PixelState


def token_fingerprint(token: str | None) -> str:
    """Tells tokens apart without storing one: an HMAC keyed with ``SECRET_KEY``."""
    return salted_hmac("django_capi.token", token or "").hexdigest()[:32]


def blocked_pixels(using: str, token: str | None) -> set[str]:
    """Pixels not to send to now. A circuit opened under another token is closed for a probe
    right away, and its waiting rows become due."""
    fingerprint = token_fingerprint(token)
    states = PixelState.objects.using(using)
    replaced = list(
        states.filter(circuit_opened_at__isnull=False, next_probe_at__gt=Now())
        .exclude(token_fingerprint=fingerprint)
        .values_list("pixel_id", flat=True)
    )
    for pixel_id in replaced:
        states.filter(pixel_id=pixel_id).update(next_probe_at=Now())
        outbox.resume_pixel(using, pixel_id)
    return set(
        states.filter(
            Q(paused_until__gt=Now()) | Q(circuit_opened_at__isnull=False, next_probe_at__gt=Now())
        ).values_list("pixel_id", flat=True)
    )


def pause(using: str, pixel_id: str, seconds: float, error: str) -> None:
    delay = timedelta(seconds=seconds)
    PixelState.objects.using(using).update_or_create(
        pixel_id=pixel_id, defaults={"paused_until": Now() + delay, "last_error": error}
    )
    outbox.postpone_pixel(using, pixel_id, delay)


def open_circuit(
    using: str, pixel_id: str, *, token: str | None, probe_seconds: int, error: str
) -> bool:
    """Stop sending to ``pixel_id`` until a probe succeeds. True when it was closed before."""
    delay = timedelta(seconds=probe_seconds)
    state, _ = PixelState.objects.using(using).get_or_create(pixel_id=pixel_id)
    was_closed = state.circuit_opened_at is None
    updated = PixelState.objects.using(using).filter(pk=state.pk)
    if was_closed:
        # Only the worker whose UPDATE flips the circuit counts as having opened it.
        was_closed = bool(updated.filter(circuit_opened_at=None).update(circuit_opened_at=Now()))
    updated.update(
        next_probe_at=Now() + delay,
        token_fingerprint=token_fingerprint(token),
        last_error=error,
    )
    outbox.postpone_pixel(using, pixel_id, delay)
    return was_closed


def close_circuit(using: str, pixel_id: str) -> bool:
    """A request went through: the token works. True when a circuit was open."""
    return bool(
        PixelState.objects.using(using)
        .filter(pixel_id=pixel_id, circuit_opened_at__isnull=False)
        .update(circuit_opened_at=None, next_probe_at=None, last_error="")
    )
