"""``manage.py seed_shop``: the demo's products and, with ``--admin``, a demo superuser."""

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from shop.models import Product

PRODUCTS = [
    (
        "TEE-01",
        "organic-t-shirt",
        "Organic T-shirt",
        "19.90",
        "Soft cotton, grown without pesticides.",
    ),
    ("MUG-01", "enamel-mug", "Enamel mug", "12.50", "Camp-fire proof, dishwasher safe."),
    ("BAG-01", "canvas-tote", "Canvas tote bag", "15.00", "Carries a week of groceries."),
    ("CAP-01", "wool-beanie", "Wool beanie", "24.00", "Merino wool, one size fits most."),
]


class Command(BaseCommand):
    help = "Create the example shop's products (kept when they exist) and a demo admin user."

    def add_arguments(self, parser):
        parser.add_argument(
            "--admin",
            nargs=2,
            metavar=("USERNAME", "PASSWORD"),
            help="Also create this superuser, or reset its password (demo only).",
        )

    def handle(self, *args, **options):
        for sku, slug, name, price, description in PRODUCTS:
            Product.objects.update_or_create(
                sku=sku,
                defaults={
                    "slug": slug,
                    "name": name,
                    "price": Decimal(price),
                    "description": description,
                },
            )
        self.stdout.write(f"{len(PRODUCTS)} products in the catalogue.")
        if options["admin"]:
            username, password = options["admin"]
            user, _ = get_user_model().objects.get_or_create(username=username)
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
            self.stdout.write(f"Superuser {username!r} is ready.")
