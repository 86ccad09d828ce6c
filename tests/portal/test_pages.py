"""Every portal page as members use it: what they see, what a form refuses (and then changes
nothing), and what each role may do."""

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEntry
from customers.models import ApiKey, Invitation, LimitOverride, Member, Project
from customers.services import api_key_issue, project_create, project_default
from metering.models import UsageRecord
from tests.billing.factories import usage
from tests.support.members import account_with_owner, client_of, member_add

pytestmark = pytest.mark.django_db


def _text(client: Client, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return response.content.decode()


def test_an_owner_creates_edits_and_archives_a_project() -> None:
    owner = account_with_owner()
    client = client_of(owner)
    response = client.post(
        "/portal/projects/new/",
        {"name": "Search", "tokens_per_day": "5000", "monthly_budget": "12.50"},
    )
    assert response["Location"] == "/portal/projects/"
    project = Project.objects.get(account=owner.account, name="Search")
    assert (project.tokens_per_day, project.monthly_budget) == (5000, Decimal("12.50"))
    assert "Search" in _text(client, "/portal/projects/")
    client.post(f"/portal/projects/{project.pk}/", {"name": "Search 2", "budget_hard_cap": "on"})
    project.refresh_from_db()
    assert project.name == "Search" and project.tokens_per_day == 5000  # a hard stop, no budget
    client.post(f"/portal/projects/{project.pk}/", {"name": "Search 2"})
    project = Project.objects.get(pk=project.pk)
    assert (project.name, project.tokens_per_day, project.monthly_budget) == (
        "Search 2",
        None,
        None,
    )
    key = api_key_issue(account=owner.account, project=project).api_key
    confirm = _text(client, f"/portal/projects/{project.pk}/archive/")
    assert f"tf_{key.key_id}_" in confirm
    client.post(f"/portal/projects/{project.pk}/archive/")
    project.refresh_from_db()
    key.refresh_from_db()
    assert project.archived_at is not None and key.revoked_at is not None
    entries = AuditEntry.objects.filter(
        account_id=owner.account_id, object_type="customers.project", object_id=str(project.pk)
    )
    assert list(entries.order_by("at").values_list("action", flat=True)) == [
        "create",
        "update",
        "archive",
    ]


def test_a_projects_limits_stay_within_the_accounts() -> None:
    owner = account_with_owner(tier="free")  # 20 requests a minute
    LimitOverride.objects.create(account=owner.account, tokens_per_minute=1000)
    client = client_of(owner)
    page = client.post(
        "/portal/projects/new/",
        {"name": "Greedy", "requests_per_minute": "21", "tokens_per_minute": "1001"},
    ).content.decode()
    assert "At most 20: the account" in page and "At most 1,000: the account" in page
    for bad in (
        {"name": " "},
        {"name": "x", "tokens_per_day": "-1"},
        {"name": "x", "monthly_budget": "abc"},
        {"name": "Default"},
    ):
        assert client.post("/portal/projects/new/", bad).status_code == 200
    assert list(Project.objects.filter(account=owner.account).values_list("name", flat=True)) == [
        "Default"
    ]


def test_the_default_project_is_not_archived() -> None:
    owner = account_with_owner()
    default = project_default(owner.account)
    assert client_of(owner).post(f"/portal/projects/{default.pk}/archive/").status_code == 404
    default.refresh_from_db()
    assert default.archived_at is None


def test_a_new_keys_secret_is_shown_once() -> None:
    owner = account_with_owner()
    project = project_create(account=owner.account, name="Bots")
    client = client_of(owner)
    day = (timezone.now() + timedelta(days=3)).date().isoformat()
    response = client.post(
        "/portal/keys/new/", {"name": "ci", "project": project.pk, "expires_on": day}
    )
    key = ApiKey.objects.get(account=owner.account, name="ci")
    assert response["Location"] == f"/portal/keys/{key.pk}/created/"
    assert key.expires_at is not None and key.expires_at.date().isoformat() == day
    assert (key.project, key.created_by) == (project, owner)
    first = _text(client, response["Location"])
    secret = first.split('id="new-key" class="tf-secret">')[1].split("<")[0]
    assert secret.startswith(f"tf_{key.key_id}_")
    again = _text(client, response["Location"])
    assert secret not in again and "cannot be shown again" in again
    assert secret not in _text(client, "/portal/keys/")
    client.post(f"/portal/keys/{key.pk}/revoke/")
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_a_key_form_refuses_bad_input() -> None:
    owner = account_with_owner()
    client = client_of(owner)
    yesterday = (timezone.now() - timedelta(days=1)).date().isoformat()
    for bad in (
        {"name": "x", "project": project_default(owner.account).pk, "expires_on": yesterday},
        {"name": "x", "project": "999999999"},
        {"name": "x", "project": "abc"},
        {"name": "x" * 300, "project": project_default(owner.account).pk},
    ):
        assert client.post("/portal/keys/new/", bad).status_code == 200
    assert not ApiKey.objects.filter(account=owner.account).exists()


def test_developers_see_and_manage_only_their_projects_keys() -> None:
    owner = account_with_owner()
    mine = project_create(account=owner.account, name="Mine")
    theirs = project_create(account=owner.account, name="Theirs")
    developer = member_add(owner.account, Member.Role.DEVELOPER, projects=[mine])
    hidden = api_key_issue(account=owner.account, project=theirs, name="theirs-key").api_key
    client = client_of(developer)
    assert "theirs-key" not in _text(client, "/portal/keys/")
    assert client.post(f"/portal/keys/{hidden.pk}/revoke/").status_code == 404
    assert client.post("/portal/keys/new/", {"name": "x", "project": theirs.pk}).status_code == 200
    client.post("/portal/keys/new/", {"name": "own", "project": mine.pk})
    assert ApiKey.objects.get(name="own").project == mine
    hidden.refresh_from_db()
    assert hidden.revoked_at is None


ROLE_PAGES = {
    "/portal/": {"owner", "admin", "developer", "billing"},
    "/portal/projects/": {"owner", "admin", "developer", "billing"},
    "/portal/projects/new/": {"owner", "admin"},
    "/portal/keys/": {"owner", "admin", "developer"},
    "/portal/keys/new/": {"owner", "admin", "developer"},
    "/portal/usage/": {"owner", "admin", "developer", "billing"},
    "/portal/usage.csv": {"owner", "admin", "developer", "billing"},
    "/portal/invoices/": {"owner", "billing"},
    "/portal/invoices/current.html": {"owner", "billing"},
    "/portal/invoices/current.pdf": {"owner", "billing"},
    "/portal/members/": {"owner", "admin"},
    "/portal/members/invite/": {"owner", "admin"},
    "/portal/audit/": {"owner", "admin"},
    "/portal/profile/": {"owner", "admin", "developer", "billing"},
}


@pytest.mark.parametrize("role", ["owner", "admin", "developer", "billing"])
def test_each_role_reaches_its_pages_only(role: str) -> None:
    owner = account_with_owner()
    member = owner if role == "owner" else member_add(owner.account, role)
    client = client_of(member)
    got = {path: client.get(path).status_code for path in ROLE_PAGES}
    assert got == {path: 200 if role in roles else 403 for path, roles in ROLE_PAGES.items()}


def test_usage_filters_pages_and_downloads_the_same_rows() -> None:
    owner = account_with_owner()
    project = project_create(account=owner.account, name="Batch")
    key = api_key_issue(account=owner.account, project=project, name="batch-key").api_key
    now = timezone.now()
    for n in range(60):
        UsageRecord.objects.create(
            **usage(
                now - timedelta(minutes=n),
                account_id=owner.account_id,
                api_key_id=key.pk,
                project_id=project.pk,
                model="model-b" if n % 2 else "model-a",
                prompt=10 + n,
            )
        )
    client = client_of(owner)
    page = _text(client, f"/portal/usage/?project={project.pk}&model=model-a")
    assert "30 requests" in page and "model-b" not in page.split('id="usage"')[1]
    full = _text(client, f"/portal/usage/?key={key.pk}")
    assert "60 requests" in full and "page 1 of 2" in full
    response = client.get(f"/portal/usage.csv?project={project.pk}&model=model-a")
    assert response["Content-Type"].startswith("text/csv")
    body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert len(rows) == 30
    assert {(r["project"], r["model"]) for r in rows} == {("Batch", "model-a")}
    assert rows[0]["key"].startswith(f"tf_{key.key_id}_") and rows[0]["prompt_tokens"] == "10"
    bad = client.get("/portal/usage.csv?since=2026-02-10&until=2026-02-01")
    assert bad.status_code == 400
    assert "ends before it starts" in _text(
        client, "/portal/usage/?since=2026-02-10&until=2026-02-01"
    )
    assert _text(client, "/portal/usage/?since=notadate&page=abc")


def test_the_dashboard_shows_spend_and_usage_this_month() -> None:
    owner = account_with_owner()
    UsageRecord.objects.create(
        **usage(
            timezone.now(),
            account_id=owner.account_id,
            project_id=project_default(owner.account).pk,
            model="dash-model",
            prompt=1234,
            completion=66,
        )
    )
    page = _text(client_of(owner), "/portal/")
    assert 'id="requests-total">1<' in page and 'id="tokens-total">1300<' in page
    assert "dash-model" in page and "Default" in page


def test_invoices_list_the_estimate_and_render_it() -> None:
    owner = account_with_owner()
    client = client_of(owner)
    assert "This month so far" in _text(client, "/portal/invoices/")
    assert "<html" in _text(client, "/portal/invoices/current.html").lower()
    pdf = client.get("/portal/invoices/current.pdf")
    assert pdf.content.startswith(b"%PDF") and "attachment" in pdf["Content-Disposition"]
    assert client.get("/portal/invoices/999999999.pdf").status_code == 404
    assert client.get("/portal/invoices/abc.html").status_code == 404


def test_members_invite_change_and_remove() -> None:
    owner = account_with_owner()
    project = project_create(account=owner.account, name="Web")
    client = client_of(owner)
    client.post(
        "/portal/members/invite/",
        {"email": "Dev@Example.com", "role": "developer", "projects": [project.pk]},
    )
    invitation = Invitation.objects.get(account=owner.account, email="dev@example.com")
    assert list(invitation.projects.all()) == [project]
    assert "dev@example.com" in _text(client, "/portal/members/")
    assert (
        client.post("/portal/members/invite/", {"email": "bad", "role": "admin"}).status_code == 200
    )
    assert (
        client.post(
            "/portal/members/invite/", {"email": "x@example.com", "role": "god"}
        ).status_code
        == 200
    )
    client.post(f"/portal/invitations/{invitation.pk}/revoke/")
    invitation.refresh_from_db()
    assert invitation.revoked_at is not None

    admin = member_add(owner.account, Member.Role.ADMIN)
    key = api_key_issue(account=owner.account, name="admins", created_by=admin).api_key
    client.post(f"/portal/members/{admin.pk}/", {"role": "billing"})
    admin.refresh_from_db()
    assert admin.role == "billing"
    assert "admins" in _text(client, f"/portal/members/{admin.pk}/remove/")
    client.post(f"/portal/members/{admin.pk}/remove/")
    assert not Member.objects.filter(pk=admin.pk).exists()
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_an_admin_cannot_touch_owners_and_the_last_owner_stays() -> None:
    owner = account_with_owner()
    admin = member_add(owner.account, Member.Role.ADMIN)
    client = client_of(admin)
    client.post(f"/portal/members/{owner.pk}/", {"role": "developer"})
    client.post(f"/portal/members/{owner.pk}/remove/")
    client.post("/portal/members/invite/", {"email": "boss2@example.com", "role": "owner"})
    owner.refresh_from_db()
    assert owner.role == "owner"
    assert not Invitation.objects.filter(email="boss2@example.com").exists()
    page = client_of(owner).post(f"/portal/members/{owner.pk}/remove/", follow=True)
    assert "needs an owner" in page.content.decode()
    assert Member.objects.filter(pk=owner.pk).exists()


def test_the_audit_log_shows_the_accounts_own_changes() -> None:
    owner = account_with_owner()
    client = client_of(owner)
    client.post("/portal/projects/new/", {"name": "Audited", "tokens_per_day": "100"})
    page = _text(client, "/portal/audit/")
    assert "customers.project" in page and "tokens_per_day" in page and owner.user.email in page
    other = account_with_owner()
    assert other.user.email not in page


def test_a_member_turns_two_factor_on_and_off() -> None:
    owner = account_with_owner()
    client = client_of(owner)
    assert "Set up an authenticator" in _text(client, "/portal/profile/")
    _text(client, "/portal/profile/two-factor/")
    device = TOTPDevice.objects.get(user=owner.user, confirmed=False)
    wrong = f"{(totp(device.bin_key) + 1) % 1_000_000:06d}"
    client.post("/portal/profile/two-factor/", {"token": wrong})
    device.refresh_from_db()
    assert not device.confirmed
    device.throttle_reset()
    client.post("/portal/profile/two-factor/", {"token": f"{totp(device.bin_key):06d}"})
    device.refresh_from_db()
    assert device.confirmed
    assert "On: signing in asks" in _text(client, "/portal/profile/")  # this session is verified
    client.post("/portal/profile/two-factor/off/", {"token": "000000x"})
    assert TOTPDevice.objects.filter(user=owner.user).exists()
    device.throttle_reset()
    device.last_t = -1
    device.save()
    client.post("/portal/profile/two-factor/off/", {"token": f"{totp(device.bin_key):06d}"})
    assert not TOTPDevice.objects.filter(user=owner.user).exists()
    actions = AuditEntry.objects.filter(account_id=owner.account_id, object_type="auth.user")
    assert sorted(actions.values_list("action", flat=True)) == ["two_factor_off", "two_factor_on"]


def test_a_member_changes_their_password() -> None:
    owner = account_with_owner()
    client = client_of(owner)
    new = "a brand new horse battery"
    page = client.post(
        "/portal/profile/",
        {"old_password": "wrong", "new_password1": new, "new_password2": new},
    )
    assert page.status_code == 200
    client.post(
        "/portal/profile/",
        {
            "old_password": "correct horse battery staple",
            "new_password1": new,
            "new_password2": new,
        },
    )
    owner.user.refresh_from_db()
    assert owner.user.check_password(new)
    assert client.get("/portal/").status_code == 200  # still signed in
