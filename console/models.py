"""The audit log (every change, by whom) and the staff API's tokens."""

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models


class AuditEntry(models.Model):
    """Who changed what, when, and the object's state before and after. Append-only.

    The actor is kept as a snapshot (`actor` text beside a nullable user id) so the entry still
    says who acted after the user is deleted or renamed. Snapshots never hold secrets
    (console.audit.snapshot leaves them out).
    """

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    # The staff user's id, or null for a key holder or the system.
    actor_user_id = models.BigIntegerField(null=True, blank=True)
    # The user's username at the time, "api-key:<key_id>" for a key holder, or "system".
    actor = models.CharField(max_length=200)
    # Verb of the change: "create", "update", "delete", "revoke", "rotate", "suspend", ...
    action = models.CharField(max_length=32)
    # "<app_label>.<model>", e.g. "gateway.apikey".
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    # Null before a creation and after a deletion.
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id", "-at"])]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.object_type}"


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
