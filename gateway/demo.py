"""What `tf up` seeds so that a fresh install can be tried at once: demo accounts, keys and
backends (`manage.py seed_demo`), through the customers' and the fleet's services."""

from dataclasses import dataclass

from django.db import transaction

from customers.models import Account, ApiKey
from customers.services import account_create, api_key_issue, api_key_revoke, tiers_ensure_defaults
from fleet.services import backend_register

# What `tf up` sets up so that a fresh install can be tried at once: accounts (name, tier) and
# the model that the simulated backends serve.
DEMO_ACCOUNTS = (
    ("acme-research", "premium"),
    ("northwind-apps", "interactive"),
    ("hobbyist", "free"),
)
DEMO_MODEL = "llama-3.1-8b-instruct"
DEMO_KEY_NAME = "tf-up"


@dataclass(frozen=True)
class DemoKey:
    account: str
    tier: str
    # Shown once to the caller; not stored anywhere.
    plaintext: str


def demo_seed(*, backend_urls: dict[str, str]) -> list[DemoKey]:
    """Default tiers, demo accounts and backends, and a new key per demo account. Re-runnable.

    Keys are stored only as hashes, so handing one out means issuing a new one; the demo
    account's earlier demo keys are revoked so that live keys nobody holds do not pile up.
    """
    tiers_ensure_defaults()
    with transaction.atomic():
        for name, url in backend_urls.items():
            backend_register(
                name=name,
                base_url=url,
                upstream_model=DEMO_MODEL,
                public_models=[DEMO_MODEL],
                telemetry_url=f"{url.rstrip('/')}/dcgm/metrics",
                supports_priority=True,
            )
        return [_demo_key_reissue(name=name, tier_slug=tier) for name, tier in DEMO_ACCOUNTS]


def _demo_key_reissue(*, name: str, tier_slug: str) -> DemoKey:
    account = Account.objects.filter(name=name).first()
    if account is None:
        account = account_create(name=name, tier_slug=tier_slug)
    earlier = ApiKey.objects.filter(account=account, name=DEMO_KEY_NAME, revoked_at__isnull=True)
    for key_id in earlier.values_list("key_id", flat=True):
        api_key_revoke(key_id=key_id)
    issued = api_key_issue(account=account, name=DEMO_KEY_NAME)
    return DemoKey(account=account.name, tier=account.tier.slug, plaintext=issued.plaintext)
