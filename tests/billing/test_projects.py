"""Billing by project: every rollup, margin, export, report row and invoice line says which
project its usage was made in, and an account with two projects gets its invoice lines
grouped by project, the groups adding up to the invoice to the cent."""

import csv
import io
import logging
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.budgets import PROJECT_PERCENTS, project_budget_alerts_record
from billing.exports import export_stream
from billing.invoice_document import invoice_document
from billing.margins import margins_run
from billing.models import Invoice, Margin, ProjectBudgetAlert, UsageRollup
from billing.reports import finance_report
from billing.rollups import rollups_run
from billing.selectors import price_list
from billing.services import credit_note_issue, invoices_close
from customers.models import Account, Project
from customers.services import project_create, project_default
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    BookSpec,
    PriceSpec,
    account_make,
    book_create,
    cost_model_create,
    rolled_back,
    usage,
    usage_write,
)
from tests.billing.test_invoices import expected_total, quantities

pytestmark = pytest.mark.django_db
CLOSE = NEXT_MONTH + timedelta(hours=3)
LLAMA = PriceSpec("premium", "llama", Decimal(3), Decimal("0.3"), Decimal(15), Decimal(60))
OTHERS = PriceSpec("premium", "*", Decimal(1), Decimal("0.1"), Decimal(2), fee=Decimal("0.001"))


@pytest.fixture
def books() -> None:
    """Premium: 20 a month with 1,000 tokens included."""
    book_create(
        BookSpec(MONTH - timedelta(days=40), [LLAMA, OTHERS], {"premium": (Decimal(20), 1000)})
    )


def two_projects() -> tuple[Account, Project, Project]:
    account = account_make("premium")
    return account, project_default(account=account), project_create(account=account, name="rag")


def test_rollups_and_margins_are_kept_per_project(books: None) -> None:
    cost_model_create("gpu-a")
    account, default, rag = two_projects()
    usage_write(
        [
            usage(MONTH + timedelta(hours=1), account_id=account.pk, project_id=default.pk),
            usage(MONTH + timedelta(hours=2), account_id=account.pk, project_id=rag.pk),
            usage(MONTH + timedelta(hours=2), account_id=account.pk, project_id=rag.pk),
        ]
    )
    rollups_run(now=CLOSE)
    margins_run(now=CLOSE)

    days = UsageRollup.objects.filter(grain="day", account_id=account.pk)
    assert dict(days.values_list("project_id", "requests")) == {default.pk: 1, rag.pk: 2}
    months = Margin.objects.filter(grain="month", bucket=MONTH, dimension="project")
    tokens = dict(months.values_list("key", "tokens"))
    assert (tokens[str(default.pk)], tokens[str(rag.pk)]) == (1100, 2200)
    # Every dimension adds up to the same total, the project one too.
    assert sum(months.values_list("revenue", flat=True)) == sum(
        Margin.objects.filter(grain="month", bucket=MONTH, dimension="account").values_list(
            "revenue", flat=True
        )
    )


def test_the_finance_report_has_a_row_per_project_named_with_its_account(books: None) -> None:
    account, default, rag = two_projects()
    usage_write(
        [
            usage(MONTH + timedelta(hours=1), account_id=account.pk, project_id=default.pk),
            usage(MONTH + timedelta(hours=1), account_id=account.pk, project_id=rag.pk, prompt=9),
        ]
    )
    rollups_run(now=CLOSE)
    margins_run(now=CLOSE)
    report = finance_report(period_start=MONTH, now=CLOSE)
    labels = {line.label: line.tokens for line in report.lines["project"]}
    assert labels == {
        f"{account.name} / {default.name} (#{default.pk})": 1100,
        f"{account.name} / rag (#{rag.pk})": 109,
    }


def test_an_account_with_one_project_is_invoiced_as_before(books: None) -> None:
    account = account_make("premium")
    default = project_default(account=account)
    usage_write(
        [
            usage(MONTH + timedelta(days=1), account_id=account.pk, project_id=default.pk),
            # A record from before projects (its key deleted): the default project's.
            usage(MONTH + timedelta(days=2), account_id=account.pk),
        ]
    )
    invoices_close(period_start=MONTH, now=CLOSE)
    invoice = Invoice.objects.get(account=account)
    lines = invoice.lines.order_by("pk")
    assert [(line.item, line.quantity) for line in lines] == [
        ("input", 2000),
        ("output", 200),
        ("included", 1000),
        ("plan_fee", 1),
    ]
    assert {line.project_id for line in lines} == {default.pk, None}
    assert not invoice_document(invoice).grouped


def test_a_projects_line_is_credited_on_its_own(books: None) -> None:
    account, default, rag = two_projects()
    usage_write(
        [
            usage(
                MONTH + timedelta(days=1), account_id=account.pk, project_id=p.pk, completion=10**5
            )
            for p in (default, rag)
        ]
    )
    invoices_close(period_start=MONTH, now=CLOSE)
    invoice = Invoice.objects.get(account=account)
    rag_output = invoice.lines.get(item="output", project=rag)
    note = credit_note_issue(invoice=invoice, memo="rag was down", lines=[rag_output])

    credit = note.lines.get()
    assert (credit.project_id, credit.amount_minor) == (rag.pk, -rag_output.amount_minor)
    # The same line of the other project is still there to credit.
    default_output = invoice.lines.get(item="output", project=default)
    credit_note_issue(invoice=invoice, memo="default too", lines=[default_output])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    split=st.lists(
        st.tuples(
            st.sampled_from((0, 1)),
            st.sampled_from(("llama", "qwen")),
            st.integers(0, 40_000),
            st.integers(0, 9_000),
            st.integers(0, 30 * 24 * 60 - 1),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_grouped_lines_add_up_per_project_and_to_the_total(
    split: list[tuple[int, str, int, int, int]],
) -> None:
    with rolled_back():
        book_create(
            BookSpec(MONTH - timedelta(days=40), [LLAMA, OTHERS], {"premium": (Decimal(20), 1000)})
        )
        account, default, rag = two_projects()
        projects = (default, rag)
        records = [
            usage(
                MONTH + timedelta(minutes=minute),
                account_id=account.pk,
                project_id=projects[p].pk,
                model=model,
                prompt=prompt,
                completion=completion,
            )
            for p, model, prompt, completion, minute in split
        ]
        usage_write(records)
        invoices_close(period_start=MONTH, now=CLOSE)
        invoice = Invoice.objects.get(account=account)

        # Each project's usage lines bill exactly its own usage, rated request by request.
        prices = price_list(currency="USD")
        rated: dict[int | None, Decimal] = defaultdict(Decimal)
        for record in records:
            found = prices.rate(
                tier="premium",
                model=record["model"],
                at=record["started_at"],
                quantities=quantities(record),
            )
            rated[record["project_id"]] += found[1].total if found else 0
        billed: dict[int | None, Decimal] = defaultdict(Decimal)
        for line in invoice.lines.exclude(item__in=("included", "plan_fee")):
            billed[line.project_id] += line.amount
        assert billed == {pk: amount for pk, amount in rated.items() if amount or pk in billed}

        doc = invoice_document(invoice)
        used = {r["project_id"] for r in records}
        names = [group.name for group in doc.groups]
        if len(used) == 2:
            assert names == [default.name, "rag", "Account"]
        else:
            assert names == [None]
        assert sum(group.subtotal_minor for group in doc.groups) == invoice.total_minor
        assert invoice.total_minor == expected_total(prices, account, records)
        assert all(line.project_id in (*used, None) for line in invoice.lines.all()), (
            "a line names a project its usage was not made in"
        )


def test_exports_carry_the_project_and_filter_by_it(books: None) -> None:
    account, default, rag = two_projects()
    usage_write(
        [
            usage(MONTH + timedelta(days=1), account_id=account.pk, project_id=default.pk),
            usage(MONTH + timedelta(days=2), account_id=account.pk, project_id=rag.pk),
        ]
    )
    invoices_close(period_start=MONTH, now=CLOSE)

    def rows(kind: str, **scope: Any) -> list[dict[str, str]]:
        data = b"".join(
            export_stream(kind=kind, fmt="csv", since=MONTH, until=NEXT_MONTH, **scope)  # type: ignore[arg-type]
        )
        return list(csv.DictReader(io.StringIO(data.decode())))

    assert [(r["project_id"], r["project_name"]) for r in rows("usage")] == [
        (str(default.pk), default.name),
        (str(rag.pk), "rag"),
    ]
    assert [r["project_name"] for r in rows("usage", project_id=rag.pk)] == ["rag"]
    lines = rows("invoices", project_id=rag.pk)
    assert {(r["project_id"], r["project_name"]) for r in lines} == {(str(rag.pk), "rag")}
    assert [r["item"] for r in lines] == ["input", "output"]
    everything = rows("invoices", account_id=account.pk)
    assert {r["project_name"] for r in everything} == {default.name, "rag", ""}


def test_a_projects_budget_alerts_at_each_threshold_once(
    books: None, caplog: pytest.LogCaptureFixture
) -> None:
    account, default, rag = two_projects()
    # 1,000 input tokens at 1 a million: 0.001 each request, plus the 0.001 fee = 0.002.
    Project.objects.filter(pk=rag.pk).update(monthly_budget=Decimal("0.01"))
    now = MONTH + timedelta(days=10)

    def spend(requests: int, project: Project) -> None:
        usage_write(
            [
                usage(
                    MONTH + timedelta(days=1),
                    account_id=account.pk,
                    project_id=project.pk,
                    model="qwen",
                    completion=0,
                )
                for _ in range(requests)
            ]
        )

    spend(2, rag)
    spend(50, default)  # another project's spend is not rag's
    with caplog.at_level(logging.WARNING, logger="billing.budgets"):
        assert project_budget_alerts_record(now=now) == []
        spend(2, rag)  # 0.008: 80 %
        first = project_budget_alerts_record(now=now)
    assert [(a.project_id, a.percent, a.spent) for a in first] == [
        (rag.pk, 50, Decimal("0.008")),
        (rag.pk, 80, Decimal("0.008")),
    ]
    logged = [r for r in caplog.records if r.msg == "project budget threshold reached"]
    assert [getattr(r, "project_id", None) for r in logged] == [rag.pk, rag.pk]
    assert project_budget_alerts_record(now=now) == []
    spend(1, rag)
    rollups_run(now=now)  # read from the rollups as from the ledger
    assert [a.percent for a in project_budget_alerts_record(now=now)] == [100]
    assert list(
        ProjectBudgetAlert.objects.values_list("percent", flat=True).order_by("percent")
    ) == [*PROJECT_PERCENTS]
