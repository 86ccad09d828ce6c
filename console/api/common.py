# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""What every endpoint of the API shares: pagination and the acting principal."""

from typing import Any

from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

from console.api.authentication import KeyHolder


class Pagination(LimitOffsetPagination):
    """`limit` (default 50, at most 500) and `offset`; an offset past the end is an empty page."""

    default_limit = 50
    max_limit = 500
    # Offsets beyond this are refused by PostgreSQL's bigint; no page is that far anyway.
    max_offset = 2**62

    def get_offset(self, request: Request) -> int:
        return min(int(super().get_offset(request)), self.max_offset)


def actor(request: Request) -> Any:
    """Whom the audit log names for this request: the staff user, or the key holder's key."""
    user = request.user
    return user.api_key if isinstance(user, KeyHolder) else user
