"""The portal's own table: the mail a local instance "sent" (portal/mail_backend.py).

Nothing else is stored here: members, projects, keys and invitations are customers' tables,
written through customers.services and customers.members.
"""

from django.db import models


class SentMail(models.Model):
    """One email as a local instance would have sent it, for staff to read in the console
    (EMAIL_BACKEND under TF_PROFILE=local); production sends by SMTP and stores nothing."""

    sent_at = models.DateTimeField(auto_now_add=True, db_index=True)
    from_email = models.CharField(max_length=254)
    # Comma-separated, as one reads them.
    to = models.TextField()
    subject = models.CharField(max_length=998)
    body = models.TextField()

    class Meta:
        ordering = ["-sent_at", "-id"]
        verbose_name = "sent mail"
        verbose_name_plural = "sent mail"

    def __str__(self) -> str:
        return f"{self.subject} → {self.to}"
