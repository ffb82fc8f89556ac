from django.db import models


class Order(models.Model):
    email = models.CharField(max_length=200, blank=True)
    phone = models.CharField(max_length=50, blank=True)
    first_name = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=20, default="new")
    total = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    currency = models.CharField(max_length=3, default="EUR")
    user_agent = models.CharField(max_length=300, blank=True)
    ip = models.CharField(max_length=50, blank=True)

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
