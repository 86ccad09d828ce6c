"""The demo's prices and costs, so that a fresh `tf up` shows the business at once:
profit = tokens x (price - cost per token), per tier (docs/billing.md, "The demo's figures").

Seeded only where nothing of the kind exists, never over what staff made: a price book when
the billing currency has none, a cost model for each demo backend that has none, a budget for
the demo account when it has none. Where each figure comes from:

- Prices, per 1M tokens of Llama-3.1-8B-Instruct: public list prices in 2025-26 run from
  $0.02-0.30 input and $0.03-0.83 output (e.g. Amazon Bedrock 0.22/0.22, Databricks
  0.15/0.45, Azure 0.30/0.61, Cloudflare 0.28/0.83; Together AI 0.20/0.60). Interactive sits
  in that range at 0.20/0.60; cached input is half the input price, the usual discount;
  premium is 1.5 times dearer for priority admission. Free is an included monthly quota at
  zero price: 30 days of its 200,000 tokens a day.
- Plan fees (interactive $10, premium $100 a month) are illustrative: there is no public
  reference for a plan fee; they show how a fee lands on invoices.
- GPU cost: an 8-GPU H100 server costs about $300,000-350,000 (public quotes, 2024-25);
  $320,000 / 8 GPUs, written off over 4 years (35,064 hours), is $1.14 a GPU-hour. Each
  simulated backend is one H100. Space, network and staff are left out.
- Electricity: the US average retail price to the commercial sector, about 13 cents per kWh
  (EIA, Electric Power Monthly, 2024), for sim-a; to the industrial sector, about 8 cents, for
  sim-b.
- PUE: 1.56, the industry average of the Uptime Institute's 2024 Global Data Center Survey,
  for sim-a (a typical facility); 1.3, what new large facilities reach (same survey), for
  sim-b.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from billing.models import CostModel
from billing.selectors import billing_currency
from catalogue.models import PlanPrice, Price, PriceBook
from customers.models import Account, Budget

BOOK_NAME = "Demo list prices"
# Per tier: (input, cached input, output) per 1M tokens, monthly fee, included tokens.
TIER_TERMS = {
    "free": ((Decimal("0"), Decimal("0"), Decimal("0")), Decimal("0"), 6_000_000),
    "interactive": ((Decimal("0.20"), Decimal("0.10"), Decimal("0.60")), Decimal("10"), 0),
    "premium": ((Decimal("0.30"), Decimal("0.15"), Decimal("0.90")), Decimal("100"), 0),
}
GPU_COST_PER_HOUR = Decimal("1.14")
# Per demo backend, in the order given: (electricity per kWh, PUE); further ones get the first.
SITES = ((Decimal("0.13"), Decimal("1.56")), (Decimal("0.08"), Decimal("1.30")))
BUDGET = {"monthly_limit": Decimal("50"), "alert_percents": [50, 80, 100], "hard_cap": True}


@dataclass(frozen=True)
class DemoBilling:
    """What this seeding created (None and [] where something was there already)."""

    price_book: PriceBook | None
    cost_models: list[CostModel]
    budget: Budget | None


def demo_billing_seed(
    *,
    model: str,
    backends: Sequence[str],
    budget_account: str,
    now: datetime | None = None,
) -> DemoBilling:
    """Prices for `model` on every demo tier, a cost model per backend and a budget for
    `budget_account`, each only where none exists. In force from `now`: usage before it is
    not repriced, and GPU time is costed from then on."""
    now = now or timezone.now()
    with transaction.atomic():
        return DemoBilling(
            price_book=_book_seed(model, now),
            cost_models=[
                cost_model
                for index, backend in enumerate(backends)
                if (cost_model := _cost_model_seed(backend, SITES[index % len(SITES)], now))
            ],
            budget=_budget_seed(budget_account),
        )


def _book_seed(model: str, now: datetime) -> PriceBook | None:
    currency = billing_currency()
    if PriceBook.objects.filter(currency=currency).exists():
        return None
    book = PriceBook.objects.create(name=BOOK_NAME, currency=currency, effective_from=now)
    for tier, ((input_, cached, output), fee, included) in TIER_TERMS.items():
        Price.objects.create(
            price_book=book,
            tier=tier,
            model=model,
            input_per_million=input_,
            cached_input_per_million=cached,
            output_per_million=output,
        )
        PlanPrice.objects.create(
            price_book=book, tier=tier, monthly_fee=fee, included_tokens=included
        )
    return book


def _cost_model_seed(
    backend: str, site: tuple[Decimal, Decimal], now: datetime
) -> CostModel | None:
    if CostModel.objects.filter(backend=backend).exists():
        return None
    electricity, pue = site
    return CostModel.objects.create(
        backend=backend,
        effective_from=now,
        currency=billing_currency(),
        electricity_per_kwh=electricity,
        pue=pue,
        gpu_cost_per_hour=GPU_COST_PER_HOUR,
    )


def _budget_seed(account_name: str) -> Budget | None:
    account = Account.objects.filter(name=account_name).first()
    if account is None or Budget.objects.filter(account=account).exists():
        return None
    return Budget.objects.create(account=account, currency=billing_currency(), **BUDGET)
