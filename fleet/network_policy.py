"""Where backends may live: a registered URL is one the gateway will send customers' prompts to
and read answers from, so it must not reach the machine's own services or the cloud's metadata
endpoint (SSRF). Loopback, link-local, private and other special-purpose addresses are refused
unless a network in GATEWAY_BACKEND_ALLOWED_NETWORKS allows them (a GPU subnet, or loopback for
a local instance, which the local profile allows by default).
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def backend_url_validate(url: str) -> None:
    """A ValidationError naming the address refused; resolves a host name to every address."""
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter an http or https URL with a host.", code="invalid")
    for address in _addresses(parts.hostname):
        if not _allowed(address):
            raise ValidationError(
                f"{parts.hostname} is {address}, a loopback, link-local, private or reserved "
                "address; allow its network in GATEWAY_BACKEND_ALLOWED_NETWORKS to use it.",
                code="address_not_allowed",
            )


def _addresses(host: str) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise ValidationError(f"{host} does not resolve: {exc}", code="unresolvable") from None
    except UnicodeError:  # a label over 63 characters, say
        raise ValidationError(f"{host} is not a valid host name.", code="invalid") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]


def _allowed(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    allowed = settings.GATEWAY.backend_allowed_networks
    if any(address in ipaddress.ip_network(network) for network in allowed):
        return True
    return address.is_global and not address.is_multicast
