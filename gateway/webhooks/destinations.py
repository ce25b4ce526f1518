"""Where a team's webhooks may be sent: the rules of the URL, and the addresses its host may be.

URL rules (a subscription's URL is refused with 400 ``invalid_webhook_url`` otherwise):
``http`` or ``https``; a host; no user or password; no fragment; at most 2048 characters.

Address rule: unless ``GATEWAY_WEBHOOK_ALLOW_PRIVATE_NETWORKS``, the host and *every* address it
resolves to must be globally routable. Refused (400 ``webhook_destination_not_allowed``):
loopback (``localhost`` too, without asking DNS), private (RFC 1918, IPv6 ULA ``fc00::/7``),
link-local (``169.254/16`` with the cloud metadata service ``169.254.169.254``,
``fe80::/10``), shared CGNAT space (``100.64/10``), unspecified, multicast, broadcast,
reserved and documentation ranges, and IPv6 forms that embed one of those (IPv4-mapped
``::ffff:10.0.0.1``, 6to4, Teredo, NAT64 ``64:ff9b::/96``). An IPv4 literal in a legacy
spelling (``127.1``, ``2130706433``, ``0x7f.0.0.1``) is read as the address it means.

It is checked when a subscription is created and again before every delivery attempt, since
what a name resolves to can change after it was accepted (the attempt then fails with the
reason as its error and is retried, or given up, like any failed attempt).

DNS rebinding: the delivery connects to the very address that was checked. The deliverer
resolves the host itself (``check_destination`` returns the addresses it judged), sends the
request to the first of them with the original ``Host`` header, and for ``https`` gives the
host name to TLS (SNI and certificate verification), so a name server cannot answer a
public address to the check and a private one to the connection.

Messages name the host and the kind of address refused ("is loopback"), never the address a
name resolved to: a team's managers and its delivery log must not become a way of reading
the company's internal DNS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.errors import InvalidRequest, WebhookDestinationNotAllowed

MAX_URL_LENGTH = 2048

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> addresses`` as text: the system resolver (``resolve_host``) or a test's."""

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


@dataclass(frozen=True)
class Destination:
    """A URL that passed the rules: its host (lowercase, no brackets) and port."""

    url: str
    host: str
    port: int

    @property
    def shown(self) -> str:
        """What logs and messages may say about it: the host only (a query may carry a
        token, a path an id)."""
        return self.host


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_webhook_url", param="url")


def parse_url(url: str) -> Destination:
    """``url`` if it follows the rules, else ``InvalidRequest`` (``invalid_webhook_url``)."""
    if len(url) > MAX_URL_LENGTH:
        raise _invalid(f"the URL must be at most {MAX_URL_LENGTH} characters")
    if not url or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise _invalid("the URL must not be empty or contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _invalid("the URL cannot be parsed") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise _invalid("the URL must start with http:// or https://")
    if "@" in parts.netloc:
        raise _invalid("the URL must not carry a user name or password")
    if "#" in url:
        raise _invalid("the URL must not have a fragment (#...)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise _invalid("the URL must name a host")
    if _literal(host) is None and not _is_hostname(host):
        raise _invalid("the URL's host is not a valid host name or IP address")
    default_port = 443 if parts.scheme.lower() == "https" else 80
    return Destination(url=url, host=host, port=port or default_port)


def _is_hostname(host: str) -> bool:
    labels = host.split(".")
    return (
        all(
            0 < len(label) <= 63
            and label[0] != "-"
            and label[-1] != "-"
            and all(c.isascii() and (c.isalnum() or c in "-_") for c in label)
            for label in labels
        )
        and not labels[-1].isdigit()
    )


def _literal(host: str) -> Address | None:
    """The address ``host`` spells, if it is an IP literal (legacy IPv4 spellings included,
    as the system resolver reads them without asking any server)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    last = host.rsplit(".", 1)[-1]
    if last.isdigit() or last.lower().startswith("0x"):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def refusal(address: Address) -> str | None:
    """Why a webhook may not be sent to ``address`` (a short word), or None if it may."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return refusal(embedded)
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_link_local:
        return "link-local"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "shared address space"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (no connection is made)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def check_destination(
    destination: Destination, *, allow_private: bool, resolve: Resolver = resolve_host
) -> list[Address]:
    """The addresses of the destination's host, every one of them public (or any, with
    ``allow_private``); ``WebhookDestinationNotAllowed`` otherwise. An IP literal is its own
    address and ``localhost`` is loopback, without asking DNS; the caller bounds the lookup's
    time. A delivery connects to the first address returned (see the module's docstring)."""
    host = destination.host
    literal = _literal(host)
    if literal is not None:
        addresses: list[Address] = [literal]
    elif host == "localhost" or host.endswith(".localhost"):
        if not allow_private:
            raise _not_allowed(host, "is loopback")
        addresses = [ipaddress.ip_address("127.0.0.1")]
    else:
        try:
            found = await resolve(host, destination.port)
        except OSError:
            raise _not_allowed(host, "does not resolve") from None
        if not found:
            raise _not_allowed(host, "does not resolve")
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
    if allow_private:
        return addresses
    for address in addresses:
        why = refusal(address)
        if why is not None:
            shown = "is" if str(address) == host else "resolves to an address that is"
            raise _not_allowed(host, f"{shown} {why}")
    return addresses


def _not_allowed(host: str, what: str) -> WebhookDestinationNotAllowed:
    return WebhookDestinationNotAllowed(
        f"webhook destination {host} {what}: only public addresses are allowed "
        "(GATEWAY_WEBHOOK_ALLOW_PRIVATE_NETWORKS)",
        param="url",
    )
