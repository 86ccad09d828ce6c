"""The staff API's tokens."""

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models


class Scope(models.TextChoices):
    """What a staff token may do, on top of what its user may do (docs/console.md)."""

    READ = "read", "read: every GET of the management API"
    KEYS = "keys", "keys: issue, rotate and revoke API keys"
    BILLING = "billing", "billing: accounts, price books and prices, invoices"
    FLEET = "fleet", "fleet: tiers and backends"


def scopes_read_only() -> list[str]:
    """A new token's scopes unless others are asked for: the least that is useful."""
    return [Scope.READ.value]


def scopes_all() -> list[str]:
    return [scope.value for scope in Scope]


class StaffToken(models.Model):
    """A staff user's token for the management API, stored like API keys: public id + SHA-256.

    It reads `tfs_<token_id>_<secret>` and is sent as `Authorization: Bearer <token>`. It acts
    as its user, so it stops working when the user loses staff rights or is deactivated, and
    it can do only what both its user's permissions and its own scopes allow.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff_tokens"
    )
    name = models.CharField(max_length=200, blank=True)
    token_id = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Scope values; a request needs `read` for a GET and its area's scope for a change.
    scopes = ArrayField(
        models.CharField(max_length=16, choices=Scope.choices),
        default=scopes_read_only,
        blank=True,
    )

    def __str__(self) -> str:
        return f"tfs_{self.token_id}_…"
