"""The bench's shop: a paid order registered with django-capi, and its unregistered twin."""
