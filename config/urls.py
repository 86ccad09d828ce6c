from django.contrib import admin
from django.urls import include, path

from billing.webhooks import stripe_webhook

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("console.api_urls")),
    path("billing/stripe/webhook", stripe_webhook, name="stripe-webhook"),
    path("billing/", include("billing.urls")),
]

# Under /api/ every error Django answers itself is in the API's JSON shape; elsewhere they
# are Django's own pages.
handler400 = "console.api.errors.bad_request"
handler403 = "console.api.errors.permission_denied"
handler404 = "console.api.errors.page_not_found"
handler500 = "console.api.errors.server_error"
