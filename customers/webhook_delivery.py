"""Delivering customer webhooks: signing, the address policy, sending, back-off and the sweep.

A delivery (WebhookDelivery) is written pending by `customers.webhooks.webhook_emit`, in the
transaction of the change it reports. Celery workers send what is due (`deliveries_send_due`,
every few seconds from beat, and at once when an event commits: `deliveries_due_kick`):

- Claiming is a short transaction, `SELECT ... FOR UPDATE SKIP LOCKED`, that moves each row's
  `next_attempt_at` past the claim's lease, so concurrent sweeps never send one delivery at
  once; the HTTP calls run outside any transaction. A worker that dies mid-send leaves its
  rows to be claimed again when the lease lapses (at least once: customers deduplicate on the
  event id, as with Stripe's).
- One POST per attempt, signed (`TokenFactory-Signature: t=<unix>,v1=<hex>`: HMAC-SHA256 of
  "<t>.<body>" with the endpoint's secret, and a second `v1` with the previous secret for a
  day after a rotation), a `TIMEOUT_SECONDS` limit, redirects not followed. A 2xx is
  delivered; anything else is retried after 30 s doubling to an hour, jittered, until a day
  after the event, when the delivery is failed (replayable from the console and the portal).
- The address is checked again when sending and the connection is made to the address that
  was checked, so a host name re-pointed at an internal address (DNS rebinding) reaches
  nothing it should not.
"""

import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import urllib3
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from customers.models import WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "TokenFactory-Signature"
TIMEOUT_SECONDS = 10.0
GIVE_UP_AFTER = timedelta(hours=24)
FIRST_RETRY_SECONDS = 30
LONGEST_RETRY_SECONDS = 3600
# A claimed row is not due again before this: longer than one send can take.
CLAIM_LEASE = timedelta(seconds=60)
ERROR_EXCERPT = 500

# Loopback is allowed for a local instance (TF_PROFILE=local), for testing a receiver on
# the same machine; production sends to public addresses only.
LOCAL_NETWORKS = ("127.0.0.0/8", "::1/128")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# Signing --------------------------------------------------------------------------------


def signature_header(endpoint: WebhookEndpoint, body: bytes, *, at: int | None = None) -> str:
    """`t=<unix>,v1=<hex>`, with a second `v1` while the previous secret is still honoured."""
    t = int(time.time()) if at is None else at
    parts = [f"t={t}", f"v1={_sign(endpoint.secret, t, body)}"]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > timezone.now():
        parts.append(f"v1={_sign(endpoint.previous_secret, t, body)}")
    return ",".join(parts)


def _sign(secret: str, t: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def signature_verify(
    secret: str, header: str, body: bytes, tolerance: int = 300, now: float | None = None
) -> bool:
    """What a customer's receiver does (docs/portal.md, "Webhooks"): the header's timestamp
    is within `tolerance` seconds of now, and one of its v1 signatures is the HMAC-SHA256 of
    "<t>.<body>" with `secret`, compared in constant time."""
    pairs = [part.split("=", 1) for part in header.split(",") if "=" in part]
    stamps = [value for key, value in pairs if key == "t"]
    signatures = [value for key, value in pairs if key == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not signatures:
        return False
    t = int(stamps[0])
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = _sign(secret, t, body)
    return any(hmac.compare_digest(expected, signature) for signature in signatures)


# Where events may go ------------------------------------------------------------------


def webhook_url_validate(url: str) -> None:
    """A ValidationError unless `url` is https (http too for a local instance's loopback) to a
    host whose every address is public: a webhook must not reach our own network (SSRF)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter an https URL with a host.", code="invalid")
    if parts.username or parts.password:
        raise ValidationError("A webhook URL cannot carry a user name or password.")
    try:
        parts.port  # noqa: B018 (raises on a port out of range)
    except ValueError:
        raise ValidationError("The URL's port is not valid.", code="invalid") from None
    addresses = _addresses(parts.hostname)
    for address in addresses:
        if not _allowed(address):
            raise ValidationError(
                f"{parts.hostname} is {address}, a loopback, link-local, private or reserved "
                "address: a webhook must be reachable on the internet.",
                code="address_not_allowed",
            )
    if parts.scheme == "http" and not all(_local(address) for address in addresses):
        raise ValidationError("A webhook URL must be https.", code="https_required")


def _addresses(host: str) -> list[Address]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise ValidationError(f"{host} does not resolve: {exc}", code="unresolvable") from None
    except UnicodeError:
        raise ValidationError(f"{host} is not a valid host name.", code="invalid") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]


def _local(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return bool(settings.LOCAL) and any(
        address in ipaddress.ip_network(network) for network in LOCAL_NETWORKS
    )


def _allowed(address: Address) -> bool:
    if _local(address):
        return True
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


# Sending ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """What one POST came to: a status code, or the error that stopped it."""

    status_code: int | None
    error: str

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def event_body(delivery: WebhookDelivery) -> bytes:
    """The JSON the endpoint receives: the same bytes for every attempt of one event."""
    event = delivery.event
    payload = {
        "id": event.public_id,
        "type": event.type,
        "created": int(event.created_at.timestamp()),
        "account": event.account_id,
        "data": event.data,
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def delivery_post(delivery: WebhookDelivery, *, timeout: float = TIMEOUT_SECONDS) -> Attempt:
    """POST the delivery's event to its endpoint once; never raises for the endpoint's faults."""
    endpoint = delivery.endpoint
    body = event_body(delivery)
    parts = urlsplit(endpoint.url)
    host = parts.hostname or ""
    try:
        webhook_url_validate(endpoint.url)
        address = _addresses(host)[0]
    except ValidationError as exc:
        return Attempt(None, f"refused: {exc.messages[0]}")
    headers = {
        "Host": parts.netloc,
        "Content-Type": "application/json",
        "User-Agent": "TokenFactory-Webhooks/1",
        SIGNATURE_HEADER: signature_header(endpoint, body),
    }
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    pool = _pool(parts.scheme, str(address), parts.port, host, timeout)
    try:
        response = pool.urlopen(
            "POST", path, body=body, headers=headers, redirect=False, preload_content=False
        )
        try:
            excerpt = response.read(ERROR_EXCERPT).decode(errors="replace")
        finally:
            response.release_conn()
    except urllib3.exceptions.HTTPError as exc:
        return Attempt(None, _error_text(exc))
    finally:
        pool.close()
    error = "" if 200 <= response.status < 300 else f"HTTP {response.status}: {excerpt}"
    return Attempt(response.status, error)


def _pool(
    scheme: str, address: str, port: int | None, host: str, timeout: float
) -> urllib3.HTTPConnectionPool:
    """A connection to the address that was checked; TLS still verifies the host's name."""
    limit = urllib3.Timeout(total=timeout)
    if scheme == "https":
        return urllib3.HTTPSConnectionPool(
            address,
            port or 443,
            timeout=limit,
            retries=False,
            server_hostname=host,
            assert_hostname=host,
        )
    return urllib3.HTTPConnectionPool(address, port or 80, timeout=limit, retries=False)


def _error_text(exc: Exception) -> str:
    """What the customer reads on the delivery: refused, timed out, or the TLS fault."""
    name = type(exc).__name__
    # A refused connection is a subclass of the connect timeout in urllib3: test it first.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return f"{name}: could not connect ({exc.__cause__ or exc})"[:ERROR_EXCERPT]
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return f"timed out ({name})"
    return f"{name}: {getattr(exc, 'reason', None) or exc}"[:ERROR_EXCERPT]


# Back-off and the sweep -----------------------------------------------------------------


def retry_delay(attempts: int) -> timedelta:
    """30 s after the first failure, doubling to an hour; jittered down by up to a fifth, so
    an endpoint's many deliveries, failed together, come back spread out."""
    seconds = min(FIRST_RETRY_SECONDS * 2 ** max(attempts - 1, 0), LONGEST_RETRY_SECONDS)
    return timedelta(seconds=seconds * random.uniform(0.8, 1.0))


@dataclass(frozen=True)
class Sweep:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0


def deliveries_send_due(
    *, now: datetime | None = None, limit: int = 100, timeout: float = TIMEOUT_SECONDS
) -> Sweep:
    """Send every delivery due at `now` (default: the clock; tests move it on), at most
    `limit`, each once, and record what each attempt came to."""
    now = now or timezone.now()
    claimed = _claim(now, limit)
    counts = {"delivered": 0, "retrying": 0, "failed": 0}
    for delivery in claimed:
        if delivery.endpoint.enabled:
            attempt = delivery_post(delivery, timeout=timeout)
        else:
            attempt = Attempt(None, "the endpoint is disabled")
        status = _record(delivery, attempt, now)
        counts["retrying" if status == WebhookDelivery.Status.PENDING else status] += 1
    return Sweep(**counts)


def _claim(now: datetime, limit: int) -> list[WebhookDelivery]:
    with transaction.atomic():
        due = list(
            WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("event", "endpoint")
            .filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now)
            .order_by("next_attempt_at", "pk")[:limit]
        )
        WebhookDelivery.objects.filter(pk__in=[d.pk for d in due]).update(
            next_attempt_at=now + CLAIM_LEASE
        )
    return due


def _record(delivery: WebhookDelivery, attempt: Attempt, now: datetime) -> str:
    """Write the attempt on the row; the status it leaves the delivery in."""
    attempts = delivery.attempts + 1
    give_up_at = delivery.event.created_at + GIVE_UP_AFTER
    fields: dict[str, object] = {
        "attempts": attempts,
        "last_attempt_at": now,
        "last_status_code": attempt.status_code,
        "last_error": attempt.error[:ERROR_EXCERPT],
    }
    if attempt.delivered:
        fields |= {"status": WebhookDelivery.Status.DELIVERED, "delivered_at": now}
        fields["next_attempt_at"] = None
    elif now >= give_up_at:
        fields |= {"status": WebhookDelivery.Status.FAILED, "next_attempt_at": None}
    else:
        # The last try is at the day's end, however the back-off falls.
        fields["next_attempt_at"] = min(now + retry_delay(attempts), give_up_at)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(**fields)
    if not attempt.delivered:
        log.info(
            "webhook delivery %s to endpoint %s: attempt %d failed: %s",
            delivery.pk,
            delivery.endpoint_id,
            attempts,
            attempt.error[:200],
        )
    return str(fields.get("status", WebhookDelivery.Status.PENDING))


def deliveries_due_kick() -> None:
    """Ask a worker to send what is due now (called when an event commits). Never raises: if
    the broker cannot be reached, beat's sweep sends it a few seconds later."""
    from customers.tasks import webhook_deliveries_send

    try:
        webhook_deliveries_send.apply_async(retry=False)
    except Exception:  # any broker fault: the sweep is the fallback
        log.warning("could not queue webhook deliveries; the periodic sweep will send them")
