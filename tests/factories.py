import factory

from tests.shop.models import Lead, Order


class OrderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Order

    email = factory.Sequence(lambda n: f"Shopper.{n}@Example.com")
    phone = "(650) 555-1212"
    first_name = "Mary"
    status = "new"
    total = factory.Faker("pydecimal", left_digits=3, right_digits=2, positive=True)
    currency = "EUR"
    user_agent = "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"
    ip = "203.0.113.7"


class LeadFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Lead

    email = factory.Sequence(lambda n: f"lead{n}@example.org")
