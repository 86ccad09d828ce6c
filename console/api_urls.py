"""The management API (/api/v1/), the key holders' self-serve API (/api/v1/me/), the
customers' management API (/api/v1/org/) and its docs.

Staff endpoints take a staff session or a staff token (console/api/authentication.py) and
require staff rights: the user's model permissions and the token's scopes
(console/api/permissions.py); /api/v1/me/ takes the key holder's API key; /api/v1/org/ a
member token, with the member's role. The schema and its UIs are open. Details:
docs/console.md.
"""

from django.urls import URLPattern, URLResolver, include, path, re_path
from rest_framework.routers import SimpleRouter

from console.api import audit, billing, docs, exports, gateway, me, org, org_webhooks, schema, usage
from console.api.errors import not_found

# Imported for its effect: the schema's description of the two bearer tokens.
assert schema

# A SimpleRouter: DefaultRouter's extra root view would be one more endpoint to guard.
staff = SimpleRouter(trailing_slash=True)
staff.register("accounts", gateway.AccountViewSet, basename="account")
staff.register("projects", gateway.ProjectViewSet, basename="project")
staff.register("keys", gateway.ApiKeyViewSet, basename="apikey")
staff.register("tiers", gateway.TierViewSet, basename="tier")
staff.register("backends", gateway.BackendViewSet, basename="backend")
staff.register("price-books", billing.PriceBookViewSet, basename="pricebook")
staff.register("prices", billing.PriceViewSet, basename="price")
staff.register("plan-prices", billing.PlanPriceViewSet, basename="planprice")
staff.register("invoices", billing.InvoiceViewSet, basename="invoice")
staff.register("audit-entries", audit.AuditEntryViewSet, basename="auditentry")

org_router = SimpleRouter(trailing_slash=True)
org_router.register("projects", org.ProjectViewSet, basename="org-project")
org_router.register("keys", org.KeyViewSet, basename="org-key")
org_router.register("members", org.MemberViewSet, basename="org-member")
org_router.register("invitations", org.InvitationViewSet, basename="org-invitation")
org_router.register("tokens", org.MemberTokenViewSet, basename="org-token")
org_router.register("webhooks", org_webhooks.WebhookEndpointViewSet, basename="org-webhook")
org_router.register(
    "webhook-deliveries", org_webhooks.WebhookDeliveryViewSet, basename="org-webhook-delivery"
)

own = SimpleRouter(trailing_slash=True)
own.register("invoices", me.MeInvoiceViewSet, basename="me-invoice")
own.register("keys", me.MeKeyViewSet, basename="me-key")

urlpatterns: list[URLPattern | URLResolver] = [
    path("v1/me/", me.MeView.as_view(), name="me"),
    path("v1/me/usage/", me.MeUsageView.as_view(), name="me-usage"),
    path("v1/me/", include(own.urls)),
    path("v1/org/", org.OrgView.as_view(), name="org"),
    path("v1/org/usage/", org.OrgUsageView.as_view(), name="org-usage"),
    path("v1/org/", include(org_router.urls)),
    path("v1/usage/", usage.StaffUsageView.as_view(), name="usage"),
    path("v1/exports/usage/", exports.ExportView.as_view(kind="usage"), name="export-usage"),
    path(
        "v1/exports/invoices/",
        exports.ExportView.as_view(kind="invoices"),
        name="export-invoices",
    ),
    path("v1/", include(staff.urls)),
    path("schema/", docs.SchemaView.as_view(), name="api-schema"),
    path("docs/", docs.SwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("redoc/", docs.RedocView.as_view(url_name="api-schema"), name="api-redoc"),
    re_path(r"^.*$", not_found),
]
