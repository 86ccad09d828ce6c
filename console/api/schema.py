# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""How the OpenAPI schema describes the API: its three bearer tokens (drf-spectacular
extensions), what each staff operation needs (`x-required-scope`,
`x-required-permissions`) and each customer operation (`x-required-roles`). The views
serving it are in console/api/docs.py: DRF imports this module (DEFAULT_SCHEMA_CLASS) while
drf-spectacular's views are still loading."""

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension

from console.api.permissions import (
    MemberPermission,
    StaffPermission,
    member_action,
    required_permissions,
    required_scope,
    roles_text,
)
from console.models import Scope
from customers.members import PERMISSIONS
from customers.models import Member

_SCOPES = "; ".join(f"`{scope.label}`" for scope in Scope)


class StaffTokenScheme(OpenApiAuthenticationExtension):
    target_class = "console.api.authentication.StaffTokenAuthentication"
    name = "staffToken"

    def get_security_definition(self, auto_schema: openapi.AutoSchema) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "A staff token, `tfs_...` (manage.py staff_token <username> --scope ...). It may "
                "do what both its user's Django permissions and its scopes allow. Scopes: "
                f"{_SCOPES}. Each operation names the scope it needs in `x-required-scope` and "
                "the user's permissions in `x-required-permissions`."
            ),
        }


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "console.api.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: openapi.AutoSchema) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The key holder's own API key, `tf_...`.",
        }


class MemberTokenScheme(OpenApiAuthenticationExtension):
    target_class = "console.api.authentication.MemberTokenAuthentication"
    name = "memberToken"

    def get_security_definition(self, auto_schema: openapi.AutoSchema) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "A customer member's token, `tfm_...` (made in the customer portal or with "
                "POST /api/v1/org/tokens/). It acts as its member, in their account, with their "
                "role: owner, admin, developer or billing. Each operation names the roles it "
                "needs in `x-required-roles`."
            ),
        }


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's, with what each staff operation needs in its description and
    extensions (computed by the permission class itself, so they cannot disagree)."""

    def get_description(self) -> str:
        description = str(super().get_description() or "")
        if self._member():
            return f"{description}\n\nNeeds the role {self._roles_text()}.".strip()
        if not self._staff():
            return description
        needs = (
            f"Needs the `{self._scope()}` token scope and the permission(s) "
            f"{', '.join(self._permissions())}."
        )
        return f"{description}\n\n{needs}".strip()

    def get_extensions(self) -> dict[str, Any]:
        extensions: dict[str, Any] = dict(super().get_extensions() or {})
        if self._staff():
            extensions["x-required-scope"] = self._scope()
            extensions["x-required-permissions"] = self._permissions()
        if self._member():
            extensions["x-required-roles"] = self._roles()
        return extensions

    def _member(self) -> bool:
        return MemberPermission in getattr(self.view, "permission_classes", [])

    def _roles(self) -> list[str]:
        action = member_action(self.view, self.method)
        allowed = PERMISSIONS[action] if action is not None else frozenset(Member.Role.values)
        return [role for role in Member.Role.values if role in allowed]

    def _roles_text(self) -> str:
        action = member_action(self.view, self.method)
        return "any" if action is None else roles_text(action)

    def _staff(self) -> bool:
        return StaffPermission in getattr(self.view, "permission_classes", [])

    def _scope(self) -> str | None:
        return required_scope(self.view, self.method)

    def _permissions(self) -> list[str]:
        return required_permissions(self.view, self.method)
