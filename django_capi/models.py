"""The outbox: one row per event Meta should receive, written in the business transaction."""

from __future__ import annotations

from typing import Any, Self

from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q
from django.db.models.fields.json import (
    ContainedBy,
    DataContains,
    HasAnyKeys,
    HasKey,
    HasKeys,
    JSONExact,
    KeyTransform,
    KeyTransformFactory,
)
from django.db.models.functions import Coalesce, Now
from django.db.models.lookups import In
from django.db.models.sql.compiler import SQLCompiler
from django.utils.translation import gettext_lazy as _

from .constants import ActionSource, match_key_bits


class PayloadField(models.JSONField):
    """A ``JSONField`` kept on PostgreSQL as ``json``, the text written, not ``jsonb``.

    The outbox writes a payload once and sends it as stored: a drainer reads it back as text
    and puts it in the request unchanged. ``jsonb`` would parse it on the way in and print
    it anew on every read (~15 ms per 1,000 payloads, the largest share of a claim);
    ``json`` hands the stored text over as it is. ``json`` has none of ``jsonb``'s operators,
    so every lookup and key transform of a payload reads it as ``jsonb`` (a parse per row:
    fine for maintenance and an integrator's queries; the hot paths query no payload, and
    ``OutboxEvent.match_keys`` answers the health page). Other databases store JSON as text
    already and are unchanged.
    """

    def db_type(self, connection: BaseDatabaseWrapper) -> str | None:
        if connection.vendor == "postgresql":
            return "json"
        return super().db_type(connection)

    def from_db_value(self, value: Any, expression: Any, connection: BaseDatabaseWrapper) -> Any:
        # psycopg decodes the json column itself. A key transform's value is jsonb
        # (_JsonbKeyTransform), which Django has psycopg hand over as text: decoded here.
        if connection.vendor == "postgresql" and not isinstance(expression, KeyTransform):
            return value
        return super().from_db_value(value, expression, connection)

    def get_transform(self, name: str) -> Any:
        transform = super().get_transform(name)
        if isinstance(transform, KeyTransformFactory):
            return _JsonbKeyTransformFactory(name)
        return transform


class _JsonbKeyTransform(KeyTransform):
    """``payload__key…``, as ``jsonb`` on PostgreSQL, so its lookups find their operators."""

    def as_postgresql(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper
    ) -> tuple[str, Any]:
        sql, params = super().as_postgresql(compiler, connection)
        return f"({sql})::jsonb", params


class _JsonbKeyTransformFactory(KeyTransformFactory):
    def __call__(self, *args: Any, **kwargs: Any) -> _JsonbKeyTransform:
        return _JsonbKeyTransform(self.key_name, *args, **kwargs)


class _ReadAsJsonb:
    """A lookup on the payload column itself that reads it as ``jsonb`` on PostgreSQL."""

    def process_lhs(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, lhs: Any = None
    ) -> tuple[str, Any]:
        sql, params = super().process_lhs(compiler, connection, lhs)  # type: ignore[misc]
        if connection.vendor == "postgresql" and not isinstance(lhs or self.lhs, KeyTransform):  # type: ignore[attr-defined]
            sql = f"({sql})::jsonb"
        return sql, params


for _lookup in (JSONExact, DataContains, ContainedBy, HasKey, HasKeys, HasAnyKeys, In):
    PayloadField.register_lookup(
        type(f"Payload{_lookup.__name__}", (_ReadAsJsonb, _lookup), {}), _lookup.lookup_name
    )


class OutboxEvent(models.Model):
    """One Conversions API event and everything that happened to it.

    ``payload`` is the Meta-ready event with user data already hashed; raw PII never lands
    here. A row is unique per (``event_id``, ``pixel_id``, ``event_name``): Meta's own
    deduplication key, so saving an order twice can never report two purchases.
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        DELIVERED = "delivered", _("Delivered")
        FAILED = "failed", _("Failed")
        CANCELLED = "cancelled", _("Cancelled")

    class FailureReason(models.TextChoices):
        INVALID = "invalid", _("Invalid event")
        EXPIRED = "expired", _("Too old for Meta")
        REJECTED = "rejected", _("Rejected by Meta")
        EXHAUSTED = "exhausted", _("Retries exhausted")

    pixel_id = models.CharField(_("pixel"), max_length=32)
    event_name = models.CharField(_("event name"), max_length=50)
    event_id = models.CharField(_("event id"), max_length=100)
    event_time = models.DateTimeField(_("event time"))
    action_source = models.CharField(
        _("action source"), max_length=32, choices=ActionSource.choices
    )
    payload = PayloadField(_("payload"), default=dict, blank=True)
    #: Which of ``constants.MATCH_KEYS`` the payload's ``user_data`` has, one bit each: what
    #: the health page's coverage counts, without reading payloads. Kept by every write of
    #: the payload (the capture, ``save``, the purge's scrub); 0 for rows written by SQL.
    match_keys = models.PositiveSmallIntegerField(
        _("match keys"), default=0, db_default=0, editable=False
    )

    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING
    )
    failure_reason = models.CharField(
        _("failure reason"), max_length=16, choices=FailureReason.choices, blank=True
    )
    last_error = models.TextField(_("last error"), blank=True)
    warnings = models.JSONField(
        _("warnings"), default=list, blank=True, help_text=_("Values dropped while normalizing.")
    )

    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt"), db_default=Now())
    lease_token = models.UUIDField(_("lease token"), null=True, blank=True)
    leased_until = models.DateTimeField(_("leased until"), null=True, blank=True)
    # Rows a transient failure interrupted while a refused batch was being halved: they are
    # sent again as this group, apart from other rows, so the search for the bad event
    # resumes where it stopped instead of starting over (and costing everyone an attempt).
    bisect_group = models.UUIDField(_("bisect group"), null=True, blank=True, editable=False)

    created_at = models.DateTimeField(_("created"), db_default=Now())
    delivered_at = models.DateTimeField(_("delivered"), null=True, blank=True)

    # Meta's last answer, kept on the row for filtering; the full history is DeliveryAttempt.
    #: The request that carried the last answer: how a delivered event reaches its history
    #: without a row of its own. Neither a constraint nor an index: every write-back sets it,
    #: nothing looks rows up by it, and a purged request simply leaves it pointing nowhere.
    last_attempt = models.ForeignKey(
        "DeliveryAttempt",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        null=True,
        blank=True,
        editable=False,
        related_name="+",
        verbose_name=_("last request"),
    )
    last_attempt_at = models.DateTimeField(_("last attempt"), null=True, blank=True)
    last_http_status = models.PositiveSmallIntegerField(_("HTTP status"), null=True, blank=True)
    last_error_code = models.IntegerField(_("Meta error code"), null=True, blank=True)
    last_error_subcode = models.IntegerField(_("Meta error subcode"), null=True, blank=True)
    last_error_type = models.CharField(_("Meta error type"), max_length=100, blank=True)
    last_events_received = models.PositiveIntegerField(_("events received"), null=True, blank=True)
    last_duration_ms = models.PositiveIntegerField(_("duration (ms)"), null=True, blank=True)
    fbtrace_id = models.CharField(_("fbtrace id"), max_length=64, blank=True)

    # No index: every index costs each checkout INSERT and each write-back an entry, and an
    # object's rows are found by source_id alone (capi_outbox_source_id), a handful of rows.
    source_type = models.ForeignKey(
        ContentType,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )
    source_id = models.CharField(_("source object id"), max_length=64, blank=True)
    source = GenericForeignKey("source_type", "source_id")

    class Meta:
        verbose_name = _("outbox event")
        verbose_name_plural = _("outbox events")
        permissions = [("replay_outboxevent", _("Can replay, send now and cancel outbox events"))]
        constraints = [
            # Event id first: the one column every lookup by id names (the admin's search,
            # ``events.recorded_events`` with its pixel, a save's own key), so this one index
            # serves them all and the outbox needs no index of event ids besides.
            models.UniqueConstraint(
                fields=["event_id", "pixel_id", "event_name"], name="capi_outbox_unique_event"
            ),
        ]
        indexes = [
            # The drainer's only question, "which pending rows are due?", stays an index range
            # scan over the pending rows alone however many delivered rows pile up.
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status="pending"),
                name="capi_outbox_due",
            ),
            # The admin's changelist (newest first), its date hierarchy and the purge read by
            # creation time alone.
            models.Index(fields=["created_at"], name="capi_outbox_created"),
            # The health dashboard's delivered and failed series, and the purge, read by time
            # within one status: index-only range scans at millions of rows.
            models.Index(
                fields=["delivered_at"],
                condition=models.Q(status="delivered"),
                name="capi_outbox_delivered",
            ),
            models.Index(
                Coalesce("last_attempt_at", "created_at"),
                condition=models.Q(status="failed"),
                name="capi_outbox_failed",
            ),
            # Failed and cancelled rows are few: their counts, the admin's filter by either
            # (newest first) and the replay. No index reads every status: each status has a
            # partial index of its own rows (pending: due; delivered; failed; this one), which
            # a row enters only while it has that status, so a checkout and a delivery each
            # add an entry to one of them, not to an index of all rows. MySQL and MariaDB
            # ignore index conditions: there this is an index of every row by (status,
            # created_at), which finds their pending rows.
            models.Index(
                fields=["status", "created_at"],
                condition=models.Q(status__in=["failed", "cancelled"]),
                name="capi_outbox_failed_cancelled",
            ),
            # The admin's exact search by the order's id (an event id is found through the
            # unique constraint).
            models.Index(fields=["source_id"], name="capi_outbox_source_id"),
        ]

    def __str__(self) -> str:
        return f"{self.event_name} {self.event_id} ({self.status})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        update_fields = kwargs.get("update_fields")
        if update_fields is not None:
            kwargs["update_fields"] = update_fields = set(update_fields)  # any iterable
        writes_payload = "payload" in update_fields if update_fields is not None else True
        if writes_payload and "payload" not in self.get_deferred_fields():
            payload = self.payload if isinstance(self.payload, dict) else {}
            self.match_keys = match_key_bits(payload.get("user_data"))
            if update_fields is not None:
                update_fields.add("match_keys")
        super().save(*args, **kwargs)


class DeliveryAttemptQuerySet(models.QuerySet["DeliveryAttempt"]):
    def for_event(self, event: OutboxEvent) -> Self:
        """The requests that carried ``event``: those linked to it, and its last one."""
        linked = AttemptEvent.objects.using(self.db).filter(event=event.pk).values("attempt")
        return self.filter(Q(pk__in=linked) | Q(pk=event.last_attempt_id))


class DeliveryAttempt(models.Model):
    """One request to Meta and its answer, written once whatever the number of events in it.

    An event delivered by the request costs no row of its own (its ``last_attempt`` points
    here); every other outcome links the event to the request (``AttemptEvent``), so an
    event's whole history stays one indexed query: ``DeliveryAttempt.objects.for_event``.
    """

    class Outcome(models.TextChoices):
        DELIVERED = "delivered", _("Delivered")
        RETRY = "retry", _("Will retry")
        RATE_LIMITED = "rate_limited", _("Rate limited")
        TOKEN_INVALID = "token_invalid", _("Token or permission error")
        REJECTED = "rejected", _("Rejected")
        BISECTED = "bisected", _("Batch rejected; split to find the bad event")
        FAILED = "failed", _("Failed")

    pixel_id = models.CharField(_("pixel"), max_length=32, blank=True)
    attempted_at = models.DateTimeField(_("attempted"), db_default=Now())
    outcome = models.CharField(_("outcome"), max_length=16, choices=Outcome.choices)
    batch_size = models.PositiveIntegerField(_("events in the request"))
    http_status = models.PositiveSmallIntegerField(_("HTTP status"), null=True, blank=True)
    error_code = models.IntegerField(_("Meta error code"), null=True, blank=True)
    error_subcode = models.IntegerField(_("Meta error subcode"), null=True, blank=True)
    error_type = models.CharField(_("Meta error type"), max_length=100, blank=True)
    error_title = models.CharField(_("Meta error title"), max_length=200, blank=True)
    error_message = models.TextField(_("error"), blank=True)
    fbtrace_id = models.CharField(_("fbtrace id"), max_length=64, blank=True)
    events_received = models.PositiveIntegerField(_("events received"), null=True, blank=True)
    duration_ms = models.PositiveIntegerField(_("duration (ms)"))
    # Meta's "messages": warnings about the events it accepted [APE].
    messages = models.JSONField(_("Meta's messages"), default=list, blank=True)

    objects = DeliveryAttemptQuerySet.as_manager()

    class Meta:
        verbose_name = _("delivery attempt")
        verbose_name_plural = _("delivery attempts")
        indexes = [
            # The failure-rate alert reads the last hour of requests; the purge, the oldest.
            models.Index(fields=["attempted_at"], name="capi_attempt_time"),
        ]

    def __str__(self) -> str:
        return f"{self.outcome} ({self.http_status})"


class AttemptEvent(models.Model):
    """An event a request carried that it did not deliver (retried, refused, halved, held
    back by a pause or a broken token), and what became of it."""

    attempt = models.ForeignKey(DeliveryAttempt, on_delete=models.CASCADE, related_name="links")
    event = models.ForeignKey(OutboxEvent, on_delete=models.CASCADE, related_name="+")
    outcome = models.CharField(_("outcome"), max_length=16, choices=DeliveryAttempt.Outcome.choices)

    class Meta:
        verbose_name = _("event of a delivery attempt")
        verbose_name_plural = _("events of delivery attempts")

    def __str__(self) -> str:
        return f"{self.event_id} in {self.attempt_id}: {self.outcome}"


class PixelState(models.Model):
    """Delivery state shared by every worker sending to one pixel: rate-limit pauses and the
    circuit that stops sending while the token or its permissions are broken."""

    pixel_id = models.CharField(_("pixel"), max_length=32, unique=True)
    paused_until = models.DateTimeField(_("paused until"), null=True, blank=True)
    # Rate limits in a row without Meta saying how long: each pause doubles.
    rate_limit_streak = models.PositiveSmallIntegerField(_("rate limits in a row"), default=0)
    circuit_opened_at = models.DateTimeField(_("circuit open since"), null=True, blank=True)
    next_probe_at = models.DateTimeField(_("next probe"), null=True, blank=True)
    # An HMAC of the token that failed, never the token: a new token is probed at once.
    token_fingerprint = models.CharField(_("token fingerprint"), max_length=64, blank=True)
    last_error = models.TextField(_("last error"), blank=True)

    class Meta:
        verbose_name = _("pixel state")
        verbose_name_plural = _("pixel states")

    def __str__(self) -> str:
        return self.pixel_id


class AlertState(models.Model):
    """One kind of incident (a backlog, a failure rate) on one pixel and whether it is going
    on: alerts go out when it starts and when it ends, never once per event or per check."""

    kind = models.CharField(_("kind"), max_length=32)
    # Every alert is a pixel's: the outbox and the requests it judges all name theirs.
    pixel_id = models.CharField(_("pixel"), max_length=32)
    active = models.BooleanField(_("active"), default=False)
    since = models.DateTimeField(_("since"), null=True, blank=True)
    message = models.TextField(_("message"), blank=True)

    class Meta:
        verbose_name = _("alert")
        verbose_name_plural = _("alerts")
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "pixel_id"], name="capi_alert_unique_kind_pixel"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} on {self.pixel_id} ({'active' if self.active else 'clear'})"


class Installation(models.Model):
    """One row per database holding an outbox: what makes this installation's event ids its own.

    Written at migrate time (``installation.ensure_installation``), read once per process."""

    #: Always 1: a database holds one installation.
    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    event_id_namespace = models.UUIDField(_("event id namespace"), editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("installation")
        verbose_name_plural = _("installation")
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="django_capi_single_installation")
        ]

    def __str__(self) -> str:
        return str(self.event_id_namespace)
