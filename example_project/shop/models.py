from django.db import models


class Order(models.Model):
    email = models.EmailField()
    phone = models.CharField(max_length=40, blank=True)
    total = models.DecimalField(max_digits=10, decimal_places=2)
    status = models.CharField(max_length=20, default="new")
    # The shopper's browser at checkout, kept for a payment webhook that arrives later.
    user_agent = models.TextField(blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Order #{self.pk}"

    def get_absolute_url(self) -> str:
        return f"/orders/{self.pk}/"


class Lead(models.Model):
    email = models.EmailField()

    def __str__(self) -> str:
        return self.email
