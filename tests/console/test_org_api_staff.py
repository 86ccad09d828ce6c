"""Staff's side of organisations (issue 17): keys in projects and accounts' projects through
the staff API, and the console's account page (projects, members, invitations, "Invite an
owner"), whose invitation a new customer accepts in the portal."""

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django.urls import reverse

from audit.models import AuditEntry
from customers.members import invitation_find
from customers.models import ApiKey, Invitation, Project
from customers.services import project_archive, project_create
from tests.console.api_support import assert_error, staff_client, tenant_create
from tests.console.org_support import org_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def console() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "long pass 1"))
    return client


def test_staff_issue_a_key_in_a_project_of_the_account() -> None:
    tenant = tenant_create()
    project = project_create(account=tenant.account, name="Batch")
    response = staff_client().post(
        "/api/v1/keys/", {"account": tenant.account.pk, "project": project.pk}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["project"] == project.pk
    assert ApiKey.objects.get(key_id=response.json()["key_id"]).project == project
    plain = staff_client().post("/api/v1/keys/", {"account": tenant.account.pk}, format="json")
    assert Project.objects.get(pk=plain.json()["project"]).is_default


def test_staff_cannot_put_a_key_in_another_accounts_or_an_archived_project() -> None:
    a, b = tenant_create(), tenant_create()
    before = ApiKey.objects.count()
    response = staff_client().post(
        "/api/v1/keys/", {"account": a.account.pk, "project": b.api_key.project_id}, format="json"
    )
    assert assert_error(response, 400)["param"] == "project"
    old = project_create(account=a.account, name="Old")
    project_archive(project=old)
    response = staff_client().post(
        "/api/v1/keys/", {"account": a.account.pk, "project": old.pk}, format="json"
    )
    assert "archived" in assert_error(response, 400)["message"]
    assert ApiKey.objects.count() == before


def test_accounts_list_their_projects_and_staff_read_projects() -> None:
    tenant = tenant_create()
    project = project_create(account=tenant.account, name="Batch", data={"tokens_per_day": 9})
    other = tenant_create()
    account = staff_client().get(f"/api/v1/accounts/{tenant.account.pk}/").json()
    assert [(p["name"], p["is_default"]) for p in account["projects"]] == [
        ("Default", True),
        ("Batch", False),
    ]
    listed = staff_client().get("/api/v1/projects/", {"account": tenant.account.pk}).json()
    assert [p["name"] for p in listed["results"]] == ["Default", "Batch"]
    one = staff_client().get(f"/api/v1/projects/{project.pk}/").json()
    assert (one["account"], one["tokens_per_day"]) == (tenant.account.pk, 9)
    assert other.account.name not in str(listed)


def test_the_account_page_shows_projects_members_and_key_projects(console: Client) -> None:
    org = org_create()
    org.tenant.api_key.project = org.project
    org.tenant.api_key.save(update_fields=["project"])
    page = console.get(reverse("admin:customers_account_change", args=[org.tenant.account.pk]))
    text = page.content.decode()
    assert page.status_code == 200
    assert "Research" in text and "Default" in text
    for member in org.members.values():
        assert member.user.email in text
    keys = text.split("account-keys")[1]
    assert "Research" in keys
    assert 'id="invite-owner"' in text or "id='invite-owner'" in text


def test_staff_invite_an_owner_who_gets_a_working_link(console: Client) -> None:
    tenant = tenant_create()
    url = reverse("admin:customers_account_invite_owner", args=[tenant.account.pk])
    assert console.get(url).status_code == 200
    response = console.post(url, {"email": "Boss@Example.com"})
    assert response.status_code == 302
    invitation = Invitation.objects.get(account=tenant.account)
    assert (invitation.email, invitation.role, invitation.invited_by) == (
        "boss@example.com",
        "owner",
        "root",
    )
    [sent] = mail.outbox
    assert sent.to == ["boss@example.com"]
    link = next(word for word in sent.body.split() if "/portal/invite/" in word)
    assert link.startswith("http://testserver/portal/invite/tfi_")
    found = invitation_find(link.rstrip("/").rsplit("/", 1)[1])
    assert found is not None and found.pk == invitation.pk
    entry = AuditEntry.objects.get(object_type="customers.invitation")
    assert (entry.action, entry.actor, entry.account_id) == ("invite", "root", tenant.account.pk)
    page = console.get(reverse("admin:customers_account_change", args=[tenant.account.pk]))
    assert "boss@example.com" in page.content.decode()


def test_a_bad_invitation_is_shown_on_the_form_and_sends_nothing(console: Client) -> None:
    org = org_create()
    url = reverse("admin:customers_account_invite_owner", args=[org.tenant.account.pk])
    for email, words in (("nope", "valid email"), (org.members["billing"].user.email, "already")):
        response = console.post(url, {"email": email})
        assert response.status_code == 200
        assert words in response.content.decode()
    assert not Invitation.objects.filter(account=org.tenant.account, accepted_at=None).exists()
    assert mail.outbox == []


def test_inviting_needs_the_right_to_change_accounts() -> None:
    tenant = tenant_create()
    viewer = User.objects.create_user("viewer", is_staff=True, password="long pass 1")
    client = Client()
    client.force_login(viewer)
    url = reverse("admin:customers_account_invite_owner", args=[tenant.account.pk])
    assert client.post(url, {"email": "x@example.com"}).status_code == 403
    assert not Invitation.objects.exists()
    assert mail.outbox == []
