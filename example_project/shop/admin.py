from django.contrib import admin

from .models import Lead, Order, OrderLine, Product


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["name", "sku", "price"]
    prepopulated_fields = {"slug": ["name"]}


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["__str__", "email", "total", "status", "created_at", "paid_at"]
    list_filter = ["status"]
    inlines = [OrderLineInline]


@admin.register(Lead)
class LeadAdmin(admin.ModelAdmin):
    list_display = ["email", "first_name", "created_at"]
