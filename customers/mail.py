"""The invitation email (password resets are Django's own view's).

`invitation_send` is what every surface that invites calls after
customers.members.invitation_create (or owner_add): the portal's members page, the customer
API's invitations and the staff console's "Invite an owner". The link is the absolute address
of the portal's page /portal/invite/<secret>/ (its URL name `portal:invite`), built from the
request that invited, else from PORTAL_BASE_URL (a command or a task has no request). The
secret is in the email only: never stored, logged or answered.
"""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.urls import reverse

from audit.services import AnyRequest
from customers.members import SentInvitation


def invitation_link(secret: str, *, request: AnyRequest | None = None) -> str:
    path = reverse("portal:invite", kwargs={"secret": secret})
    if request is not None:
        return request.build_absolute_uri(path)
    base = settings.PORTAL_BASE_URL
    if not base:
        raise ImproperlyConfigured("Set PORTAL_BASE_URL: an invitation sent without a request")
    return base.rstrip("/") + path


def invitation_send(sent: SentInvitation, *, request: AnyRequest | None = None) -> str:
    """Email the invitation's link to its address; returns the link (shown to staff once, for
    when mail does not arrive)."""
    invitation = sent.invitation
    link = invitation_link(sent.secret, request=request)
    context = {"invitation": invitation, "link": link, "account": invitation.account}
    send_mail(
        subject=f"You are invited to {invitation.account.name} on Token Factory",
        message=render_to_string("customers/mail/invitation.txt", context),
        from_email=None,  # DEFAULT_FROM_EMAIL
        recipient_list=[invitation.email],
    )
    return link
