from django.contrib import admin
from django.urls import include, path

from billing.webhooks import stripe_webhook

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("console.api_urls")),
    path("billing/stripe/webhook", stripe_webhook, name="stripe-webhook"),
    path("billing/", include("billing.urls")),
]
