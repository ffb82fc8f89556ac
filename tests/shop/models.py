from decimal import Decimal

from django.db import models


class Product(models.Model):
    """What the browser tests' shop sells; a name may hold anything, markup included."""

    sku = models.CharField(max_length=50, unique=True)
    name = models.CharField(max_length=500)
    price = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("9.90"))

    def __str__(self) -> str:
        return self.name


class Order(models.Model):
    email = models.CharField(max_length=200, blank=True)
    phone = models.CharField(max_length=50, blank=True)
    first_name = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=20, default="new")
    total = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    currency = models.CharField(max_length=3, default="EUR")
    user_agent = models.CharField(max_length=300, blank=True)
    ip = models.CharField(max_length=50, blank=True)
    #: ``django_capi.browser_context(request)`` at checkout, for events recorded later.
    browser = models.JSONField(default=dict, blank=True)
    #: The cart at checkout: ``[{"id": sku, "name": …, "quantity": n, "item_price": "9.90"}]``.
    items = models.JSONField(default=list, blank=True)

    def __str__(self) -> str:
        return f"Order {self.pk}"


class Lead(models.Model):
    email = models.CharField(max_length=200)

    def __str__(self) -> str:
        return self.email


class PaidOrder(Order):
    """A proxy: saves through it must be conversions of ``Order`` too."""

    class Meta:
        proxy = True


class GiftOrder(Order):
    """A multi-table child: its saves are ``Order`` conversions with ``Order``'s event ids."""

    message = models.CharField(max_length=200, blank=True)
