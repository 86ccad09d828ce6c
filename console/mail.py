"""The invitation email the console and the customer API send (staff's "Invite owner", the
API's invitations).

The link is the customer portal's page /portal/invite/<secret>/ on the address the request
came to; the portal sends the same email from its own pages (portal/mail.py), which the
console cannot import (the portal sits above it). The secret is in the email only: never
stored, logged or answered.
"""

from django.core.mail import send_mail

from audit.services import AnyRequest
from customers.members import SentInvitation

INVITE_PATH = "/portal/invite/{secret}/"


def invitation_link(secret: str, *, request: AnyRequest) -> str:
    return request.build_absolute_uri(INVITE_PATH.format(secret=secret))


def invitation_send(sent: SentInvitation, *, request: AnyRequest) -> None:
    """Email the invitation's link to its address (Django's email backend)."""
    invitation = sent.invitation
    account = invitation.account
    link = invitation_link(sent.secret, request=request)
    send_mail(
        subject=f"You are invited to {account.name} on Token Factory",
        message=(
            f"{invitation.invited_by} invites you to join {account.name} on Token Factory as "
            f"{invitation.role}.\n\nAccept the invitation here (the link works once, until "
            f"{invitation.expires_at:%Y-%m-%d %H:%M} UTC):\n\n{link}\n\n"
            "If you did not expect this, ignore this email.\n"
        ),
        from_email=None,  # DEFAULT_FROM_EMAIL
        recipient_list=[invitation.email],
    )
