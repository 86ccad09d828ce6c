"""The customer management API (/api/v1/org/): a member runs their account with a member
token, as their role allows (issue 17)."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail

from audit.models import AuditEntry
from customers.members import invitation_find
from customers.models import ApiKey, Invitation, Member, MemberToken, Project
from metering.models import UsageRecord
from tests.console.api_support import assert_error, token_client
from tests.console.org_support import Org, org_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def org() -> Org:
    return org_create()


def _usage(org: Org, project: Project, *, at: datetime, prompt: int, key: ApiKey | None = None):
    return UsageRecord.objects.create(
        request_id=uuid.uuid4(),
        account_id=org.tenant.account.pk,
        api_key_id=(key or org.tenant.api_key).pk,
        project_id=project.pk,
        tier="premium",
        model="llama",
        backend="sim-a",
        endpoint="chat",
        prompt_tokens=prompt,
        completion_tokens=1,
        latency_ms=10.0,
        status_code=200,
        outcome=UsageRecord.Outcome.OK,
        streamed=False,
        started_at=at,
        ended_at=at + timedelta(seconds=1),
    )


# The account


@pytest.mark.parametrize("role", ["owner", "admin", "developer", "billing"])
def test_every_member_reads_their_account_and_role(org: Org, role: str) -> None:
    body = org.client(role).get("/api/v1/org/").json()
    assert body["id"] == org.tenant.account.pk
    assert body["name"] == org.tenant.account.name
    assert (body["tier"], body["role"]) == ("premium", role)
    assert body["member"] == org.members[role].pk


# Projects


def test_an_admin_creates_a_project_with_limits_and_a_budget(org: Org) -> None:
    response = org.client("admin").post(
        "/api/v1/org/projects/",
        {
            "name": "Agents",
            "limits": {"tokens_per_minute": 1000, "requests_per_minute": 5},
            "monthly_budget": "25.50",
            "budget_hard_cap": True,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    project = Project.objects.get(pk=body["id"])
    assert (project.account_id, project.name) == (org.tenant.account.pk, "Agents")
    assert (project.tokens_per_minute, project.requests_per_minute) == (1000, 5)
    assert project.tokens_per_day is None
    assert str(project.monthly_budget) == "25.500000" and project.budget_hard_cap
    assert body["limits"]["tokens_per_minute"] == 1000
    assert body["limits"]["tokens_per_day"] is None
    assert body["is_default"] is False and body["currency"] == "USD"
    entry = AuditEntry.objects.get(object_type="customers.project", object_id=str(project.pk))
    assert (entry.action, entry.actor, entry.account_id) == (
        "create",
        org.members["admin"].user.username,
        org.tenant.account.pk,
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "Big", "limits": {"tokens_per_minute": 2_000_001}}, "limits.tokens_per_minute"),
        ({"name": "Research"}, "name"),
        ({"name": "  "}, "name"),
        ({}, "name"),
        ({"name": "B", "monthly_budget": "0"}, "monthly_budget"),
        ({"name": "B", "monthly_budget": "-1"}, "monthly_budget"),
        ({"name": "B", "monthly_budget": "NaN"}, "monthly_budget"),
        ({"name": "B", "budget_hard_cap": True}, "budget_hard_cap"),
        ({"name": "B", "monthly_budget": "9000001", "budget_hard_cap": True}, "monthly_budget"),
        ({"name": "B", "limits": {"tokens_per_day": -1}}, "limits.tokens_per_day"),
        ({"name": "B", "limits": {"tokens_per_day": "many"}}, "limits.tokens_per_day"),
        ({"name": "x" * 101}, "name"),
    ],
)
def test_a_bad_project_is_a_400_and_nothing_is_made(org: Org, body: dict, param: str) -> None:
    before = Project.objects.count()
    response = org.client("owner").post("/api/v1/org/projects/", body, format="json")
    error = assert_error(response, 400)
    assert error["param"] == param, error
    assert Project.objects.count() == before


def test_a_project_limit_above_the_accounts_names_the_ceiling(org: Org) -> None:
    response = org.client().post(
        "/api/v1/org/projects/",
        {"name": "Big", "limits": {"max_tokens_per_request": 40000}},
        format="json",
    )
    error = assert_error(response, 400)
    assert (
        error["message"]
        == "limits.max_tokens_per_request: At most 32,768: the account's own limit."
    )


@pytest.mark.parametrize("role", ["developer", "billing"])
def test_only_owners_and_admins_change_projects(org: Org, role: str) -> None:
    client = org.client(role)
    error = assert_error(
        client.post("/api/v1/org/projects/", {"name": "Mine"}, format="json"), 403, "role_required"
    )
    assert "owner or admin" in error["message"]
    url = f"/api/v1/org/projects/{org.project.pk}/"
    assert_error(client.patch(url, {"name": "X"}, format="json"), 403, "role_required")
    assert_error(client.post(f"{url}archive/"), 403, "role_required")
    assert Project.objects.get(pk=org.project.pk).name == "Research"


def test_a_developer_sees_only_their_projects(org: Org) -> None:
    listed = org.client("developer").get("/api/v1/org/projects/").json()["results"]
    assert [p["name"] for p in listed] == ["Research"]
    everything = org.client("billing").get("/api/v1/org/projects/").json()["results"]
    assert [p["name"] for p in everything] == ["Default", "Research"]
    default = Project.objects.get(account=org.tenant.account, is_default=True)
    assert_error(org.client("developer").get(f"/api/v1/org/projects/{default.pk}/"), 404)


def test_an_owner_updates_a_projects_name_limits_and_budget(org: Org) -> None:
    url = f"/api/v1/org/projects/{org.project.pk}/"
    Project.objects.filter(pk=org.project.pk).update(tokens_per_day=500)
    response = org.client().patch(
        url,
        {"name": "Lab", "limits": {"tokens_per_minute": 10}, "monthly_budget": "3"},
        format="json",
    )
    assert response.status_code == 200, response.content
    project = Project.objects.get(pk=org.project.pk)
    assert (project.name, project.tokens_per_minute, project.tokens_per_day) == ("Lab", 10, 500)
    response = org.client().patch(url, {"limits": {"tokens_per_day": None}}, format="json")
    assert response.json()["limits"]["tokens_per_day"] is None
    assert_error(
        org.client().patch(url, {"limits": {"tokens_per_minute": 10**9}}, format="json"), 400
    )
    assert Project.objects.get(pk=org.project.pk).tokens_per_minute == 10


def test_archiving_a_project_revokes_its_keys_and_freezes_it(org: Org) -> None:
    made = org.client("developer").post(
        "/api/v1/org/keys/", {"project": org.project.pk}, format="json"
    )
    key = made.json()["key"]
    assert token_client(key).get("/api/v1/me/").status_code == 200
    url = f"/api/v1/org/projects/{org.project.pk}/"
    response = org.client("admin").post(f"{url}archive/")
    assert response.status_code == 200
    assert response.json()["archived_at"] is not None
    assert_error(token_client(key).get("/api/v1/me/"), 401, "authentication_failed")
    assert_error(org.client().patch(url, {"name": "Again"}, format="json"), 409, "archived")
    made = org.client().post("/api/v1/org/keys/", {"project": org.project.pk}, format="json")
    assert assert_error(made, 400)["param"] == "project"


def test_the_default_project_cannot_be_archived(org: Org) -> None:
    default = Project.objects.get(account=org.tenant.account, is_default=True)
    response = org.client().post(f"/api/v1/org/projects/{default.pk}/archive/")
    assert "default project" in assert_error(response, 400)["message"]
    assert ApiKey.objects.get(pk=org.tenant.api_key.pk).revoked_at is None


# Keys


def test_a_developer_makes_a_key_in_their_project_shown_once(org: Org) -> None:
    client = org.client("developer")
    response = client.post(
        "/api/v1/org/keys/", {"name": "ci", "project": org.project.pk}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["key"].startswith(body["prefix"])
    stored = ApiKey.objects.get(key_id=body["key_id"])
    assert (stored.project_id, stored.created_by_id) == (
        org.project.pk,
        org.members["developer"].pk,
    )
    me = token_client(body["key"]).get("/api/v1/me/").json()
    assert me["project"]["id"] == org.project.pk
    again = client.get(f"/api/v1/org/keys/{body['key_id']}/").json()
    assert "key" not in again and again["project"] == org.project.pk


def test_keys_without_a_project_go_to_the_default_one(org: Org) -> None:
    response = org.client("admin").post("/api/v1/org/keys/", {}, format="json")
    assert response.status_code == 201
    assert ApiKey.objects.get(key_id=response.json()["key_id"]).project.is_default
    refused = org.client("developer").post("/api/v1/org/keys/", {}, format="json")
    assert assert_error(refused, 400)["param"] == "project"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"project": "abc"}, "project"),
        ({"project": 2**70}, "project"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "soon"}, "expires_at"),
        ({"name": "n" * 201}, "name"),
    ],
)
def test_a_bad_key_request_is_a_400_and_makes_nothing(org: Org, body: dict, param: str) -> None:
    before = ApiKey.objects.count()
    response = org.client().post("/api/v1/org/keys/", body, format="json")
    assert assert_error(response, 400)["param"] == param
    assert ApiKey.objects.count() == before


def test_a_developer_reaches_only_the_keys_of_their_projects(org: Org) -> None:
    client = org.client("developer")
    assert client.get("/api/v1/org/keys/").json()["results"] == []
    default_key = org.tenant.api_key.key_id
    assert_error(client.get(f"/api/v1/org/keys/{default_key}/"), 404)
    assert_error(client.post(f"/api/v1/org/keys/{default_key}/revoke/"), 404)
    default = Project.objects.get(account=org.tenant.account, is_default=True)
    made = client.post("/api/v1/org/keys/", {"project": default.pk}, format="json")
    assert assert_error(made, 400)["param"] == "project"
    assert ApiKey.objects.get(key_id=default_key).revoked_at is None


def test_keys_are_listed_by_project_and_revoked(org: Org) -> None:
    client = org.client("admin")
    made = client.post("/api/v1/org/keys/", {"project": org.project.pk}, format="json").json()
    listed = client.get("/api/v1/org/keys/", {"project": org.project.pk}).json()["results"]
    assert [k["key_id"] for k in listed] == [made["key_id"]]
    assert len(client.get("/api/v1/org/keys/").json()["results"]) == 2
    assert_error(client.get("/api/v1/org/keys/", {"project": "x"}), 400)
    revoked = client.post(f"/api/v1/org/keys/{made['key_id']}/revoke/")
    assert revoked.json()["revoked_at"] is not None
    assert_error(token_client(made["key"]).get("/api/v1/me/"), 401, "authentication_failed")


def test_billing_members_do_not_touch_keys(org: Org) -> None:
    client = org.client("billing")
    error = assert_error(client.get("/api/v1/org/keys/"), 403, "role_required")
    assert error["message"] == "This needs the role owner or admin or developer; yours is billing."
    assert_error(client.post("/api/v1/org/keys/", {}, format="json"), 403, "role_required")


# Members and invitations


def test_admins_list_members_and_developers_cannot(org: Org) -> None:
    listed = org.client("admin").get("/api/v1/org/members/").json()["results"]
    assert {m["role"] for m in listed} == {"owner", "admin", "developer", "billing"}
    developer = next(m for m in listed if m["role"] == "developer")
    assert developer["projects"] == [org.project.pk]
    assert developer["email"] == org.members["developer"].user.email
    for role in ("developer", "billing"):
        assert_error(org.client(role).get("/api/v1/org/members/"), 403, "role_required")


def test_an_admin_changes_a_developers_role_and_projects(org: Org) -> None:
    member = org.members["developer"]
    url = f"/api/v1/org/members/{member.pk}/"
    default = Project.objects.get(account=org.tenant.account, is_default=True)
    response = org.client("admin").patch(url, {"projects": [default.pk]}, format="json")
    assert response.json()["projects"] == [default.pk]
    response = org.client("admin").patch(url, {"role": "billing"}, format="json")
    assert Member.objects.get(pk=member.pk).role == "billing"
    assert (
        assert_error(org.client("admin").patch(url, {"role": "chief"}, format="json"), 400)["param"]
        == "role"
    )


def test_only_an_owner_makes_or_removes_an_owner(org: Org) -> None:
    admin = org.client("admin")
    developer = org.members["developer"]
    response = admin.patch(f"/api/v1/org/members/{developer.pk}/", {"role": "owner"}, format="json")
    assert "owner" in assert_error(response, 403, "role_required")["message"]
    owner = org.members["owner"]
    assert_error(admin.delete(f"/api/v1/org/members/{owner.pk}/"), 403, "role_required")
    assert Member.objects.get(pk=developer.pk).role == "developer"
    response = org.client("owner").patch(
        f"/api/v1/org/members/{developer.pk}/", {"role": "owner"}, format="json"
    )
    assert response.json()["role"] == "owner"


def test_the_last_owner_stays(org: Org) -> None:
    owner = org.members["owner"]
    response = org.client("owner").delete(f"/api/v1/org/members/{owner.pk}/")
    assert "needs an owner" in assert_error(response, 400)["message"]
    assert Member.objects.filter(pk=owner.pk).exists()


def test_removing_a_member_revokes_their_token_and_keys(org: Org) -> None:
    developer = org.members["developer"]
    made = (
        org.client("developer")
        .post("/api/v1/org/keys/", {"project": org.project.pk}, format="json")
        .json()
    )
    response = org.client("admin").delete(f"/api/v1/org/members/{developer.pk}/")
    assert response.status_code == 204
    assert_error(org.client("developer").get("/api/v1/org/"), 401, "authentication_failed")
    assert_error(token_client(made["key"]).get("/api/v1/me/"), 401, "authentication_failed")
    assert not Member.objects.filter(pk=developer.pk).exists()


def test_an_admin_invites_a_developer_by_email(org: Org) -> None:
    response = org.client("admin").post(
        "/api/v1/org/invitations/",
        {"email": "New.Dev@Example.com", "role": "developer", "projects": [org.project.pk]},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["email"], body["role"], body["state"]) == (
        "new.dev@example.com",
        "developer",
        "open",
    )
    assert body["projects"] == [org.project.pk]
    assert "tfi_" not in response.content.decode()
    [sent] = mail.outbox
    assert sent.to == ["new.dev@example.com"]
    assert org.tenant.account.name in sent.subject
    link = next(word for word in sent.body.split() if "/portal/invite/" in word)
    assert link.startswith("http://testserver/portal/invite/tfi_")
    secret = link.rstrip("/").rsplit("/", 1)[1]
    found = invitation_find(secret)
    assert found is not None and found.pk == body["id"]
    listed = org.client("owner").get("/api/v1/org/invitations/").json()["results"]
    assert listed[0]["id"] == body["id"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"email": "not-an-address", "role": "developer"}, "email"),
        ({"email": "a@example.com", "role": "chief"}, "role"),
        ({"email": "a@example.com"}, "role"),
        ({"email": "a@example.com", "role": "developer", "projects": [2**40]}, "projects"),
    ],
)
def test_a_bad_invitation_is_a_400_and_sends_nothing(org: Org, body: dict, param: str) -> None:
    response = org.client("admin").post("/api/v1/org/invitations/", body, format="json")
    assert assert_error(response, 400)["param"] == param
    assert not Invitation.objects.filter(account=org.tenant.account, email="a@example.com").exists()
    assert mail.outbox == []


def test_inviting_a_member_again_or_an_owner_as_admin_is_refused(org: Org) -> None:
    email = org.members["billing"].user.email
    response = org.client("admin").post(
        "/api/v1/org/invitations/", {"email": email, "role": "admin"}, format="json"
    )
    assert "already a member" in assert_error(response, 400)["message"]
    response = org.client("admin").post(
        "/api/v1/org/invitations/", {"email": "boss@example.com", "role": "owner"}, format="json"
    )
    assert_error(response, 403, "role_required")
    assert mail.outbox == []


def test_a_revoked_invitation_no_longer_opens(org: Org) -> None:
    org.client("admin").post(
        "/api/v1/org/invitations/", {"email": "x@example.com", "role": "billing"}, format="json"
    )
    secret = mail.outbox[0].body.split("/portal/invite/")[1].split("/")[0]
    invitation = Invitation.objects.get(email="x@example.com")
    response = org.client("admin").post(f"/api/v1/org/invitations/{invitation.pk}/revoke/")
    assert response.json()["state"] == "revoked"
    assert invitation_find(secret) is None


# Usage


def test_members_read_usage_by_project_and_developers_only_their_projects(org: Org) -> None:
    at = datetime(2030, 3, 1, 10, tzinfo=UTC)
    default = Project.objects.get(account=org.tenant.account, is_default=True)
    _usage(org, default, at=at, prompt=10)
    _usage(org, org.project, at=at, prompt=7)
    _usage(org, org.project, at=at, prompt=3)
    query = {"from": "2030-03-01T00:00:00Z", "to": "2030-03-02T00:00:00Z", "group_by": "project"}
    rows = org.client("billing").get("/api/v1/org/usage/", query).json()["results"]
    assert [(r["project"], r["requests"], r["prompt_tokens"]) for r in rows] == sorted(
        [(default.pk, 1, 10), (org.project.pk, 2, 10)]
    )
    rows = org.client("developer").get("/api/v1/org/usage/", query).json()["results"]
    assert [(r["project"], r["prompt_tokens"]) for r in rows] == [(org.project.pk, 10)]
    one = org.client().get("/api/v1/org/usage/", {**query, "project": default.pk}).json()
    assert [r["prompt_tokens"] for r in one["results"]] == [10]
    by_key = {**query, "key": org.tenant.api_key.key_id}
    assert org.client().get("/api/v1/org/usage/", by_key).json()["count"] == 2
    assert_error(org.client().get("/api/v1/org/usage/", {**query, "group_by": "tier"}), 400)
    assert_error(org.client().get("/api/v1/org/usage/", {"from": "yesterday"}), 400)


def test_a_key_holder_sees_usage_per_project(org: Org) -> None:
    at = datetime(2030, 3, 1, 10, tzinfo=UTC)
    _usage(org, org.project, at=at, prompt=7)
    query = {"from": "2030-03-01T00:00:00Z", "to": "2030-03-02T00:00:00Z", "group_by": "project"}
    rows = org.tenant.client().get("/api/v1/me/usage/", query).json()["results"]
    assert [(r["project"], r["prompt_tokens"]) for r in rows] == [(org.project.pk, 7)]


# Member tokens


def test_a_member_makes_lists_and_revokes_their_own_tokens(org: Org) -> None:
    client = org.client("billing")
    response = client.post("/api/v1/org/tokens/", {"name": "cron"}, format="json")
    assert response.status_code == 201
    made = response.json()
    assert made["token"].startswith(made["prefix"])
    assert token_client(made["token"]).get("/api/v1/org/").json()["role"] == "billing"
    listed = client.get("/api/v1/org/tokens/").json()["results"]
    assert {t["name"] for t in listed} == {"cron", ""}
    assert all("token" not in t for t in listed)
    other = MemberToken.objects.filter(member=org.members["owner"]).get()
    assert_error(client.get(f"/api/v1/org/tokens/{other.token_id}/"), 404)
    assert_error(client.post(f"/api/v1/org/tokens/{other.token_id}/revoke/"), 404)
    assert client.post(f"/api/v1/org/tokens/{made['token_id']}/revoke/").status_code == 200
    assert_error(token_client(made["token"]).get("/api/v1/org/"), 401, "authentication_failed")
    assert MemberToken.objects.get(pk=other.pk).revoked_at is None


def test_a_token_expiring_in_the_past_is_refused(org: Org) -> None:
    response = org.client().post(
        "/api/v1/org/tokens/", {"expires_at": "2001-01-01T00:00:00Z"}, format="json"
    )
    assert assert_error(response, 400)["param"] == "expires_at"


def test_last_use_is_noted_at_most_once_a_minute(org: Org) -> None:
    token = MemberToken.objects.get(member=org.members["owner"])
    assert token.last_used_at is None
    org.client().get("/api/v1/org/")
    first = MemberToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    org.client().get("/api/v1/org/")
    assert MemberToken.objects.get(pk=token.pk).last_used_at == first
    MemberToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    org.client().get("/api/v1/org/")
    assert MemberToken.objects.get(pk=token.pk).last_used_at > first


def test_a_person_in_two_accounts_acts_in_the_tokens_account_only() -> None:
    """A token belongs to one membership: it opens that account, not the person's other."""
    a, b = org_create(), org_create()
    user = a.members["admin"].user
    elsewhere = Member.objects.create(account=b.tenant.account, user=user, role="owner")
    client = a.client("admin")
    assert client.get("/api/v1/org/").json()["id"] == a.tenant.account.pk
    listed = client.get("/api/v1/org/members/").json()["results"]
    assert elsewhere.pk not in {m["id"] for m in listed}
    assert_error(client.get(f"/api/v1/org/members/{elsewhere.pk}/"), 404)
