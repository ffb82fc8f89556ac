"""The outbox changelist's date hierarchy, without Django's ``SELECT DISTINCT`` over every
row (a sort of a million index entries on each page view): years span the table's first and
last row (two index endpoint reads), months and days are simply the calendar's."""

from __future__ import annotations

import calendar
import datetime
from typing import Any

from django import template
from django.contrib.admin.views.main import ChangeList
from django.db.models import Max, Min
from django.utils import formats, timezone
from django.utils.text import capfirst
from django.utils.translation import gettext as _

register = template.Library()


@register.inclusion_tag("admin/date_hierarchy.html")
def capi_date_hierarchy(cl: ChangeList) -> dict[str, Any]:
    field = cl.date_hierarchy
    keys = {part: f"{field}__{part}" for part in ("year", "month", "day")}
    year, month, day = (cl.params.get(keys[part]) for part in ("year", "month", "day"))

    def link(filters: dict[str, Any]) -> str:
        return str(cl.get_query_string(filters, [f"{field}__"]))

    if year and month and day:
        chosen = datetime.date(int(year), int(month), int(day))
        return {
            "show": True,
            "back": {
                "link": link({keys["year"]: year, keys["month"]: month}),
                "title": capfirst(formats.date_format(chosen, "YEAR_MONTH_FORMAT")),
            },
            "choices": [{"title": capfirst(formats.date_format(chosen, "MONTH_DAY_FORMAT"))}],
        }
    if year and month:
        days_in_month = calendar.monthrange(int(year), int(month))[1]
        return {
            "show": True,
            "back": {"link": link({keys["year"]: year}), "title": str(year)},
            "choices": [
                {
                    "link": link({keys["year"]: year, keys["month"]: month, keys["day"]: d}),
                    "title": capfirst(
                        formats.date_format(
                            datetime.date(int(year), int(month), d), "MONTH_DAY_FORMAT"
                        )
                    ),
                }
                for d in range(1, days_in_month + 1)
            ],
        }
    if year:
        return {
            "show": True,
            "back": {"link": link({}), "title": _("All dates")},
            "choices": [
                {
                    "link": link({keys["year"]: year, keys["month"]: m}),
                    "title": capfirst(
                        formats.date_format(datetime.date(int(year), m, 1), "YEAR_MONTH_FORMAT")
                    ),
                }
                for m in range(1, 13)
            ],
        }
    bounds = cl.model._default_manager.using(cl.queryset.db).aggregate(
        first=Min(field), last=Max(field)
    )
    if bounds["first"] is None:
        return {"show": False}
    first, last = (timezone.localtime(bounds[k]) for k in ("first", "last"))
    return {
        "show": True,
        "back": None,
        "choices": [
            {"link": link({keys["year"]: str(y)}), "title": str(y)}
            for y in range(first.year, last.year + 1)
        ],
    }
