"""Our finalised invoices in Stripe: customers, invoices and items pushed, then compared (P3).

Stripe collects; our invoices stay the record. Every request that makes or changes a Stripe
object carries an idempotency key made of our ids (`tf-invoice-42`), so the library's retries
after a lost response, a job run twice and two workers at once all make one object. Stripe
keeps keys 24 hours, so a push also looks for what an earlier, interrupted push made, by the
ids it put in the objects' metadata, before making anything: re-run at any time, a push
completes what was started and duplicates nothing.

A push of one invoice (docs/billing.md, "Stripe"):
1. the account's Stripe customer: the one found by our account id (Stripe's search), else made,
   its id committed at once;
2. in one transaction, holding the account's advisory lock: the Stripe invoice (a draft Stripe
   never advances on its own, the customer's pending items left out), one invoice item per
   line for the line's `amount_minor`, a check that Stripe's lines are exactly ours, then
   finalisation (Stripe collects from there) and the Stripe ids stored. A failure rolls back
   ours and leaves at most a draft at Stripe, which the next push completes.
An invoice of zero has nothing to collect or credit and is not pushed.

Reconciliation compares our invoices with Stripe's, and reports an account with more than one
Stripe customer (or a customer for an account we do not have): what the search could not see.
"""

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import stripe
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from stripe.params import InvoiceCreateParams

from billing.models import Invoice, InvoiceLine
from customers.models import Account

log = logging.getLogger(__name__)

# Retries of a request whose answer was lost or refused for a while (same idempotency key).
NETWORK_RETRIES = 3
# A finalised invoice not in Stripe this long after is reported missing (the push job runs
# every few minutes).
PUSH_GRACE = timedelta(hours=1)
# Pushes of one account's invoices run one at a time.
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('billing.stripe'), %s)"
# What Stripe's status should be for each of ours, once pushed.
_EXPECTED_STATUS: dict[str, set[str]] = {
    Invoice.Payment.OPEN: {"open"},
    Invoice.Payment.FAILED: {"open", "uncollectible"},
    Invoice.Payment.PAID: {"paid"},
}


class StripeNotConfigured(Exception):
    """STRIPE["API_KEY"] is empty: nothing is pushed."""


class StripeSyncError(Exception):
    """Stripe holds something for this invoice that pushing again will not fix."""


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One difference between our invoices (or accounts) and Stripe's."""

    # missing | amount | currency | status | duplicate | unknown (invoices);
    # duplicate_customer | unknown_customer (customers)
    problem: str
    # Our invoice number; empty for a Stripe invoice that is none of ours, and for customers.
    number: str
    stripe_invoice_id: str
    ours: str
    theirs: str
    # The account a customer problem is about (the customer's `tf_account_id`).
    account_id: str = ""


def stripe_configured() -> bool:
    return bool(settings.STRIPE.api_key)


def stripe_client() -> stripe.StripeClient:
    conf = settings.STRIPE
    if not conf.api_key:
        raise StripeNotConfigured("STRIPE_API_KEY is not set")
    return stripe.StripeClient(
        conf.api_key,
        base_addresses={"api": conf.api_base} if conf.api_base else None,
        max_network_retries=NETWORK_RETRIES,
    )


def stripe_customer_ensure(*, account_id: int, client: stripe.StripeClient) -> str:
    """The account's Stripe customer id, the customer made the first time.

    A customer an earlier try made, whose answer was lost before its id was committed, is
    found again: for 24 hours by the idempotency key (Stripe replays its answer), and after
    that by our account id in its metadata (Stripe's search, which lags writes by about a
    minute; reconciliation reports a duplicate that slips past both).
    """
    with transaction.atomic():
        _account_lock(account_id)
        account = Account.objects.get(pk=account_id)
        if account.stripe_customer_id:
            return account.stripe_customer_id
        customer_id = _customer_find(client, account.pk)
        if not customer_id:
            customer_id = client.v1.customers.create(
                params={"name": account.name, "metadata": {"tf_account_id": str(account.pk)}},
                options={"idempotency_key": f"tf-customer-{account.pk}"},
            ).id
        Account.objects.filter(pk=account.pk).update(stripe_customer_id=customer_id)
    return customer_id


def _customer_find(client: stripe.StripeClient, account_id: int) -> str:
    """The id of the oldest Stripe customer made for the account, "" if none is found."""
    query = f"metadata['tf_account_id']:'{account_id}'"
    found = client.v1.customers.search(params={"query": query, "limit": 100}).data
    if len(found) > 1:
        log.warning(
            "stripe has several customers for one account; the oldest is used",
            extra={"account_id": account_id, "stripe_customer_ids": [c.id for c in found]},
        )
    oldest = min(found, key=lambda customer: (customer.created, customer.id), default=None)
    return oldest.id if oldest is not None else ""


def stripe_invoice_push(*, invoice_id: int, client: stripe.StripeClient | None = None) -> str:
    """Put one finalised invoice or credit note in Stripe, finalised there; its Stripe id.

    "" for an invoice of zero, which is not pushed.
    """
    client = client or stripe_client()
    invoice = Invoice.objects.get(pk=invoice_id)
    if invoice.status != Invoice.Status.FINALISED:
        raise StripeSyncError(f"invoice {invoice_id} is not finalised")
    if invoice.stripe_invoice_id or invoice.total_minor == 0:
        return invoice.stripe_invoice_id
    customer = stripe_customer_ensure(account_id=invoice.account_id, client=client)
    with transaction.atomic():
        _account_lock(invoice.account_id)
        # Locked too: a webhook about this invoice waits for the push to be stored.
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        if invoice.stripe_invoice_id:
            return invoice.stripe_invoice_id
        lines = list(invoice.lines.select_related("project").order_by("pk"))
        remote = _remote_invoice(client, invoice, customer)
        if remote.status == "draft":
            _items_add(client, invoice, lines, remote.id, customer)
        items = _lines_check(client, invoice, lines, remote)
        if remote.status == "draft":
            remote = client.v1.invoices.finalize_invoice(
                remote.id,
                params={"auto_advance": True},
                options={"idempotency_key": f"tf-invoice-{invoice.pk}-finalize"},
            )
        _pushed_store(invoice, lines, remote, items)
    log.info(
        "invoice pushed to stripe",
        extra={"invoice": invoice.number, "stripe_invoice_id": remote.id},
    )
    return remote.id


def stripe_invoices_push_pending(*, client: stripe.StripeClient | None = None) -> dict[str, int]:
    """Push every finalised invoice not in Stripe yet, oldest first; counts pushed and failed.

    One invoice's failure is logged and the others go on; it is tried again next run. Stripe
    out of reach or refusing our key stops the run: every other invoice would fail the same.
    """
    client = client or stripe_client()
    pending = (
        Invoice.objects.filter(status=Invoice.Status.FINALISED, stripe_invoice_id="")
        .exclude(total_minor=0)
        .order_by("finalised_at", "pk")
        .values_list("pk", flat=True)
    )
    counts = {"pushed": 0, "failed": 0}
    for invoice_id in pending:
        try:
            stripe_invoice_push(invoice_id=invoice_id, client=client)
        except (stripe.APIConnectionError, stripe.AuthenticationError):
            raise
        except (stripe.StripeError, StripeSyncError):
            log.exception("invoice push to stripe failed", extra={"invoice_id": invoice_id})
            counts["failed"] += 1
        else:
            counts["pushed"] += 1
    return counts


def stripe_invoices_reconcile(
    *,
    since: datetime,
    now: datetime | None = None,
    client: stripe.StripeClient | None = None,
) -> list[Discrepancy]:
    """Compare our invoices finalised since `since` with Stripe's; the differences, logged.

    Looks at our finalised invoices and credit notes (not those of zero) and at every Stripe
    invoice made since `since` for the customers they belong to: missing in Stripe, total
    (Stripe's subtotal: we send no tax or discount) or currency that differs, a Stripe status
    that does not match our payment state, a second Stripe invoice for one of ours, and
    Stripe invoices that are none of ours. Then at every Stripe customer
    (`stripe_customers_reconcile`): accounts with more than one, customers of none of ours.
    """
    client = client or stripe_client()
    now = now or timezone.now()
    ours = (
        Invoice.objects.filter(status=Invoice.Status.FINALISED, finalised_at__gte=since)
        .exclude(total_minor=0)
        .select_related("account")
        .order_by("pk")
    )
    report: list[Discrepancy] = []
    by_customer: dict[str, list[Invoice]] = defaultdict(list)
    for invoice in ours:
        if invoice.stripe_invoice_id:
            by_customer[invoice.account.stripe_customer_id].append(invoice)
        elif invoice.finalised_at is not None and invoice.finalised_at < now - PUSH_GRACE:
            report.append(_discrepancy("missing", invoice, None, "finalised", "none"))
    for customer, invoices in by_customer.items():
        report += _customer_reconcile(client, customer, invoices, since)
    report += stripe_customers_reconcile(client=client)
    for item in report:
        log.warning("stripe reconciliation: %s", item.problem, extra=asdict(item))
    log.info("stripe reconciliation done", extra={"since": since.isoformat(), "found": len(report)})
    return report


def stripe_customers_reconcile(*, client: stripe.StripeClient) -> list[Discrepancy]:
    """Every Stripe customer grouped by the account id in its metadata: `duplicate_customer`
    for an account with more than one (ours: the id the account uses; theirs: all of them,
    oldest first), `unknown_customer` for one whose account we do not have (or that names
    none). Reads every customer, 100 a request: one request per 100 accounts a run."""
    by_account: dict[str, list[stripe.Customer]] = defaultdict(list)
    for customer in client.v1.customers.list(params={"limit": 100}).auto_paging_iter():
        by_account[_meta(customer, "tf_account_id")].append(customer)
    ids = [int(account_id) for account_id in by_account if account_id.isdigit()]
    used = {
        str(pk): customer_id
        for pk, customer_id in Account.objects.filter(pk__in=ids).values_list(
            "pk", "stripe_customer_id"
        )
    }
    report = []
    for account_id, customers in by_account.items():
        customers.sort(key=lambda customer: (customer.created, customer.id))
        if account_id not in used:
            report += [
                Discrepancy("unknown_customer", "", "", "", customer.id, account_id)
                for customer in customers
            ]
        elif len(customers) > 1:
            theirs = " ".join(customer.id for customer in customers)
            report.append(
                Discrepancy("duplicate_customer", "", "", used[account_id], theirs, account_id)
            )
    return report


def _customer_reconcile(
    client: stripe.StripeClient, customer: str, invoices: list[Invoice], since: datetime
) -> list[Discrepancy]:
    theirs = {
        remote.id: remote
        for remote in _customer_invoices(client, customer)
        if remote.created >= since.timestamp()
    }
    report = []
    for invoice in invoices:
        remote = theirs.pop(invoice.stripe_invoice_id, None) or _retrieve(client, invoice)
        report += _invoice_compare(invoice, remote)
    for remote in theirs.values():
        report += _stray_classify(remote)
    return report


def _invoice_compare(invoice: Invoice, remote: stripe.Invoice | None) -> list[Discrepancy]:
    if remote is None:
        return [_discrepancy("missing", invoice, None, invoice.stripe_invoice_id, "not found")]
    report = []
    if remote.subtotal != invoice.total_minor:
        report.append(
            _discrepancy("amount", invoice, remote, str(invoice.total_minor), str(remote.subtotal))
        )
    if remote.currency != invoice.currency.lower():
        report.append(_discrepancy("currency", invoice, remote, invoice.currency, remote.currency))
    if remote.status not in _EXPECTED_STATUS.get(invoice.payment, set()):
        report.append(_discrepancy("status", invoice, remote, invoice.payment, str(remote.status)))
    return report


def _stray_classify(remote: stripe.Invoice) -> list[Discrepancy]:
    """A Stripe invoice none of ours in the window points to: one of ours from before it, a
    second copy of one of ours, or not ours at all."""
    ours_id = _meta(remote, "tf_invoice_id")
    invoice = Invoice.objects.filter(pk=int(ours_id)).first() if ours_id.isdigit() else None
    if invoice is None:
        return [Discrepancy("unknown", "", remote.id, "", f"{remote.subtotal} {remote.status}")]
    if invoice.stripe_invoice_id == remote.id:
        return []
    return [_discrepancy("duplicate", invoice, remote, invoice.stripe_invoice_id, remote.id)]


def _discrepancy(
    problem: str, invoice: Invoice, remote: stripe.Invoice | None, ours: str, theirs: str
) -> Discrepancy:
    stripe_id = remote.id if remote is not None else invoice.stripe_invoice_id
    return Discrepancy(problem, invoice.number or "", stripe_id, ours, theirs)


def _retrieve(client: stripe.StripeClient, invoice: Invoice) -> stripe.Invoice | None:
    try:
        return client.v1.invoices.retrieve(invoice.stripe_invoice_id)
    except stripe.InvalidRequestError as error:
        if error.http_status == 404:
            return None
        raise


def _account_lock(account_id: int) -> None:
    with connection.cursor() as cursor:
        # The lock's second key is an int4; accounts that share one only wait for each other.
        cursor.execute(_LOCK, [account_id % 2**31])


def _customer_invoices(client: stripe.StripeClient, customer: str) -> Iterator[stripe.Invoice]:
    return client.v1.invoices.list(params={"customer": customer, "limit": 100}).auto_paging_iter()


def _remote_invoice(client: stripe.StripeClient, invoice: Invoice, customer: str) -> stripe.Invoice:
    """The Stripe invoice made for ours by an earlier push, else a new draft."""
    for remote in _customer_invoices(client, customer):
        if _meta(remote, "tf_invoice_id") == str(invoice.pk):
            return remote
    params: InvoiceCreateParams = {
        "customer": customer,
        "currency": invoice.currency.lower(),
        "description": _invoice_description(invoice),
        "metadata": {"tf_invoice_id": str(invoice.pk), "tf_number": invoice.number or ""},
        # Not advanced by Stripe until we finalise it: never collected half made.
        "auto_advance": False,
        "pending_invoice_items_behavior": "exclude",
    }
    if invoice.number:
        params["number"] = invoice.number
    return client.v1.invoices.create(
        params=params, options={"idempotency_key": f"tf-invoice-{invoice.pk}"}
    )


def _items_add(
    client: stripe.StripeClient,
    invoice: Invoice,
    lines: list[InvoiceLine],
    remote_id: str,
    customer: str,
) -> None:
    """One invoice item per line that the Stripe draft lacks."""
    present = {_line_id(line) for line in _remote_lines(client, remote_id)}
    for line in lines:
        if str(line.pk) in present:
            continue
        client.v1.invoice_items.create(
            params={
                "customer": customer,
                "invoice": remote_id,
                "amount": line.amount_minor,
                "currency": invoice.currency.lower(),
                "description": _line_description(line, invoice),
                "metadata": {
                    "tf_invoice_id": str(invoice.pk),
                    "tf_invoice_line_id": str(line.pk),
                    "usage_from": line.usage_from.isoformat(),
                    "usage_to": line.usage_to.isoformat(),
                },
            },
            options={"idempotency_key": f"tf-invoice-{invoice.pk}-line-{line.pk}"},
        )


def _lines_check(
    client: stripe.StripeClient, invoice: Invoice, lines: list[InvoiceLine], remote: stripe.Invoice
) -> dict[int, str]:
    """Stripe's lines are ours, one each, amounts and currency equal; our line id -> item id."""
    if remote.status not in ("draft", "open", "paid"):
        raise StripeSyncError(f"stripe invoice {remote.id} of {invoice.number} is {remote.status}")
    expected = {line.pk: line.amount_minor for line in lines}
    found: dict[int, int] = {}
    items: dict[int, str] = {}
    for remote_line in _remote_lines(client, remote.id):
        line_id = _line_id(remote_line)
        if (
            not line_id.isdigit()
            or int(line_id) in found
            or remote_line.currency != remote.currency
        ):
            raise StripeSyncError(f"stripe invoice {remote.id} has a line that is not ours")
        found[int(line_id)] = remote_line.amount
        items[int(line_id)] = _item_id(remote_line)
    if found != expected or remote.currency != invoice.currency.lower():
        raise StripeSyncError(f"stripe invoice {remote.id} differs from {invoice.number}")
    return items


def _pushed_store(
    invoice: Invoice, lines: list[InvoiceLine], remote: stripe.Invoice, items: dict[int, str]
) -> None:
    for line in lines:
        line.stripe_item_id = items[line.pk]
    InvoiceLine.objects.bulk_update(lines, ["stripe_item_id"])
    # A credit note or an invoice paid by the customer's balance is paid at finalisation.
    # A webhook that got here first (after an earlier push rolled back) has the last word.
    fields: dict[str, object] = {"stripe_invoice_id": remote.id}
    if invoice.payment == Invoice.Payment.NONE and remote.status == "paid":
        moments = remote.status_transitions
        paid_at = moments.paid_at or moments.finalized_at
        fields |= {
            "payment": Invoice.Payment.PAID,
            "paid_at": _utc(paid_at) if paid_at else timezone.now(),
        }
    elif invoice.payment == Invoice.Payment.NONE:
        fields["payment"] = Invoice.Payment.OPEN
    # An update of the Stripe fields only: the invoice itself is immutable once finalised.
    Invoice.objects.filter(pk=invoice.pk).update(**fields)


def _remote_lines(client: stripe.StripeClient, remote_id: str) -> Iterator[stripe.InvoiceLineItem]:
    return client.v1.invoices.line_items.list(remote_id, params={"limit": 100}).auto_paging_iter()


def _line_id(remote_line: stripe.InvoiceLineItem) -> str:
    return _meta(remote_line, "tf_invoice_line_id")


def _meta(obj: stripe.Customer | stripe.Invoice | stripe.InvoiceLineItem, key: str) -> str:
    metadata = obj.metadata
    return str(metadata[key]) if metadata is not None and key in metadata else ""


def _item_id(remote_line: stripe.InvoiceLineItem) -> str:
    parent = remote_line.parent
    details = parent.invoice_item_details if parent is not None else None
    if details is None:
        raise StripeSyncError(f"stripe line {remote_line.id} has no invoice item")
    return details.invoice_item


def _utc(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _invoice_description(invoice: Invoice) -> str:
    kind = "Credit note" if invoice.kind == Invoice.Kind.CREDIT_NOTE else "Invoice"
    start, end = invoice.period_start, invoice.period_end
    return f"{kind} {invoice.number}: usage from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"


def _line_description(line: InvoiceLine, invoice: Invoice) -> str:
    what = " ".join(part for part in (line.tier, line.model) if part)
    text = f"{line.get_item_display()}, {what}: {line.quantity:,} at {line.unit_price}"
    if line.project is not None and not line.project.is_default:
        text = f"{line.project.name}: {text}"
    if line.usage_from < invoice.period_start:
        # Usage stored after its month was closed (docs/billing.md, "Late usage").
        month = line.usage_from.astimezone(UTC)
        text += f" (usage of {_MONTHS[month.month - 1]} {month.year}, billed late)"
    return text


# English whatever the process's locale (strftime's %b follows it).
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
