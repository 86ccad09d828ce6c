"""Factories and clients for the management and self-serve API tests (Django's test client)."""

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from billing.models import Invoice, InvoiceLine
from catalogue.models import PriceBook
from console.models import scopes_all
from console.tokens import staff_token_issue
from customers.models import Account, ApiKey
from customers.services import account_create, api_key_issue, tiers_ensure_defaults
from fleet.models import Backend
from metering.models import UsageRecord


def staff_client() -> APIClient:
    """A client holding a management token that may do everything: a fresh superuser's, with
    every scope."""
    return token_client(staff_token(superuser_create(), scopes_all()))


def superuser_create() -> User:
    return User.objects.create_user(
        f"staff-{uuid.uuid4().hex[:8]}", is_staff=True, is_superuser=True
    )


def staff_token(user: User, scopes: list[str]) -> str:
    return staff_token_issue(actor="test", user=user, scopes=scopes).plaintext


def token_client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@dataclass
class Tenant:
    account: Account
    api_key: ApiKey
    key: str
    invoice: Invoice
    draft: Invoice

    def client(self) -> APIClient:
        return token_client(self.key)


def tenant_create(tier: str = "premium") -> Tenant:
    """An account with a key, a finalised invoice with a line, and a draft."""
    tiers_ensure_defaults()
    account = account_create(name=f"acct-{uuid.uuid4().hex[:8]}", tier_slug=tier)
    issued = api_key_issue(account=account, name="main")
    return Tenant(
        account=account,
        api_key=issued.api_key,
        key=issued.plaintext,
        invoice=invoice_create(account, month=1, finalised=True),
        draft=invoice_create(account, month=2, finalised=False),
    )


def invoice_create(account: Account, *, month: int, finalised: bool) -> Invoice:
    """A draft with one line, finalised after (a finalised invoice's lines cannot be added)."""
    start = datetime(2030, month, 1, tzinfo=UTC)
    end = datetime(2030, month + 1, 1, tzinfo=UTC)
    invoice = Invoice.objects.create(
        account=account,
        period_start=start,
        period_end=end,
        amount=Decimal("12.5"),
        total_minor=1250,
    )
    InvoiceLine.objects.create(
        invoice=invoice,
        item=InvoiceLine.Item.OUTPUT,
        tier=account.tier.slug,
        model="llama",
        quantity=1_000_000,
        unit_price=Decimal("12.5"),
        amount=Decimal("12.5"),
        amount_minor=1250,
        usage_from=start,
        usage_to=end,
    )
    if finalised:
        Invoice.objects.filter(pk=invoice.pk).update(
            number=f"TF-{uuid.uuid4().hex[:10]}",
            status=Invoice.Status.FINALISED,
            finalised_at=end,
        )
        invoice.refresh_from_db()
    return invoice


def usage_create(
    account: Account,
    *,
    at: datetime,
    model: str = "llama",
    prompt: int = 10,
    completion: int = 5,
    energy: float | None = 2.0,
) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=uuid.uuid4(),
        account_id=account.pk,
        api_key_id=0,
        tier=account.tier.slug,
        model=model,
        backend="sim-a",
        endpoint="chat",
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_ms=10.0,
        status_code=200,
        outcome=UsageRecord.Outcome.OK,
        streamed=False,
        started_at=at,
        ended_at=at + timedelta(seconds=1),
        energy_joules=energy,
    )


def backend_create(name: str = "") -> Backend:
    return Backend.objects.create(
        name=name or f"b-{uuid.uuid4().hex[:8]}",
        base_url="http://127.0.0.1:9",
        upstream_model="llama-up",
        public_models=["llama"],
    )


def price_book_create(*, in_force: bool) -> PriceBook:
    now = datetime.now(UTC)
    start = now - timedelta(days=1) if in_force else now + timedelta(days=30)
    start += timedelta(microseconds=uuid.uuid4().int % 1_000_000)
    return PriceBook.objects.create(name="list", effective_from=start)


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is the API's error shape with this status (and code)."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def schema_operations() -> list[tuple[str, str]]:
    """Every (path, METHOD) of the OpenAPI schema: a new endpoint is covered the day it is added."""
    schema: dict[str, Any] = SchemaGenerator().get_schema(request=None, public=True)
    return sorted(
        (path, method.upper())
        for path, item in schema["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    )


# The areas of the API that are not staff's: key holders' (/me/) and members' (/org/, whose
# own tests are tests/console/test_org_api*.py).
CUSTOMER_PREFIXES = ("/api/v1/me/", "/api/v1/org/")


def is_staff_operation(path: str) -> bool:
    return not path.startswith(CUSTOMER_PREFIXES)


def operation_url(path: str, tenant: Tenant) -> str:
    """The path with its parameters naming the tenant's objects (or objects only staff may
    touch)."""
    book = price_book_create(in_force=False)
    ids = {
        "/api/v1/accounts/": tenant.account.pk,
        "/api/v1/projects/": tenant.api_key.project_id,
        "/api/v1/keys/": tenant.api_key.key_id,
        "/api/v1/me/keys/": tenant.api_key.key_id,
        "/api/v1/invoices/": tenant.invoice.pk,
        "/api/v1/me/invoices/": tenant.invoice.pk,
        "/api/v1/tiers/": tenant.account.tier.pk,
        "/api/v1/backends/": backend_create().pk,
        "/api/v1/price-books/": book.pk,
        "/api/v1/prices/": 1,
        "/api/v1/plan-prices/": 1,
        "/api/v1/audit-entries/": 1,
    }
    prefix = path.split("{")[0]
    return re.sub(r"\{[^}]+\}", str(ids.get(prefix, 1)), path)


def send(client: APIClient, method: str, url: str) -> Any:
    """An empty JSON object to any operation."""
    return client.generic(method, url, data="{}", content_type="application/json")
