# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""Who may call what: staff by their Django permissions and their token's scopes; key
holders under /me/; customers' members under /org/ by their role (customers.members.may).

A staff request needs, all at once: an active staff user; the model permissions of what it
does (`view` for every read, `add`/`change`/`delete` for writes, named per action where the
action is not plain CRUD: issuing a key is `customers.add_apikey`, closing a month
`billing.change_invoice`, ...); and, through a staff token, the token's scope (`read` for
reads, or the view's `token_read_scope`: the finance report's is `billing`; the view's
`token_scope` for writes). A session has no scopes but must have passed
two-factor where the console requires it. Details: docs/console.md.
"""

from typing import TYPE_CHECKING, Any

from django.db.models import Model
from rest_framework import exceptions
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from console.models import Scope, StaffToken
from console.two_factor import staff_session_allowed
from customers.members import PERMISSIONS, may
from customers.models import ApiKey, Member, MemberToken

if TYPE_CHECKING:
    # Only for types: DRF imports this module (DEFAULT_PERMISSION_CLASSES) while its views
    # module is still loading.
    from rest_framework.views import APIView

# The permission verb each method needs on the view's model, as Django's admin names them.
_VERBS = {
    "GET": "view",
    "HEAD": "view",
    "OPTIONS": "view",
    "POST": "add",
    "PUT": "change",
    "PATCH": "change",
    "DELETE": "delete",
}
# ViewSet actions whose permission follows from the method alone; any other action must be
# listed in the view's `action_permissions`, or it is refused.
_CRUD_ACTIONS = {"list", "retrieve", "create", "update", "partial_update", "destroy", "metadata"}


class StaffPermission(BasePermission):
    """Staff, with the model permissions the action needs, through a token scoped for it."""

    message = "This needs a staff user's credentials."

    def has_permission(self, request: Request, view: "APIView") -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active and user.is_staff):
            return False  # 401 without credentials, 403 with someone else's
        token = request.auth if isinstance(request.auth, StaffToken) else None
        if token is None and not staff_session_allowed(user):
            raise exceptions.PermissionDenied(
                "Set up two-factor authentication in the console first.", code="two_factor_required"
            )
        needed = required_permissions(view, request.method or "")
        if not user.has_perms(needed):
            raise exceptions.PermissionDenied(
                f"This needs the permission(s) {', '.join(needed)}.", code="permission_denied"
            )
        scope = required_scope(view, request.method or "")
        if token is not None and scope not in token.scopes:
            raise exceptions.PermissionDenied(
                f"This staff token lacks the `{scope}` scope.", code="insufficient_scope"
            )
        return True


def required_permissions(view: "APIView", method: str) -> list[str]:
    """The Django permissions ("app.verb_model") that calling `view` with `method` needs."""
    action = getattr(view, "action", None)
    declared: dict[str, tuple[str, ...]] = getattr(view, "action_permissions", {})
    if action in declared:
        return list(declared[action])
    if action is not None and action not in _CRUD_ACTIONS:
        raise exceptions.PermissionDenied(f"No permission is declared for {action!r}.")
    verb = _VERBS.get(method.upper())
    if verb is None:
        raise exceptions.MethodNotAllowed(method)
    model = permission_model(view)
    return [f"{model._meta.app_label}.{verb}_{model._meta.model_name}"]


def required_scope(view: "APIView", method: str) -> str | None:
    """The token scope a call needs: `read` for reads (or the view's `token_read_scope`, for
    what only its area may read), else the view's area (None: no token may make this change)."""
    if method.upper() in SAFE_METHODS:
        read_scope: str = getattr(view, "token_read_scope", Scope.READ.value)
        return read_scope
    scope: str | None = getattr(view, "token_scope", None)
    return scope


def permission_model(view: "APIView") -> type[Model]:
    """The model whose permissions guard the view: `permission_model`, else its queryset's."""
    model: type[Model] | None = getattr(view, "permission_model", None)
    if model is None:
        queryset: Any = getattr(view, "queryset", None)
        model = queryset.model if queryset is not None else None
    if model is None:
        raise exceptions.PermissionDenied("This endpoint declares no permission.")
    return model


class IsKeyHolder(BasePermission):
    def has_permission(self, request: Request, view: "APIView") -> bool:
        return isinstance(request.auth, ApiKey)


def key_holder(request: Request) -> ApiKey:
    """The calling key (views behind IsKeyHolder only)."""
    api_key: Any = request.auth
    assert isinstance(api_key, ApiKey)
    return api_key


class MemberPermission(BasePermission):
    """A member token, whose member's role may do what the view's action needs.

    A view names what its reads need in `member_read` and its writes in `member_write`
    (actions of customers.members.PERMISSIONS; None: any member; a view that names neither
    is refused), and any action needing something else in `member_actions`. Which objects
    the member reaches is the view's queryset's business: another account's are not found
    (404), as if they did not exist.
    """

    def has_permission(self, request: Request, view: "APIView") -> bool:
        token = request.auth
        if not isinstance(token, MemberToken):
            return False
        needed = member_action(view, request.method or "")
        if needed is not None and not may(token.member, needed):
            raise exceptions.PermissionDenied(
                f"This needs the role {roles_text(needed)}; yours is {token.member.role}.",
                code="role_required",
            )
        return True


def member_action(view: "APIView", method: str) -> str | None:
    """The action of customers.members.PERMISSIONS that calling `view` with `method` needs."""
    declared: dict[str, str | None] = getattr(view, "member_actions", {})
    action = getattr(view, "action", None)
    if action in declared:
        return declared[action]
    name = "member_read" if method.upper() in SAFE_METHODS else "member_write"
    if not hasattr(view, name):
        # Refused rather than open: a view that forgets to say is not open to every member.
        raise exceptions.PermissionDenied(f"This endpoint declares no `{name}`.")
    needed: str | None = getattr(view, name)
    return needed


def roles_text(action: str) -> str:
    """The roles that may do `action`, as a person reads them: "owner or admin"."""
    roles = [role for role in Member.Role.values if role in PERMISSIONS[action]]
    return " or ".join(roles)


def calling_member(request: Request) -> Member:
    """The calling member (views behind MemberPermission only)."""
    token: Any = request.auth
    assert isinstance(token, MemberToken)
    return token.member
