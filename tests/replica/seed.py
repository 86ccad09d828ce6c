"""What the read replica's tests start from, written on the pair's primary by a `manage.py shell`
of its own (tests/replica/conftest.py): a staff user and token, an account, one usage record
and the rollups' watermark, which the finance report states. Prints their ids as JSON (and the
tokens: a second one for a test to revoke)."""

import json

from django.contrib.auth.models import User

from billing.jobs import watermark_set
from console.tokens import staff_token_issue
from customers.services import account_create, tiers_ensure_defaults
from metering.services import usage_records_write
from tests.billing.factories import usage
from tests.replica.support import ACCOUNT, MODEL, PASSWORD, ROLLED_UP_TO, STARTED_AT, USERNAME


def seed() -> None:
    tiers_ensure_defaults()
    user = User.objects.create_superuser(USERNAME, password=PASSWORD)
    token = staff_token_issue(actor=None, user=user, scopes=["read", "billing"])
    spare = staff_token_issue(actor=None, user=user, scopes=["read"])
    account = account_create(name=ACCOUNT, tier_slug="premium")
    record = usage(
        STARTED_AT, account_id=account.pk, model=MODEL, backend="gpu-0", prompt=10, completion=20
    )
    usage_records_write(records=[record])
    watermark_set("rollups", ROLLED_UP_TO)
    ids = {
        "token": token.plaintext,
        "spare_token": spare.plaintext,
        "account_id": account.pk,
        "request_id": str(record["request_id"]),
    }
    print(json.dumps(ids))
