from django.contrib import admin
from django.urls import path

from shop import views

urlpatterns = [
    path("", views.checkout, name="checkout"),
    path("orders/<int:pk>/", views.order_detail, name="order-detail"),
    path("payments/<int:pk>/paid/", views.payment_webhook, name="payment-webhook"),
    path("admin/", admin.site.urls),
]
