"""django-capi's benchmarks: ``make bench`` (``python -m bench.run``) and ``make bench-scale``
(``bench/outbox_at_scale.py``). See bench/README.md."""
