"""The console's "Sent mail" page: what a local instance would have emailed (invitations,
password resets), read only, for staff to follow a link a customer would have received."""

from django.contrib import admin

from audit.admin_base import ReadOnlyAdmin
from portal.models import SentMail


@admin.register(SentMail)
class SentMailAdmin(ReadOnlyAdmin[SentMail]):
    list_display = ["sent_at", "to", "subject"]
    search_fields = ["to", "subject"]
    date_hierarchy = "sent_at"
    fields = ["sent_at", "from_email", "to", "subject", "body"]
