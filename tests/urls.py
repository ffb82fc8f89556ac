from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # The shop that tests/browser drives in a real Chromium.
    path("shop/", include("tests.shop.urls")),
]
