"""Every `manage.py` command that changes customers, keys, backends, books, billing or staff
tokens leaves audit entries naming the command and the OS user who ran it."""

import io
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from audit.models import AuditEntry
from customers.keys import key_id_parse
from customers.models import Account, ApiKey, Tier
from customers.services import account_create, tiers_ensure_defaults

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def os_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands run as OS user "alice" (getpass reads LOGNAME first)."""
    monkeypatch.setenv("LOGNAME", "alice")


@pytest.fixture(autouse=True)
def fresh_audit() -> None:
    """Only this test's entries count: tests that drive servers may have left committed rows
    (default tiers and their entries) in the test database."""
    AuditEntry.objects.all().delete()


def tiers_missing() -> set[str]:
    return {"free", "interactive", "premium"} - set(Tier.objects.values_list("slug", flat=True))


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue().strip()


def entries(object_type: str, action: str | None = None) -> list[AuditEntry]:
    found = AuditEntry.objects.filter(object_type=object_type).order_by("id")
    return list(found.filter(action=action) if action else found)


def test_create_account_is_audited_as_the_command_and_its_user() -> None:
    missing = tiers_missing()
    run("create_account", "umbrella", "--tier=premium")

    [entry] = entries("customers.account")
    account = Account.objects.get(name="umbrella")
    assert (entry.actor, entry.actor_user_id) == ("command:create_account by alice", None)
    assert (entry.action, entry.object_id, entry.before) == ("create", str(account.pk), None)
    assert entry.after is not None
    assert (entry.after["name"], entry.after["tier_id"]) == ("umbrella", account.tier_id)
    # The default tiers it made first are the command's too.
    tiers = entries("customers.tier", "create")
    assert {tier.after["slug"] for tier in tiers if tier.after} == missing
    assert {tier.actor for tier in tiers} <= {"command:create_account by alice"}


def test_create_account_refuses_an_unknown_tier_or_a_taken_name_and_records_nothing() -> None:
    tiers_ensure_defaults()
    account_create(name="umbrella", tier_slug="free")
    before = AuditEntry.objects.count()

    with pytest.raises(CommandError, match="No tier 'gold'; the tiers are premium, interactive"):
        run("create_account", "initech", "--tier=gold")
    with pytest.raises(CommandError, match=r"An account named 'umbrella' exists already\."):
        run("create_account", "umbrella")

    assert list(Account.objects.values_list("name", flat=True)) == ["umbrella"]
    assert AuditEntry.objects.count() == before


def test_issue_key_is_audited_with_the_new_keys_id_never_its_secret() -> None:
    tiers_ensure_defaults()
    account = account_create(name="umbrella", tier_slug="free")

    plaintext = run("issue_key", "umbrella", "--name=ci")

    [entry] = entries("customers.apikey", "issue")
    key = ApiKey.objects.get(key_id=key_id_parse(plaintext))
    assert entry.actor == "command:issue_key by alice"
    assert entry.object_id == str(key.pk)
    assert entry.after is not None
    assert (entry.after["key_id"], entry.after["name"]) == (key.key_id, "ci")
    assert entry.after["account_id"] == account.pk
    assert plaintext not in str(entry.after)
    assert "secret_hash" not in entry.after


def test_issue_key_for_an_unknown_account_says_so() -> None:
    with pytest.raises(CommandError, match=r"No account named 'nobody'\."):
        run("issue_key", "nobody")
    assert not AuditEntry.objects.filter(action="issue").exists()


def test_revoke_key_is_audited_with_the_revocation_time() -> None:
    tiers_ensure_defaults()
    account_create(name="umbrella", tier_slug="free")
    plaintext = run("issue_key", "umbrella")

    run("revoke_key", plaintext)

    [entry] = entries("customers.apikey", "revoke")
    key = ApiKey.objects.get(key_id=key_id_parse(plaintext))
    assert entry.actor == "command:revoke_key by alice"
    assert entry.before is not None and entry.after is not None
    assert entry.before["revoked_at"] is None
    assert key.revoked_at is not None
    assert entry.after["revoked_at"].startswith(f"{key.revoked_at:%Y-%m-%dT%H:%M:%S.}")


def test_register_backend_is_audited_as_a_creation_then_as_an_update() -> None:
    run("register_backend", "gpu-1", "http://127.0.0.1:9201", "--upstream-model=m")
    run("register_backend", "gpu-1", "http://127.0.0.1:9202", "--upstream-model=m")

    created, updated = entries("fleet.backend")
    assert {created.actor, updated.actor} == {"command:register_backend by alice"}
    assert (created.action, created.before) == ("create", None)
    assert created.after is not None and created.after["base_url"] == "http://127.0.0.1:9201"
    assert updated.action == "update"
    assert updated.before is not None and updated.after is not None
    assert (updated.before["base_url"], updated.after["base_url"]) == (
        "http://127.0.0.1:9201",
        "http://127.0.0.1:9202",
    )


def test_register_backend_refused_records_nothing() -> None:
    with pytest.raises(CommandError):
        run("register_backend", "gpu-1", "http://169.254.169.254", "--upstream-model=m")
    assert not AuditEntry.objects.filter(object_type="fleet.backend").exists()


def test_seed_demo_audits_every_change_as_the_command_revocations_included() -> None:
    backend = "--backend=sim-x=http://127.0.0.1:9131"
    missing = tiers_missing()
    run("seed_demo", "--json", backend)
    first = set(ApiKey.objects.values_list("key_id", flat=True))
    run("seed_demo", "--json", backend)

    made = {(e.object_type, e.action) for e in AuditEntry.objects.all()}
    assert made - {("customers.tier", "create")} == {
        ("customers.account", "create"),
        ("customers.project", "create"),  # each account's default project
        ("customers.apikey", "issue"),
        ("customers.apikey", "revoke"),
        ("fleet.backend", "create"),  # once: registering it unchanged again changes nothing
    }
    assert (("customers.tier", "create") in made) == bool(missing)
    assert set(AuditEntry.objects.values_list("actor", flat=True)) == {"command:seed_demo by alice"}
    revoked = {e.after["key_id"] for e in entries("customers.apikey", "revoke") if e.after}
    assert revoked == first


def test_seed_demo_billing_audits_the_book_cost_model_and_budget_it_creates() -> None:
    run("seed_demo", "--json", "--backend=sim-x=http://127.0.0.1:9131")
    run("seed_demo_billing", "--model=llama-3.1-8b-instruct", "--backend=sim-x")

    [book] = entries("catalogue.pricebook", "create")
    [cost_model] = entries("billing.costmodel", "create")
    [budget] = entries("customers.budget", "create")
    assert {book.actor, cost_model.actor, budget.actor} == {"command:seed_demo_billing by alice"}
    assert book.after is not None and cost_model.after is not None and budget.after is not None
    assert book.after["name"] == "Demo list prices"
    assert {price["tier"] for price in book.after["prices"]} == {"free", "interactive", "premium"}
    assert cost_model.after["backend"] == "sim-x"
    assert Decimal(budget.after["monthly_limit"]) == Decimal(50)

    # Run again, it finds everything there and neither creates nor records anything.
    count = AuditEntry.objects.count()
    run("seed_demo_billing", "--model=llama-3.1-8b-instruct", "--backend=sim-x")
    assert AuditEntry.objects.count() == count


def test_staff_token_is_audited_as_the_command_and_its_user() -> None:
    user = User.objects.create_user("root", is_staff=True)

    run("staff_token", "root", "--scope=keys")

    [entry] = entries("console.stafftoken", "issue")
    assert entry.actor == "command:staff_token by alice"
    assert entry.after is not None
    assert (entry.after["user_id"], entry.after["scopes"]) == (user.pk, ["keys"])


def test_changes_after_a_command_are_no_longer_its() -> None:
    run("create_account", "umbrella")

    account_create(name="initech", tier_slug="free")

    latest = AuditEntry.objects.filter(object_type="customers.account").latest("id")
    assert (latest.after or {})["name"] == "initech"
    assert latest.actor == "system"
