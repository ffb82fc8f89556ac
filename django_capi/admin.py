"""The outbox in the Django admin: what reached Meta, what did not and why, and the buttons
to fix it. Read-only: nobody edits a payload.

Built for millions of rows: no full ``COUNT(*)`` (the paginator counts at most
``CappedPaginator.cap`` rows), no ``DISTINCT`` for the filters' choices, one query for the
rows whatever they show, and exact-match searches that use indexes.

No query string makes the changelist fail: a filter value or search term no row can hold
(a NUL, which PostgreSQL refuses even to compare with, or one longer than the column) finds
nothing; other unusable parameters get Django's "incorrect lookup parameters" answer.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ERROR_FLAG, IGNORED_PARAMS, PAGE_VAR, ChangeList
from django.core.paginator import Paginator
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timezone import localtime
from django.utils.translation import gettext_lazy as _

from . import operations, registry
from .conf import capi_settings
from .constants import STANDARD_EVENTS
from .models import AttemptEvent, DeliveryAttempt, OutboxEvent, PixelState
from .text import is_storable

REPLAY_PERMISSION = "django_capi.replay_outboxevent"

_BADGE_COLOURS = {
    OutboxEvent.Status.PENDING: "#8a6d00",
    OutboxEvent.Status.DELIVERED: "#1e7e34",
    OutboxEvent.Status.FAILED: "#b00020",
    OutboxEvent.Status.CANCELLED: "#5f6368",
}


class CappedPaginator(Paginator):  # type: ignore[type-arg]
    """Counts at most ``cap`` rows: past that, the admin shows "10000+" pages' worth
    instead of scanning the whole table on every page view."""

    cap = 10_000

    @cached_property
    def count(self) -> int:
        rows = cast("QuerySet[OutboxEvent]", self.object_list)
        # Unordered: any ``cap`` rows count the same, and the database may then take them
        # from whichever index holds the filtered rows (a status's partial index) instead
        # of walking the list's order past rows the filter drops.
        return rows.order_by()[: self.cap].count()


class EventNameFilter(admin.SimpleListFilter):
    """Event names declared in code, not a DISTINCT over millions of rows."""

    title = _("event name")
    parameter_name = "event_name"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # Registered ModelEvents, plus Meta's standard names that send_event may record.
        names = {event.event_name for event in registry.all_events()}
        return [(name, name) for name in sorted(names | STANDARD_EVENTS)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return _exact(queryset, "event_name", self.value())


class PixelFilter(admin.SimpleListFilter):
    """Pixels from the settings and the pixel states, not a DISTINCT over the outbox."""

    title = _("pixel")
    parameter_name = "pixel_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        pixel_ids = set(PixelState.objects.values_list("pixel_id", flat=True))
        pixel_ids.update(capi_settings().pixels)
        return [(pixel_id, pixel_id) for pixel_id in sorted(pixel_ids)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return _exact(queryset, "pixel_id", self.value())


def _exact(queryset: QuerySet[Any], field: str, value: str | None) -> QuerySet[Any]:
    if not value:
        return queryset
    return queryset.filter(**{field: value}) if _can_hold(field, value) else queryset.none()


def _can_hold(field: str, value: str) -> bool:
    """Whether a row's ``field`` could be ``value``; if not, nothing is asked of the
    database (PostgreSQL refuses even to compare with a NUL)."""
    max_length = getattr(OutboxEvent._meta.get_field(field), "max_length", None)
    return is_storable(value) and (max_length is None or len(value) <= max_length)


#: Newest requests shown in an event's history: a bisected or often retried event has
#: dozens, and the page must stay one bounded query.
HISTORY_LIMIT = 50


def attempt_history(event: OutboxEvent) -> SafeString:
    """The requests that carried ``event``, newest first, as a table: each with what it
    meant for this event, and Meta's answer (every value escaped)."""
    outcome_here = AttemptEvent.objects.filter(attempt=OuterRef("pk"), event=event.pk)
    attempts = (
        DeliveryAttempt.objects.using(event._state.db or "default")
        .for_event(event)
        .annotate(event_outcome=Subquery(outcome_here.values("outcome")[:1]))
        .order_by("-attempted_at", "-pk")[:HISTORY_LIMIT]
    )
    labels = dict(DeliveryAttempt.Outcome.choices)
    rows = [
        (
            date_format(localtime(attempt.attempted_at), "DATETIME_FORMAT"),
            labels.get(getattr(attempt, "event_outcome", None) or attempt.outcome, attempt.outcome),
            attempt.batch_size,
            _blank(attempt.http_status),
            _blank(attempt.error_code),
            _blank(attempt.error_subcode),
            attempt.error_title,
            attempt.error_message,
            attempt.fbtrace_id,
            _blank(attempt.events_received),
            _messages(attempt.messages),
            attempt.duration_ms,
        )
        for attempt in attempts
    ]
    if not rows:
        return SafeString("—")
    head = format_html_join("", "<th>{}</th>", ((str(title),) for title in HISTORY_COLUMNS))
    body = format_html_join("", "<tr>" + "<td>{}</td>" * len(HISTORY_COLUMNS) + "</tr>", rows)
    return format_html(
        '<table class="capi-history"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>',
        head,
        body,
    )


HISTORY_COLUMNS = (
    _("attempted"),
    _("outcome"),
    _("events in the request"),
    _("HTTP status"),
    _("Meta error code"),
    _("Meta error subcode"),
    _("Meta error title"),
    _("error"),
    _("fbtrace id"),
    _("events received"),
    _("Meta's messages"),
    _("duration (ms)"),
)


def _blank(value: object) -> object:
    return "" if value is None else value


def _messages(messages: Any) -> SafeString:
    """Meta's warnings about the events it accepted [APE], each escaped."""
    items = [message for message in messages or [] if isinstance(message, str)]
    if not items:
        return SafeString("")
    return format_html(
        '<ul style="margin:0;padding-left:1em">{}</ul>',
        format_html_join("", "<li>{}</li>", ((message,) for message in items)),
    )


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "event_name",
        "status_badge",
        "pixel_id",
        "tries",
        "created_at",
        "next_attempt",
        "delivered_at",
        "error_title",
        "source_link",
    )
    list_filter = (
        "status",
        EventNameFilter,
        PixelFilter,
        "action_source",
        "failure_reason",
        "created_at",
    )
    date_hierarchy = "created_at"
    search_fields = ("event_id", "source_id")  # exact and indexed: get_search_results
    search_help_text = _("Exact event id, or the id of the object (an order's pk).")
    list_select_related = ("source_type",)
    show_full_result_count = False
    paginator = CappedPaginator
    list_per_page = 100
    ordering = ("-created_at", "-pk")
    actions = ("replay", "send_now", "cancel")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "event_name",
                    "event_id",
                    "pixel_id",
                    "status",
                    "failure_reason",
                    "last_error",
                    "warnings",
                    "source_link",
                )
            },
        ),
        (
            _("Delivery"),
            {
                "fields": (
                    "attempts",
                    "next_attempt",
                    "delivered_at",
                    "last_attempt_at",
                    "last_http_status",
                    "last_error_code",
                    "last_error_subcode",
                    "last_error_type",
                    "fbtrace_id",
                    "last_events_received",
                    "last_duration_ms",
                )
            },
        ),
        (_("Event"), {"fields": ("event_time", "action_source", "created_at", "payload_json")}),
        (_("Requests that carried it"), {"fields": ("history",)}),
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # view only: a payload is what Meta gets, never hand-edited

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A deleted row is a deduplication key gone (and a lease pulled from under a
        # worker): Cancel stops an event, capi_purge retires old ones.
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[OutboxEvent], search_term: str
    ) -> tuple[QuerySet[OutboxEvent], bool]:
        # Django's "=" is iexact, which no index serves; ids are matched as they are.
        term = search_term.strip()
        if not term:
            return queryset, False
        if not _can_hold("event_id", term):  # the longer of the two
            return queryset.none(), False
        return queryset.filter(Q(event_id=term) | Q(source_id=term)), False

    def get_changelist_instance(self, request: HttpRequest) -> ChangeList:
        _check_parameters(request, self.date_hierarchy)
        return super().get_changelist_instance(request)

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REPLAY_PERMISSION)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [str(name) for _, options in self.fieldsets for name in options["fields"]]

    def get_urls(self) -> list[URLPattern]:
        from .dashboard import health_view

        health = path(
            "health/",
            self.admin_site.admin_view(health_view),
            name="django_capi_outboxevent_health",
        )
        return [health, *super().get_urls()]

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, obj: OutboxEvent) -> SafeString:
        colour = _BADGE_COLOURS.get(OutboxEvent.Status(obj.status), "#5f6368")
        return format_html(
            '<span style="background:{};color:#fff;padding:2px 8px;border-radius:10px;'
            'font-size:11px;white-space:nowrap">{}</span>',
            colour,
            obj.get_status_display(),
        )

    @admin.display(description=_("tries"), ordering="attempts")
    def tries(self, obj: OutboxEvent) -> int:
        return obj.attempts  # "attempts" in a narrower header: the list fits 1280 px

    @admin.display(description=_("next attempt"), ordering="next_attempt_at")
    def next_attempt(self, obj: OutboxEvent) -> datetime | str:
        # Only a pending row is ever tried again; the others keep the time they last had in
        # the column, which would read as a retry to come.
        if obj.status != OutboxEvent.Status.PENDING:
            return str(self.get_empty_value_display())
        # A claim writes only the lease, so a row a worker is sending still shows the time it
        # became due: say it is in flight, and until when another worker may not take it.
        if obj.leased_until is not None and obj.leased_until > timezone.now():
            until = date_format(localtime(obj.leased_until), "DATETIME_FORMAT")
            return str(_("in flight until %(time)s") % {"time": until})
        return obj.next_attempt_at  # the admin shows it in the current time zone

    @admin.display(description=_("last error"))
    def error_title(self, obj: OutboxEvent) -> str:
        # Meta's title (or the start of the message): the column says what, the page why.
        first = obj.last_error.split(": ", 1)[0] if obj.last_error else ""
        return first if len(first) <= 80 else first[:79] + "…"

    @admin.display(description=_("source"))
    def source_link(self, obj: OutboxEvent) -> SafeString | str:
        if obj.source_type is None:
            return "—"
        label = f"{obj.source_type.app_label}.{obj.source_type.model} {obj.source_id}"
        try:
            url = reverse(
                f"admin:{obj.source_type.app_label}_{obj.source_type.model}_change",
                args=[obj.source_id],
            )
        except NoReverseMatch:
            return label  # not in the admin
        return format_html('<a href="{}">{}</a>', url, label)

    @admin.display(description=_("newest first"))
    def history(self, obj: OutboxEvent) -> SafeString:
        return attempt_history(obj)

    @admin.display(description=_("payload (as sent to Meta; user data hashed)"))
    def payload_json(self, obj: OutboxEvent) -> SafeString:
        text = json.dumps(obj.payload, indent=2, sort_keys=True, ensure_ascii=False)
        return format_html('<pre style="white-space:pre-wrap;margin:0">{}</pre>', text)

    def _too_many(self, request: HttpRequest, queryset: QuerySet[OutboxEvent]) -> bool:
        """ "Select all" over more rows than the paginator counts acts on a set nobody saw."""
        if request.POST.get("select_across") != "1":
            return False
        if queryset[: CappedPaginator.cap + 1].count() <= CappedPaginator.cap:
            return False
        self.message_user(
            request,
            f"More than {CappedPaginator.cap} events are selected: narrow the filter, or use "
            "the capi_replay command for bulk work.",
            messages.ERROR,
        )
        return True

    @admin.action(
        description=_("Replay: send the selected failed events again"), permissions=["replay"]
    )
    def replay(self, request: HttpRequest, queryset: QuerySet[OutboxEvent]) -> None:
        if self._too_many(request, queryset):
            return
        result = operations.replay(queryset)
        level = messages.SUCCESS if result.replayed else messages.WARNING
        self.message_user(request, str(result), level)

    @admin.action(
        description=_("Send now: deliver the selected pending events at once"),
        permissions=["replay"],
    )
    def send_now(self, request: HttpRequest, queryset: QuerySet[OutboxEvent]) -> None:
        if self._too_many(request, queryset):
            return
        report = operations.send_now(queryset)
        if report is None:
            self.message_user(request, "The events are sent as soon as this request ends.")
            return
        level = messages.SUCCESS if not report.failed else messages.WARNING
        self.message_user(request, f"Sent now: {report}", level)

    @admin.action(description=_("Cancel: never send the selected events"), permissions=["replay"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[OutboxEvent]) -> None:
        if self._too_many(request, queryset):
            return
        count = operations.cancel(queryset)
        self.message_user(request, f"{count} event(s) cancelled.", messages.SUCCESS)


# Parameters that the filters and the search above check, or that Django never queries with.
_CHECKED_PARAMETERS = frozenset(
    {
        EventNameFilter.parameter_name,
        PixelFilter.parameter_name,
        PAGE_VAR,
        ERROR_FLAG,
        *IGNORED_PARAMS,
    }
)


def _check_parameters(request: HttpRequest, date_hierarchy: str | None) -> None:
    """Raise ``IncorrectLookupParameters`` (the admin then shows its "?e=1" page) for what
    would fail the changelist's queries instead: a NUL or lone surrogate in any other
    lookup (PostgreSQL refuses it), a regular expression (a malformed one fails on every
    database), a lookup inside the payload (none is offered: each would parse every payload
    of the outbox, ``PayloadField``), a date-hierarchy year with no next year (Django
    computes 10000)."""
    for key, values in request.GET.lists():
        if key in _CHECKED_PARAMETERS:
            continue
        if not is_storable(key) or not all(is_storable(value) for value in values):
            raise IncorrectLookupParameters(f"{key}: a value no database can compare")
        if key.endswith(("__regex", "__iregex")):
            raise IncorrectLookupParameters(f"{key}: regular expressions are not offered")
        if key == "payload" or key.startswith("payload__"):
            raise IncorrectLookupParameters(f"{key}: the payload is not searchable")
    if date_hierarchy:
        for value in request.GET.getlist(f"{date_hierarchy}__year"):
            try:
                year = int(value)
            except ValueError:
                continue  # Django says so itself
            if not 1 <= year < 9999:
                raise IncorrectLookupParameters(f"{date_hierarchy}__year: {year} out of range")
