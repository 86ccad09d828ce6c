"""The audit log: every change, by whom, before and after."""

from django.db import models


class AuditEntry(models.Model):
    """Who changed what, when, and the object's state before and after. Append-only.

    The actor is kept as a snapshot (`actor` text beside a nullable user id) so the entry still
    says who acted after the user is deleted or renamed. Snapshots never hold secrets
    (audit.services.snapshot leaves them out).
    """

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    # The staff user's id, or null for a key holder or the system.
    actor_user_id = models.BigIntegerField(null=True, blank=True)
    # The user's username at the time, "api-key:<key_id>" for a key holder, or "system".
    actor = models.CharField(max_length=200)
    # Verb of the change: "create", "update", "delete", "revoke", "rotate", "suspend", ...
    action = models.CharField(max_length=32)
    # "<app_label>.<model>", e.g. "customers.apikey".
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    # Null before a creation and after a deletion.
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    # The customer account the change belongs to (its members read it in the portal's audit
    # log); null for changes to no one account's objects (tiers, backends, price books).
    account_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["object_type", "object_id", "-at"]),
            models.Index(fields=["account_id", "-at"]),
        ]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.object_type}"
