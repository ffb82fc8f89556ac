from django.contrib import admin
from django.urls import path

from shop import views

urlpatterns = [
    path("", views.catalogue, name="catalogue"),
    path("products/<slug:slug>/", views.product_detail, name="product"),
    path("cart/", views.cart, name="cart"),
    path("cart/add/", views.cart_add, name="cart-add"),
    path("cart/<int:pk>/remove/", views.cart_remove, name="cart-remove"),
    path("checkout/", views.checkout, name="checkout"),
    path("orders/<int:pk>/pay/", views.payment, name="payment"),
    path("orders/<int:pk>/", views.order_detail, name="order-detail"),
    path("payments/<int:pk>/paid/", views.payment_webhook, name="payment-webhook"),
    path("contact/", views.contact, name="contact"),
    path("contact/<int:pk>/thanks/", views.contact_thanks, name="contact-thanks"),
    path("admin/", admin.site.urls),
]
