from decimal import Decimal

from django.db import models


class Product(models.Model):
    sku = models.CharField(max_length=40, unique=True)
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    price = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return f"/products/{self.slug}/"


class Order(models.Model):
    class Status(models.TextChoices):
        NEW = "new", "awaiting payment"
        PAID = "paid", "paid"

    email = models.EmailField()
    phone = models.CharField(max_length=40, blank=True)
    first_name = models.CharField(max_length=100, blank=True)
    last_name = models.CharField(max_length=100, blank=True)
    street = models.CharField(max_length=200, blank=True)
    city = models.CharField(max_length=100, blank=True)
    postal_code = models.CharField(max_length=20, blank=True)
    country = models.CharField(max_length=2, blank=True, help_text="Two letters, such as US or DE.")
    total = models.DecimalField(max_digits=10, decimal_places=2)
    status = models.CharField(max_length=20, choices=Status, default=Status.NEW)
    # django_capi.browser_context(request) at checkout (click id, fbp, IP, user agent, page),
    # kept for a payment webhook that arrives later without the shopper's browser.
    browser = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-pk"]

    def __str__(self) -> str:
        return f"Order #{self.pk}"

    def get_absolute_url(self) -> str:
        return f"/orders/{self.pk}/"

    def contents(self) -> list[dict[str, object]]:
        """The order's lines as Meta's ``contents``."""
        return [
            {"id": line.product.sku, "quantity": line.quantity, "item_price": line.price}
            for line in self.lines.select_related("product")
        ]


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=10, decimal_places=2)

    def __str__(self) -> str:
        return f"{self.quantity} × {self.product}"

    @property
    def subtotal(self) -> Decimal:
        return self.price * self.quantity


class Lead(models.Model):
    email = models.EmailField()
    first_name = models.CharField(max_length=100, blank=True)
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.email
