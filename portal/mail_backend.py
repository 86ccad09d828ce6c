"""An email backend that stores each message in `SentMail` instead of sending it: a local
instance has no mail server, and staff read invitations and password resets in the console
("Sent mail"), as a customer would in their inbox."""

from collections.abc import Sequence
from typing import Any

from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage

from portal.models import SentMail


class SentMailBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        for message in email_messages:
            SentMail.objects.create(
                from_email=message.from_email,
                to=", ".join(message.recipients()),
                subject=str(message.subject),
                body=_text(message),
            )
        return len(email_messages)


def _text(message: Any) -> str:
    """The plain-text body (an HTML alternative, if any, is not kept)."""
    return str(message.body)
