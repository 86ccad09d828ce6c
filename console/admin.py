"""The console's pages for the staff API's tokens (scopes set, revoked)."""

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from console import admin_accounts
from console.models import Scope, StaffToken
from console.tokens import staff_token_revoke, staff_token_scopes_set

# The account and key pages with their usage and spend this month (console/admin_accounts.py).
admin_accounts.register(admin.site)


class StaffTokenForm(forms.ModelForm[StaffToken]):
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="On top of its user's permissions: `read` for every GET, the others for "
        "changes in their area.",
    )

    class Meta:
        model = StaffToken
        fields = ["scopes"]


@admin.register(StaffToken)
class StaffTokenAdmin(admin.ModelAdmin[StaffToken]):
    """Tokens are issued with `manage.py staff_token` (the secret is printed once); here they
    are listed, their scopes changed and they are revoked, each change audited. Neither the
    secret nor its hash is shown."""

    form = StaffTokenForm
    list_display = ["__str__", "user", "name", "scopes", "created_at", "expires_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["token_id", "user__username", "name"]
    fields = ["user", "name", "token_id", "scopes", "created_at", "expires_at", "revoked_at"]
    readonly_fields = ["user", "name", "token_id", "created_at", "expires_at", "revoked_at"]
    actions = ["revoke_tokens"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: StaffToken | None = None) -> bool:
        return False

    def save_model(
        self, request: HttpRequest, obj: StaffToken, form: forms.ModelForm[StaffToken], change: bool
    ) -> None:
        staff_token_scopes_set(
            actor=request.user, token=obj, scopes=form.cleaned_data["scopes"], request=request
        )

    @admin.action(description="Revoke the selected tokens", permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[StaffToken]) -> None:
        revoked = [
            staff_token_revoke(actor=request.user, token=token, request=request)
            for token in queryset.filter(revoked_at__isnull=True)
        ]
        messages.success(request, f"{len(revoked)} token(s) revoked.")
