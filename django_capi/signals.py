"""Signals django-capi sends. Receivers can never change what happens to an event."""

from django.dispatch import Signal

#: New outbox rows were committed (sent once per transaction, after the commit).
outbox_committed = Signal()
