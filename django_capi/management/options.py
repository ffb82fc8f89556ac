"""Options several management commands share."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_capi import outbox


def add_database_option(parser: CommandParser, help_text: str) -> None:
    """``--database ALIAS``, repeatable; read it back with ``outbox_databases``."""
    parser.add_argument("--database", action="append", dest="databases", help=help_text)


def outbox_databases(options: dict[str, Any]) -> list[str]:
    """The aliases ``--database`` named (every outbox database when none); a ``CommandError``
    for an alias without an outbox."""
    every = outbox.databases()
    databases: list[str] = options["databases"] or every
    unknown = set(databases) - set(every)
    if unknown:
        raise CommandError(f"no outbox in database(s) {', '.join(sorted(unknown))}")
    return databases
