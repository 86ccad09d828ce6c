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


def _teach() -> None:
    """Patch localstripe's resources with the behaviour listed in the docstring.

    Before localstripe.server is imported: it routes the extra endpoints when imported.
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

    _teach()
    from localstripe.server import app

    keys = IdempotencyKeys()
    # Outermost, so it stores localstripe's answers as sent, errors included.
    app.middlewares.insert(0, keys.middleware)
    # Innermost: past localstripe's authentication, instead of its route's handler.
    app.middlewares.append(customer_search)
    app.router.add_post("/_config/clock", keys.advance)
    app.router.add_get("/_config/idempotency", keys.listing)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    web.run_app(app, sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    main()
