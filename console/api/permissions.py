# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""Who may call what: staff everywhere (the default, IsAdminUser), key holders under /me/."""

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from gateway.models import ApiKey


class IsKeyHolder(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        return isinstance(request.auth, ApiKey)


def key_holder(request: Request) -> ApiKey:
    """The calling key (views behind IsKeyHolder only)."""
    api_key: Any = request.auth
    assert isinstance(api_key, ApiKey)
    return api_key
