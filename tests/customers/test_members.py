"""The members' rules hold in the service itself, whatever surface calls it."""

import pytest

from customers.members import MemberError, invitation_create
from customers.models import Invitation, Member
from tests.support.members import account_with_owner, email_new, member_add

pytestmark = pytest.mark.django_db


def test_only_an_owner_invites_an_owner() -> None:
    owner = account_with_owner()
    admin = member_add(owner.account, Member.Role.ADMIN)
    before = Invitation.objects.filter(account=owner.account).count()
    with pytest.raises(MemberError, match="Only an owner can invite an owner"):
        invitation_create(
            account=owner.account, email=email_new(), role=Member.Role.OWNER, actor=admin.user
        )
    assert Invitation.objects.filter(account=owner.account).count() == before

    sent = invitation_create(
        account=owner.account, email=email_new(), role=Member.Role.OWNER, actor=owner.user
    )
    assert sent.invitation.role == Member.Role.OWNER
