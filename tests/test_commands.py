"""What every ``capi_*`` management command owes its user: help on each option."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from django.core.management import load_command_class
from django.core.management.base import BaseCommand

import django_capi

COMMANDS = sorted(
    path.stem
    for path in (Path(django_capi.__file__).parent / "management" / "commands").glob("capi_*.py")
)
#: Options every Django command has, with Django's own help.
DJANGO_OPTIONS = {action.dest for action in BaseCommand().create_parser("manage.py", "x")._actions}


def test_every_command_is_checked():
    assert {"capi_doctor", "capi_drain", "capi_fakegraph", "capi_purge", "capi_replay"} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_of_every_command_has_help(name):
    command = load_command_class("django_capi", name)
    assert command.help.strip(), f"{name} has no help"
    parser = command.create_parser("manage.py", name)
    own = [action for action in parser._actions if action.dest not in DJANGO_OPTIONS]
    assert own, f"{name} has no options of its own?"
    for action in own:
        text = action.help or ""
        assert text is not argparse.SUPPRESS
        assert len(text.strip()) > 10, f"{name} {action.option_strings}: no help"
