"""A typical shop order, twice: ``Order`` is a django-capi conversion, ``PlainOrder`` has the
same columns and nothing registered, so the difference of their saves is django-capi's cost.

No migrations: the bench creates the tables with ``migrate --run-syncdb``.
"""

from django.db import models


class OrderColumns(models.Model):
    customer_id = models.CharField(max_length=40)
    email = models.CharField(max_length=200)
    phone = models.CharField(max_length=50)
    first_name = models.CharField(max_length=100)
    last_name = models.CharField(max_length=100)
    city = models.CharField(max_length=100)
    state = models.CharField(max_length=100)
    zip_code = models.CharField(max_length=20)
    country = models.CharField(max_length=2)
    status = models.CharField(max_length=20, default="new")
    total = models.DecimalField(max_digits=10, decimal_places=2)
    currency = models.CharField(max_length=3, default="USD")
    items = models.JSONField(default=list)
    ip = models.CharField(max_length=50)
    user_agent = models.CharField(max_length=300)
    fbp = models.CharField(max_length=100, blank=True)
    fbc = models.CharField(max_length=200, blank=True)

    class Meta:
        abstract = True


class Order(OrderColumns):
    def __str__(self) -> str:
        return f"Order {self.pk}"


class PlainOrder(OrderColumns):
    def __str__(self) -> str:
        return f"PlainOrder {self.pk}"
