"""The client's address, as far as the proxies we trust vouch for it (settings.TRUSTED_PROXIES).

REMOTE_ADDR is the peer that connected. Its X-Forwarded-For is believed only when that peer
is a trusted proxy, and then only as far back as the chain stays within trusted proxies: each
proxy appends the address it saw, so the right-most hop that is not a trusted proxy is the
client, and whatever lies left of it may be the client's own invention. django-axes keys
sign-in lockouts on this address (AXES_CLIENT_IP_CALLABLE) and the audit log records it.
"""

import ipaddress
from functools import lru_cache
from typing import Any, TypeAlias

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(request: Any) -> str | None:
    """The client's address, or None where the peer has none (a unix socket, a test)."""
    peer = _address(request.META.get("REMOTE_ADDR"))
    if peer is None:
        return None
    trusted = _networks(tuple(settings.TRUSTED_PROXIES))
    client = peer
    if _within(peer, trusted):
        hops = str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",")
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                break
            client = address
            if not _within(address, trusted):
                break
    return str(client)


def _address(text: object) -> Address | None:
    try:
        address = ipaddress.ip_address(str(text or "").strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: Address, networks: tuple[Network, ...]) -> bool:
    return any(address in network for network in networks)


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)
    except ValueError as exc:
        raise ImproperlyConfigured(f"TRUSTED_PROXIES: {exc}") from exc
