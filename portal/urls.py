"""The customer portal, mounted at /portal/ (config/urls.py). Every page but signing in,
password resets and invitations is a member's, scoped to their current account
(portal/access.py); tests/portal/test_bola.py walks this list so that no page is forgotten."""

from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from portal import (
    views_auth,
    views_credits,
    views_members,
    views_projects,
    views_usage,
    views_webhooks,
)
from portal.forms import MemberPasswordResetForm

app_name = "portal"

_RESET = "portal/password_reset"

urlpatterns = [
    path("", views_usage.dashboard, name="dashboard"),
    path("login/", views_auth.sign_in, name="login"),
    path("logout/", views_auth.sign_out, name="logout"),
    path("account/", views_auth.account_switch, name="account-switch"),
    path("invite/<str:secret>/", views_auth.invite, name="invite"),
    path(
        "password-reset/",
        auth_views.PasswordResetView.as_view(
            form_class=MemberPasswordResetForm,
            template_name=f"{_RESET}_form.html",
            email_template_name=f"{_RESET}_email.txt",
            subject_template_name=f"{_RESET}_subject.txt",
            success_url=reverse_lazy("portal:password-reset-done"),
            extra_context={"title": "Reset your password"},
        ),
        name="password-reset",
    ),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(
            template_name=f"{_RESET}_done.html", extra_context={"title": "Check your email"}
        ),
        name="password-reset-done",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            template_name=f"{_RESET}_confirm.html",
            success_url=reverse_lazy("portal:password-reset-complete"),
            extra_context={"title": "Choose a new password"},
        ),
        name="password-reset-confirm",
    ),
    path(
        "password-reset/done/",
        auth_views.PasswordResetCompleteView.as_view(
            template_name=f"{_RESET}_complete.html", extra_context={"title": "Password changed"}
        ),
        name="password-reset-complete",
    ),
    path("projects/", views_projects.projects, name="projects"),
    path("projects/new/", views_projects.project_new, name="project-new"),
    path("projects/<int:project_id>/", views_projects.project_edit, name="project-edit"),
    path(
        "projects/<int:project_id>/archive/",
        views_projects.project_archive_confirm,
        name="project-archive",
    ),
    path("keys/", views_projects.keys, name="keys"),
    path("keys/new/", views_projects.key_new, name="key-new"),
    path("keys/<int:api_key_id>/created/", views_projects.key_created, name="key-created"),
    path("keys/<int:api_key_id>/revoke/", views_projects.key_revoke, name="key-revoke"),
    path("usage/", views_usage.usage, name="usage"),
    path("usage.csv", views_usage.usage_csv, name="usage-csv"),
    path("invoices/", views_usage.invoices, name="invoices"),
    path(
        "invoices/<str:invoice_id>.html",
        views_usage.invoice_document_html,
        name="invoice-html",
    ),
    path("invoices/<str:invoice_id>.pdf", views_usage.invoice_document_pdf, name="invoice-pdf"),
    path("members/", views_members.members, name="members"),
    path("members/invite/", views_members.member_invite, name="member-invite"),
    path("members/<int:member_id>/", views_members.member_edit, name="member-edit"),
    path(
        "members/<int:member_id>/remove/",
        views_members.member_remove_confirm,
        name="member-remove",
    ),
    path(
        "invitations/<int:invitation_id>/revoke/",
        views_members.invitation_revoke_view,
        name="invitation-revoke",
    ),
    path("audit/", views_usage.audit, name="audit"),
    path("credits/", views_credits.credits, name="credits"),
    path("credits/buy/", views_credits.credits_buy, name="credits-buy"),
    path("credits/bought/", views_credits.credits_success, name="credits-success"),
    path("credits/cancelled/", views_credits.credits_cancel, name="credits-cancel"),
    path("credits/auto-topup/", views_credits.credits_topup, name="credits-topup"),
    path("webhooks/", views_webhooks.webhooks, name="webhooks"),
    path("webhooks/new/", views_webhooks.webhook_new, name="webhook-new"),
    path("webhooks/<int:endpoint_id>/", views_webhooks.webhook_edit, name="webhook-edit"),
    path(
        "webhooks/<int:endpoint_id>/secret/",
        views_webhooks.webhook_secret,
        name="webhook-secret",
    ),
    path(
        "webhooks/<int:endpoint_id>/rotate/",
        views_webhooks.webhook_rotate,
        name="webhook-rotate",
    ),
    path(
        "webhooks/<int:endpoint_id>/delete/",
        views_webhooks.webhook_delete,
        name="webhook-delete",
    ),
    path(
        "webhooks/deliveries/<int:delivery_id>/replay/",
        views_webhooks.webhook_replay,
        name="webhook-replay",
    ),
    path("profile/", views_members.profile, name="profile"),
    path("profile/two-factor/", views_members.two_factor, name="two-factor"),
    path("profile/two-factor/off/", views_members.two_factor_off, name="two-factor-off"),
]
