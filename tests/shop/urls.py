from django.urls import path

from . import views

app_name = "shop"

urlpatterns = [
    path("product/<int:pk>/", views.product_detail, name="product"),
    path("cart/", views.cart, name="cart"),
    path("cart/add/", views.cart_add, name="cart_add"),
    path("checkout/", views.checkout, name="checkout"),
    path("order/<int:pk>/thanks/", views.thanks, name="thanks"),
    path("webhooks/payment/", views.payment_webhook, name="payment_webhook"),
    path("track/", views.track, name="track"),
    path("consent/", views.consent, name="consent"),
    path("brands/", views.brands, name="brands"),
]
