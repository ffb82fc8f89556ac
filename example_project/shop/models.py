from django.db import models


class Order(models.Model):
    email = models.EmailField()
    phone = models.CharField(max_length=40, blank=True)
    total = models.DecimalField(max_digits=10, decimal_places=2)
    status = models.CharField(max_length=20, default="new")
    # django_capi.browser_context(request) at checkout (click id, fbp, IP, user agent, page),
    # kept for a payment webhook that arrives later without the shopper's browser.
    browser = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Order #{self.pk}"

    def get_absolute_url(self) -> str:
        return f"/orders/{self.pk}/"


class Lead(models.Model):
    email = models.EmailField()

    def __str__(self) -> str:
        return self.email
