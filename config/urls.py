from django.contrib import admin
from django.urls import include, path

from billing.webhooks import stripe_webhook
from console.admin_exports import exports_view
from console.api.reports import finance_report
from console.views_preview import price_book_preview

urlpatterns = [
    # Before the admin's own pages, which would take it for a book's id.
    path(
        "admin/catalogue/pricebook/<int:book_id>/preview/",
        price_book_preview,
        name="pricebook-preview",
    ),
    path("admin/exports/", exports_view, name="console-exports"),
    path("admin/", admin.site.urls),
    path("api/", include("console.api_urls")),
    # The customer portal: members of an account (docs/portal.md).
    path("portal/", include("portal.urls")),
    path("billing/stripe/webhook", stripe_webhook, name="stripe-webhook"),
    # A staff session or a staff token with the billing scope (console/api/reports.py).
    path(
        "billing/",
        include(
            (
                [path("report/<str:period>.<str:fmt>", finance_report, name="finance-report")],
                "billing",
            )
        ),
    ),
]

# Under /api/ every error Django answers itself is in the API's JSON shape; elsewhere they
# are Django's own pages.
handler400 = "console.api.errors.bad_request"
handler403 = "console.api.errors.permission_denied"
handler404 = "console.api.errors.page_not_found"
handler500 = "console.api.errors.server_error"
