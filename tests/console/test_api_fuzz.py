"""The API fuzzed from its own OpenAPI schema (schemathesis): no input yields a 5xx (P6), and
every refusal is in the API's JSON error shape.

Every operation is called with generated parameters and bodies, as staff (staff endpoints),
as a key holder (/api/v1/me/) or as an account's owner (/api/v1/org/), through Django's WSGI
app inside the test's transaction. Path parameters are either generated or the ids of objects
that exist, so updates, deletes and actions reach real rows, not only 404s.
"""

import json
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from audit.models import AuditEntry
from catalogue.models import PlanPrice, Price
from console.models import scopes_all
from customers.members import invitation_create, member_token_issue
from customers.models import Tier
from customers.services import api_key_issue, project_create
from tests.console.api_support import (
    backend_create,
    price_book_create,
    staff_token,
    tenant_create,
)
from tests.console.org_support import member_add

# Enough to reach every field of every operation in a CI run of a minute or two.
EXAMPLES = 12

SCHEMA = schemathesis.openapi.from_dict(
    json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(public=True)))
)
# Ids of objects that exist during the current test, by path prefix (filled by `world`).
EXISTING: dict[str, Any] = {}


@SCHEMA.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    prefix = context.operation.path.split("{")[0]
    if not path_parameters or prefix not in EXISTING:
        return st.just(path_parameters)
    real = {name: EXISTING[prefix] for name in path_parameters}
    return st.sampled_from([path_parameters, real])


@pytest.fixture
def wsgi_app(db: None) -> Iterator[Any]:
    """Django's WSGI app inside the test's transaction: like Django's test client, it must not
    close the connection at the end of each request (that would end the transaction)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield get_wsgi_application()
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def tokens(wsgi_app: Any) -> Iterator[dict[str, str]]:
    """A staff token and a key holder's key, and objects of every kind for the paths to name."""
    tenant = tenant_create()
    book = price_book_create(in_force=False)
    price = Price.objects.create(
        price_book=book,
        tier="premium",
        input_per_million=1,
        cached_input_per_million=1,
        output_per_million=1,
    )
    spare = api_key_issue(account=tenant.account, name="spare").api_key
    entry = AuditEntry.objects.create(actor="x", action="create", object_type="x", object_id="1")
    owner = member_add(tenant, "owner")
    member_token = member_token_issue(member=owner)
    invitation = invitation_create(account=tenant.account, email="x@example.com", role="admin")
    EXISTING.update(
        {
            "/api/v1/accounts/": tenant.account.pk,
            "/api/v1/projects/": tenant.api_key.project_id,
            "/api/v1/keys/": spare.key_id,
            "/api/v1/tiers/": Tier.objects.create(slug="fuzz", name="fuzz", priority=5).pk,
            "/api/v1/backends/": backend_create().pk,
            "/api/v1/price-books/": book.pk,
            "/api/v1/prices/": price.pk,
            "/api/v1/plan-prices/": PlanPrice.objects.create(price_book=book, tier="free").pk,
            "/api/v1/invoices/": tenant.invoice.pk,
            "/api/v1/audit-entries/": entry.pk,
            "/api/v1/me/invoices/": tenant.invoice.pk,
            "/api/v1/me/keys/": spare.key_id,
            "/api/v1/org/projects/": project_create(account=tenant.account, name="fuzz").pk,
            "/api/v1/org/keys/": spare.key_id,
            "/api/v1/org/members/": member_add(tenant, "developer").pk,
            "/api/v1/org/invitations/": invitation.invitation.pk,
            "/api/v1/org/tokens/": member_token.token.token_id,
        }
    )
    staff = User.objects.create_user("fuzzer", is_staff=True, is_superuser=True)
    yield {
        "staff": staff_token(staff, scopes_all()),
        "own": tenant.key,
        "org": member_token.plaintext,
    }
    EXISTING.clear()


@schemathesis.check
def errors_have_the_api_shape(ctx: Any, response: Any, case: Any) -> None:
    """Every refusal is the API's one JSON error shape, never a page of HTML or text."""
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"}, error


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_api_fail(case: Any, wsgi_app: Any, tokens: dict[str, str]) -> None:
    path = case.operation.path
    area = "own" if path.startswith("/api/v1/me/") else "org" if "/org/" in path else "staff"
    token = tokens[area]
    case.call_and_validate(
        app=wsgi_app,
        headers={"Authorization": f"Bearer {token}"},
        checks=[not_a_server_error, errors_have_the_api_shape],
    )
