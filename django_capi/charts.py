"""Bar charts drawn on the server: geometry here, SVG markup in a template.

No JavaScript and nothing fetched: the page is one HTML document with inline SVG. Every
number that lands in an SVG attribute is formatted here with a dot as the decimal separator,
because the template engine would localize a float (``12,5`` breaks a coordinate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.utils.formats import date_format, number_format
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

WIDTH = 960
LEFT = 52  # room for the y-axis labels
RIGHT = 8
PANEL_GAP = 36  # between the two panels, room for the second panel's name
HEADER = 20  # above the first panel, room for its name
X_AXIS = 22  # below the last panel, room for the time labels
HEIGHTS = {"delivered": 140, "failed": 64}
BAR_SHARE = 0.72  # of each slot; the rest is the gap between bars
MIN_BAR = 1.5  # a count of 1 next to a count of 10,000 must still show


@dataclass(frozen=True)
class Bar:
    x: str
    y: str
    width: str
    height: str
    title: str


@dataclass(frozen=True)
class Gridline:
    y: str
    label_y: str
    label: str


@dataclass(frozen=True)
class Panel:
    kind: str  # "delivered" or "failed": the CSS class that colours it
    name: str
    name_y: str
    baseline: str
    gridlines: list[Gridline]
    bars: list[Bar]


@dataclass(frozen=True)
class TimeLabel:
    x: str
    text: str


@dataclass(frozen=True)
class BarChart:
    title: str
    description: str
    view_box: str
    plot_left: str
    plot_right: str
    axis_label_y: str
    panels: list[Panel]
    time_labels: list[TimeLabel]
    #: (bucket, delivered, failed) for the table offered to screen readers and copy-paste.
    rows: list[tuple[str, int, int]]


def delivery_chart(
    delivered: Sequence[tuple[datetime, int]],
    failed: Sequence[tuple[datetime, int]],
    *,
    hourly: bool,
) -> BarChart:
    """Delivered above, failed below, one bar per bucket, sharing the time axis.

    Each panel has its own scale: a handful of failures drawn on the scale of thousands of
    deliveries would vanish, and failures are what this page is for.
    """
    starts = [start for start, _count in delivered]
    slot = (WIDTH - LEFT - RIGHT) / max(len(starts), 1)
    labels = [_bucket_label(start, hourly=hourly) for start in starts]
    top = HEADER
    panels = []
    for kind, series in (("delivered", delivered), ("failed", failed)):
        height = HEIGHTS[kind]
        panels.append(_panel(kind, [count for _start, count in series], labels, top, height, slot))
        top += height + PANEL_GAP
    bottom = top - PANEL_GAP
    span = _("per hour, last 48 hours") if hourly else _("per day, last 30 days")
    total_delivered = sum(count for _start, count in delivered)
    total_failed = sum(count for _start, count in failed)
    return BarChart(
        title=_("Events delivered and failed %(span)s") % {"span": span},
        description=_("%(delivered)s delivered and %(failed)s failed in total.")
        % {"delivered": _number(total_delivered), "failed": _number(total_failed)},
        view_box=f"0 0 {WIDTH} {bottom + X_AXIS}",
        plot_left=_num(LEFT),
        plot_right=_num(WIDTH - RIGHT),
        axis_label_y=_num(bottom + 16),
        panels=panels,
        time_labels=[
            TimeLabel(_num(LEFT + slot * (index + 0.5)), text)
            for index, start in enumerate(starts)
            if (text := _axis_label(start, index, len(starts), hourly=hourly))
        ],
        rows=[
            (label, d, f) for label, (_s, d), (_t, f) in zip(labels, delivered, failed, strict=True)
        ],
    )


def share_cell(share: float) -> tuple[str, str]:
    """A coverage share as the text shown and a CSS class on a five-step colour scale."""
    percent = int(share * 100)  # floor: 99.7 % is not "everyone"
    text = "<1 %" if 0 < share < 0.01 else f"{percent} %"
    step = sum(share >= limit for limit in (0.25, 0.5, 0.75, 0.9))
    return text, f"capi-cov-{step}"


def _panel(
    kind: str, counts: list[int], labels: list[str], top: float, height: float, slot: float
) -> Panel:
    scale = _nice_ceiling(max(counts, default=0))
    baseline = top + height
    gridlines = []
    for value in sorted({0, scale // 2 if scale % 2 == 0 else 0, scale}):
        y = baseline - height * value / scale
        gridlines.append(Gridline(_num(y), _num(y + 4), _number(value)))
    noun = {"delivered": _("delivered"), "failed": _("failed")}[kind]
    bars = []
    for index, count in enumerate(counts):
        if not count:
            continue
        bar_height = max(height * count / scale, MIN_BAR)
        bars.append(
            Bar(
                x=_num(LEFT + slot * index + slot * (1 - BAR_SHARE) / 2),
                y=_num(baseline - bar_height),
                width=_num(slot * BAR_SHARE),
                height=_num(bar_height),
                title=f"{labels[index]}: {_number(count)} {noun}",
            )
        )
    total = sum(counts)
    name = {
        "delivered": ngettext("Delivered: %(n)s event", "Delivered: %(n)s events", total),
        "failed": ngettext("Failed: %(n)s event", "Failed: %(n)s events", total),
    }[kind] % {"n": _number(total)}
    return Panel(kind, name, _num(top - 7), _num(baseline), gridlines, bars)


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (at least 1)."""
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= value:
                return step * magnitude
        magnitude *= 10


def _bucket_label(start: datetime, *, hourly: bool) -> str:
    day = date_format(start, "D j M")
    return f"{day}, {date_format(start, 'H:i')}" if hourly else day


def _axis_label(start: datetime, index: int, count: int, *, hourly: bool) -> str:
    if hourly:
        if start.hour % 6:
            return ""
        return date_format(start, "D j") if start.hour == 0 else date_format(start, "H:i")
    # Every seventh day counting back from today, so today is always labelled.
    return date_format(start, "j M") if (count - 1 - index) % 7 == 0 else ""


def _num(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _number(value: int) -> str:
    return number_format(value, force_grouping=True)
