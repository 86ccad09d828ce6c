"""A local Stripe for the billing tests: localstripe, taught the Stripe behaviour our sync uses.

localstripe 1.15.10, tried by hand, differs from Stripe where billing.stripe_sync depends on it:

- It ignores `Idempotency-Key`: the same POST twice makes two objects. Stripe replays the
  first response to any request with the same key and parameters for 24 hours, answers 400
  `idempotency_error` to the key with other parameters, and 409 while the first request with
  the key is still running; this server does too.
- It has no search (GET /v1/customers/search). Added for the query our sync sends,
  `metadata['key']:'value'` clauses joined by AND; anything else is a 400, as Stripe's answer
  to a query it cannot parse.
- It cannot make a one-off invoice (POST /v1/invoices without a subscription answers 404),
  add an invoice item to a draft invoice (`invoice=in_...` leaves the invoice's lines as they
  were), or finalise an invoice (no POST /v1/invoices/{id}/finalize). Added, as Stripe does
  them: `pending_invoice_items_behavior` "exclude" leaves the customer's pending items out.
- Its invoice lines have the shape of API versions before 2025-03-31; the `stripe` library we
  use pins a later one, where a line names its invoice item under
  `parent.invoice_item_details`. Lines carry both here.
- It pickles its whole store to /tmp/localstripe.pickle on every write, a file shared by every
  localstripe on the machine; this one keeps its store in memory only.
- It has no Checkout. Added for one-off payments (`mode=payment`, `line_items` with
  `price_data`): POST/GET /v1/checkout/sessions, POST .../{id}/expire, and the hosted page the
  session's `url` opens (GET /c/pay/{id}, a card number form; POST pays). Paying makes the
  PaymentIntent and its charge (`payment_intent_data[setup_future_usage]` attaches the card to
  the customer), completes the session, stores the `checkout.session.completed` event (GET
  /v1/events) and redirects to `success_url`, `{CHECKOUT_SESSION_ID}` filled in; a declined
  card leaves the session open, as Stripe's page lets the customer try another.
- A PaymentIntent confirmed off-session whose card is declined answers 402 with error type
  `invalid_request_error` and no `payment_intent`; Stripe's error is a `card_error` carrying the
  PaymentIntent it made (status `requires_payment_method`). This server answers as Stripe.

Test cards are localstripe's: 4242424242424242 pays, 4000000000000341 attaches but every
charge is declined, 4000000000000002 is declined at once.

Routes for the tests only: POST /_config/clock?advance=<seconds> moves the keys' clock on (a
day later, every stored key is forgotten), GET /_config/idempotency lists the keys seen, in
order. Between the tests and the server, ResponseDropper loses answers: the server does the
work, the client sees the connection cut.

Run: python -m tests.billing.stripe_server --port P (a child process per test session).
"""

import argparse
import asyncio
import contextlib
import hashlib
import re
import socket
import sys
import time
from typing import Any

from aiohttp import web

from tests.support.faults import TcpProxy
from tests.support.servers import Server, free_port


def start_stripe() -> Server:
    port = free_port()
    args = [sys.executable, "-m", "tests.billing.stripe_server", "--port", str(port)]
    return Server(args, port=port, ready_path="/js.stripe.com/v3/", env={})


class ResponseDropper(TcpProxy):
    """A TcpProxy that can let a request through whole and cut the connection as its response
    starts: the server did the work, the client only sees a reset (and may retry)."""

    def __init__(self, target_port: int) -> None:
        self._armed: dict[bytes, int] = {}
        self.dropped = 0
        super().__init__(target_port)

    def drop_responses(self, request_start: bytes, times: int = 1) -> None:
        """Drop the responses to the next `times` requests whose first bytes are these."""
        self._armed[request_start] = times

    def disarm(self) -> None:
        self._armed.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        # One request at a time per connection (HTTP/1.1 without pipelining, as the library).
        doomed = [False]
        await asyncio.gather(
            self._requests(reader, up_writer, doomed),
            self._responses(up_reader, writer, up_writer, doomed),
        )

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, doomed: list[bool]
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                for start, times in self._armed.items():
                    if times > 0 and data.startswith(start):
                        self._armed[start] = times - 1
                        doomed[0] = True
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)

    async def _responses(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
        doomed: list[bool],
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if doomed[0]:
                    self.dropped += 1
                    break
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        upstream.transport.abort()
        self._writers -= {writer, upstream}


# Everything below runs in the server's own process.


def _teach() -> Any:
    """Patch localstripe's resources with the behaviour listed in the docstring.

    Before localstripe.server is imported: it routes the extra endpoints when imported.
    Returns the CheckoutSession class, for main to route.
    """
    from localstripe import resources
    from localstripe.errors import UserError
    from localstripe.resources import Invoice, InvoiceItem, InvoiceLineItem, List

    resources.Store.dump_to_disk = lambda self: None

    def invoice_create(
        cls: type[Invoice],
        customer: str | None = None,
        currency: str | None = None,
        description: str | None = None,
        metadata: dict[str, str] | None = None,
        number: str | None = None,
        auto_advance: str | None = None,
        pending_invoice_items_behavior: str | None = None,
        **kwargs: Any,
    ) -> Invoice:
        if kwargs.get("subscription"):
            return cls._get_next_invoice(customer=customer, **kwargs)
        invoice = cls(customer=customer, description=description, metadata=metadata)
        if pending_invoice_items_behavior == "exclude":
            for line in invoice.lines._list:
                InvoiceItem._api_retrieve(line.invoice_item).invoice = None
            invoice.lines._list.clear()
        if currency is not None:
            invoice.currency = currency
        invoice.number = number
        invoice.auto_advance = auto_advance == "true"
        return invoice

    Invoice._api_create = classmethod(invoice_create)

    item_init = InvoiceItem.__init__

    def item_create(self: InvoiceItem, invoice: str | None = None, **data: Any) -> None:
        if invoice is not None and Invoice._api_retrieve(invoice).status != "draft":
            raise UserError(400, "Invoice items can only be added to draft invoices")
        item_init(self, invoice=invoice, **data)
        if invoice is not None:
            Invoice._api_retrieve(invoice).lines._list.append(InvoiceLineItem(self))

    InvoiceItem.__init__ = item_create

    def parent(line: InvoiceLineItem) -> dict[str, Any] | None:
        if line.type != "invoiceitem":
            return None
        details = {"invoice_item": line.invoice_item, "proration": False}
        return {"type": "invoice_item_details", "invoice_item_details": details}

    InvoiceLineItem.parent = property(parent)

    def finalize(id: str, auto_advance: str | None = None, **kwargs: Any) -> Invoice:
        invoice = Invoice._api_retrieve(id)
        if invoice.status != "draft":
            raise UserError(400, "This invoice is already finalized")
        invoice._finalize()
        invoice.auto_advance = auto_advance == "true"
        if invoice.status == "paid":  # nothing due: Stripe marks it paid as it finalises
            invoice.status_transitions["paid_at"] = invoice.status_transitions["finalized_at"]
        return invoice

    def lines(id: str, limit: str | None = None, starting_after: str | None = None) -> List:
        """Its own version takes no `starting_after`, so the library could not page."""
        page = List(f"/v1/invoices/{id}/lines", limit=limit, starting_after=starting_after)
        page._list = Invoice._api_retrieve(id).lines._list
        return page

    resources.extra_apis[:] = [
        (method, url, lines if url == "/v1/invoices/{id}/lines" else func)
        for method, url, func in resources.extra_apis
    ]
    resources.extra_apis.append(("POST", "/v1/invoices/{id}/finalize", finalize))
    return _teach_checkout()


# Where the hosted Checkout page is served: this server's own address (set by main).
_site = {"base": ""}
# Stripe's bounds on a Checkout Session's total, in minor units (two-decimal currencies).
CHECKOUT_MIN_MINOR = 50
CHECKOUT_MAX_MINOR = 99_999_999


def _teach_checkout() -> Any:
    """Checkout Sessions for one-off payments, and off-session declines as Stripe answers
    them; returns the CheckoutSession class (main routes it)."""
    from localstripe import resources
    from localstripe.errors import UserError
    from localstripe.resources import Event, PaymentIntent, StripeObject

    class CheckoutSession(StripeObject):
        object = "checkout.session"
        _id_prefix = "cs_test_"

        def __init__(
            self,
            mode: str | None = None,
            line_items: list[dict[str, Any]] | None = None,
            success_url: str | None = None,
            cancel_url: str | None = None,
            customer: str | None = None,
            client_reference_id: str | None = None,
            metadata: dict[str, str] | None = None,
            payment_intent_data: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            if kwargs:
                raise UserError(400, "Received unknown parameter: " + ", ".join(kwargs))
            if mode != "payment":
                raise UserError(400, "This server's Checkout makes one-off payments only")
            if not success_url:
                raise UserError(400, "Missing required param: success_url.")
            currency, total = _line_items_total(line_items, UserError)
            if customer is not None:
                resources.Customer._api_retrieve(customer)
            future = (payment_intent_data or {}).get("setup_future_usage")
            if future not in (None, "off_session", "on_session"):
                raise UserError(400, "Invalid setup_future_usage")
            super().__init__()
            self.mode = mode
            self.currency = currency
            self.amount_subtotal = total
            self.amount_total = total
            self.customer = customer
            self.client_reference_id = client_reference_id
            self.metadata = metadata or {}
            self.success_url = success_url
            self.cancel_url = cancel_url
            self.status = "open"
            self.payment_status = "unpaid"
            self.payment_intent = None
            self.expires_at = self.created + 24 * 3600
            self.url = f"{_site['base']}/c/pay/{self.id}"
            self._future = future
            self._intent_metadata = (payment_intent_data or {}).get("metadata") or {}

        @classmethod
        def _api_update(cls, id: str, **data: Any) -> Any:
            raise UserError(400, "Checkout Sessions cannot be updated")

        @classmethod
        def _api_delete(cls, id: str) -> Any:
            raise UserError(405, "Method Not Allowed")

        @classmethod
        def _api_expire(cls, id: str, **kwargs: Any) -> Any:
            session = cls._api_retrieve(id)
            if session.status != "open":
                raise UserError(400, "Only Checkout Sessions with a status of open can be expired")
            session.status = "expired"
            session.url = None
            resources.schedule_webhook(Event("checkout.session.expired", session))
            return session

        def _pay(self, card_number: str) -> str | None:
            """The customer pays on the hosted page: None once paid, else why not."""
            if self.status != "open" or time.time() >= self.expires_at:
                return "This Checkout Session is no longer active."
            method = resources.PaymentMethod(
                type="card",
                card={"number": card_number, "exp_month": "12", "exp_year": "2034", "cvc": "123"},
            )
            if self._future and self.customer:
                try:
                    resources.PaymentMethod._api_attach(method.id, customer=self.customer)
                except UserError:
                    return "Your card was declined."
            intent = PaymentIntent(
                amount=self.amount_total,
                currency=self.currency,
                customer=self.customer,
                payment_method=method.id,
                metadata=dict(self._intent_metadata),
            )
            intent._confirm(on_failure_now=lambda: None)
            if intent.status != "succeeded":
                return "Your card was declined."
            self.status = "complete"
            self.payment_status = "paid"
            self.payment_intent = intent.id
            self.url = None
            resources.schedule_webhook(Event("checkout.session.completed", self))
            return None

    def intent_create(cls: Any, confirm: Any = None, off_session: Any = None, **data: Any) -> Any:
        """As localstripe's, but a declined confirmation is Stripe's card error, carrying the
        PaymentIntent it made (awaiting another payment method)."""
        confirm = resources.try_convert_to_bool(confirm)
        if off_session is not None and confirm is not True:
            raise UserError(400, "off_session can only be used with confirm=true")
        intent = cls(**data)
        if confirm:
            try:
                intent._confirm(on_failure_now=intent._report_failure)
            except UserError as error:
                if error.code == 402:
                    error.body["error"].update(
                        type="card_error",
                        decline_code="generic_decline",
                        payment_intent=intent._export(),
                    )
                raise
        return intent

    PaymentIntent._api_create = classmethod(intent_create)
    return CheckoutSession


def _line_items_total(items: Any, user_error: Any) -> tuple[str, int]:
    """The one currency and the total of `line_items` given as `price_data` (no Price ids)."""
    if not isinstance(items, list) or not items:
        raise user_error(400, "Missing required param: line_items.")
    currencies, total = set(), 0
    for item in items:
        price = item.get("price_data") if isinstance(item, dict) else None
        if not isinstance(price, dict) or not (price.get("product_data") or {}).get("name"):
            raise user_error(400, "line_items need price_data with product_data[name] here")
        try:
            unit, quantity = int(price["unit_amount"]), int(item.get("quantity", "1"))
        except (KeyError, ValueError):
            raise user_error(400, "Invalid integer: unit_amount or quantity") from None
        if unit < 0 or quantity < 1:
            raise user_error(400, "unit_amount must be >= 0 and quantity >= 1")
        currencies.add(str(price.get("currency", "")).lower())
        total += unit * quantity
    if len(currencies) != 1 or "" in currencies:
        raise user_error(400, "All line_items must have one currency")
    if not CHECKOUT_MIN_MINOR <= total <= CHECKOUT_MAX_MINOR:
        raise user_error(400, "The Checkout Session's total amount is out of bounds.")
    return currencies.pop(), total


_PAGE = """<!DOCTYPE html><html><head><title>Checkout</title></head><body>
<h1>Pay {amount} {currency}</h1><p id="problem">{problem}</p>
<form method="post"><label>Card number <input name="card_number" value="4242424242424242">
</label><button type="submit">Pay</button></form>
<p><a href="{cancel}">Back</a></p></body></html>"""


def checkout_pages(session_class: Any) -> Any:
    """The hosted page a Checkout Session's `url` opens (the amount and a card form), as a
    middleware ahead of localstripe's, which would ask the customer's browser for an API key."""
    from localstripe.errors import UserError

    def page(session: Any, problem: str = "", status: int = 200) -> web.Response:
        text = _PAGE.format(
            amount=f"{session.amount_total / 100:.2f}",
            currency=session.currency.upper(),
            problem=problem,
            cancel=session.cancel_url or "",
        )
        return web.Response(text=text, content_type="text/html", status=status)

    async def pay(session: Any, request: web.Request) -> web.Response:
        form = await request.post()
        problem = session._pay(str(form.get("card_number", "4242424242424242")))
        if problem is not None:
            return page(session, problem, status=402)
        target = session.success_url.replace("{CHECKOUT_SESSION_ID}", session.id)
        raise web.HTTPSeeOther(target)

    @web.middleware
    async def hosted(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/c/pay/"):
            return await handler(request)
        try:
            session = session_class._api_retrieve(request.path.removeprefix("/c/pay/"))
        except UserError:
            raise web.HTTPNotFound() from None
        if request.method == "POST":
            return await pay(session, request)
        return page(session)

    return hosted


KEY_REUSED = "Keys for idempotent requests can only be used with the same parameters"
KEY_IN_USE = "There is currently another in-progress request using this Idempotent Key"
# Stripe keeps a key's result at least this long, then may forget it.
KEY_TTL_SECONDS = 24 * 3600


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


class IdempotencyKeys:
    """Stripe's rule: the first response to a key is replayed for a later request with the same
    parameters for 24 hours; the key with other parameters, or while its first request runs,
    is an error."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        # key -> (fingerprint, status, body, content type, stored at on the keys' clock)
        self.responses: dict[str, tuple[str, int, bytes, str, float]] = {}
        self.running: set[str] = set()
        self.clock_offset = 0.0

    def now(self) -> float:
        return time.monotonic() + self.clock_offset

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or key is None:
            return await handler(request)
        self.seen.append(key)
        body = await request.read()
        fingerprint = hashlib.sha256(request.path.encode() + b"?" + body).hexdigest()
        stored = self.responses.get(key)
        if stored is not None and self.now() - stored[4] >= KEY_TTL_SECONDS:
            del self.responses[key]
            stored = None
        if stored is not None:
            first, status, text, content_type, _ = stored
            if first != fingerprint:
                return _error(400, "idempotency_error", KEY_REUSED)
            response = web.Response(status=status, body=text, content_type=content_type)
            response.headers["Idempotent-Replayed"] = "true"
            return response
        if key in self.running:
            return _error(409, "idempotency_error", KEY_IN_USE)
        self.running.add(key)
        try:
            response = await handler(request)
        finally:
            self.running.discard(key)
        # Stripe keeps no result for a request that never ran (auth) or failed on its side.
        if isinstance(response, web.Response) and response.status not in (401, 500):
            payload = bytes(response.body)
            self.responses[key] = (
                fingerprint,
                response.status,
                payload,
                response.content_type,
                self.now(),
            )
        return response

    async def advance(self, request: web.Request) -> web.Response:
        self.clock_offset += float(request.query["advance"])
        return web.Response()

    async def listing(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": self.seen})


_CLAUSE = re.compile(r"""metadata\[(['"])(?P<key>[^'"]+)\1\]:(['"])(?P<value>[^'"]*)\3""")


@web.middleware
async def customer_search(request: web.Request, handler: Any) -> web.StreamResponse:
    """GET /v1/customers/search for `metadata['k']:'v' AND ...` (localstripe would route the
    path to a customer named "search"). Newest first, one page of `limit` (10, at most 100)."""
    if request.method != "GET" or request.path != "/v1/customers/search":
        return await handler(request)
    from localstripe.resources import store

    query = request.query.get("query", "")
    clauses = [_CLAUSE.fullmatch(clause.strip()) for clause in query.split(" AND ")]
    if not query or not all(clauses):
        return _error(400, "invalid_request_error", f"Invalid search query: {query!r}")
    wanted = {match["key"]: match["value"] for match in clauses if match}
    limit = min(int(request.query.get("limit", "10")), 100)
    found = sorted(
        (
            obj
            for name, obj in store.items()
            if name.startswith("customer:")
            and all((obj.metadata or {}).get(k) == v for k, v in wanted.items())
        ),
        key=lambda customer: customer.created,
        reverse=True,
    )
    return web.json_response(
        {
            "object": "search_result",
            "url": "/v1/customers/search",
            "has_more": len(found) > limit,
            "next_page": None,
            "data": [customer._export() for customer in found[:limit]],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port

    sessions = _teach()
    from localstripe.server import api_create, api_extra, api_list_all, api_retrieve, app

    _site["base"] = f"http://127.0.0.1:{port}"

    keys = IdempotencyKeys()
    # Outermost, so it stores localstripe's answers as sent, errors included.
    app.middlewares.insert(0, keys.middleware)
    # Innermost: past localstripe's authentication, instead of its route's handler.
    app.middlewares.append(customer_search)
    app.router.add_post("/_config/clock", keys.advance)
    app.router.add_get("/_config/idempotency", keys.listing)
    url = "/v1/checkout/sessions"
    app.router.add_post(url + "/{id}/expire", api_extra(sessions._api_expire, url))
    app.router.add_post(url, api_create(sessions, url))
    app.router.add_get(url + "/{id}", api_retrieve(sessions, url))
    app.router.add_get(url, api_list_all(sessions, url))
    app.middlewares.insert(0, checkout_pages(sessions))

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    web.run_app(app, sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    main()
