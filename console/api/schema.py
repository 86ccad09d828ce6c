# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""How the OpenAPI schema describes the API: its two bearer tokens (drf-spectacular
extensions) and what each staff operation needs (`x-required-scope`,
`x-required-permissions`). The views serving it are in console/api/docs.py: DRF imports this
module (DEFAULT_SCHEMA_CLASS) while drf-spectacular's views are still loading."""

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension

from console.api.permissions import StaffPermission, required_permissions, required_scope
from console.models import Scope

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


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's, with what each staff operation needs in its description and
    extensions (computed by the permission class itself, so they cannot disagree)."""

    def get_description(self) -> str:
        description = str(super().get_description() or "")
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
        return extensions

    def _staff(self) -> bool:
        return StaffPermission in getattr(self.view, "permission_classes", [])

    def _scope(self) -> str | None:
        return required_scope(self.view, self.method)

    def _permissions(self) -> list[str]:
        return required_permissions(self.view, self.method)
