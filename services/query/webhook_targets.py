"""Where webhooks may point (`WEBHOOK_ALLOW`): the server-side request forgery guard.

A webhook makes this service send requests to an address a client chose, from inside the
operator's network. So a URL is accepted only when every address its host resolves to is
allowed, and the same check runs again on the addresses a delivery actually connects to
(`GuardedResolver`), so a host name that resolves elsewhere later (DNS rebinding) is caught.

`WEBHOOK_ALLOW` is a comma-separated list of host names, IP addresses and CIDRs, plus the
word `public`. An address is allowed when a listed IP or CIDR contains it, or when it is
public and either `public` is in effect (the list is unset, or names it) or the URL's host
is a listed host name. Loopback, private, link-local, multicast, reserved and unspecified
addresses are never public. Schemes other than http and https are always refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import ThreadedResolver
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str, int], Awaitable[Sequence[str]]]

PUBLIC = "public"
RESOLVE_TIMEOUT = 5.0
_HOST_NAME = re.compile(
    r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$"
)


class TargetRefused(OSError):
    """The URL or an address it leads to is outside the allow-list (an OSError, so a
    connector that raises it from its resolver fails the request like a DNS error)."""


def _address(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return addr


def is_public(addr: IPAddress) -> bool:
    return addr.is_global and not (
        addr.is_multicast
        or addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_reserved
        or addr.is_unspecified
    )


@dataclass(frozen=True, slots=True)
class AllowList:
    names: frozenset[str]
    networks: tuple[IPNetwork, ...]
    public: bool

    @classmethod
    def parse(cls, spec: str | None) -> AllowList:
        """ValueError naming a bad entry, so a misspelt list stops the start."""
        if spec is None or not spec.strip():
            return cls(frozenset(), (), public=True)
        names: set[str] = set()
        networks: list[IPNetwork] = []
        public = False
        for raw in spec.split(","):
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            if entry == PUBLIC:
                public = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if "/" in entry or not _HOST_NAME.match(entry):
                raise ValueError(f"WEBHOOK_ALLOW: not a host name, IP or CIDR: {raw!r}")
            names.add(entry)
        return cls(frozenset(names), tuple(networks), public)

    def name_listed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    def address_allowed(self, addr: IPAddress, *, name_listed: bool) -> bool:
        if any(addr.version == n.version and addr in n for n in self.networks):
            return True
        return is_public(addr) and (self.public or name_listed)

    def check_addresses(self, host: str, addresses: Sequence[str]) -> None:
        """TargetRefused unless every address (at least one) is allowed for this host."""
        if not addresses:
            raise TargetRefused(f"{host} resolves to no address")
        listed = self.name_listed(host)
        for text in addresses:
            addr = _address(text)
            if addr is None or not self.address_allowed(addr, name_listed=listed):
                raise TargetRefused(f"{host} resolves to {text}, which is not allowed")


def parse_target(url: str) -> URL:
    """The URL, when its form is acceptable: an http(s) scheme and a host."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as err:
        raise TargetRefused("not a valid URL") from err
    if parsed.scheme not in ("http", "https"):
        raise TargetRefused("only http and https URLs are allowed")
    if not parsed.host:
        raise TargetRefused("the URL has no host")
    return parsed


def literal_address(parsed: URL) -> IPAddress | None:
    """The host when it is an IP address literal (a connector does not resolve those)."""
    assert parsed.host is not None
    return _address(parsed.host)


def check_literal(allow: AllowList, url: str) -> URL:
    """The delivery-time check of the URL's form and of an IP literal host; host names
    are checked on the addresses the connector resolves (`GuardedResolver`)."""
    parsed = parse_target(url)
    addr = literal_address(parsed)
    if addr is not None:
        allow.check_addresses(str(parsed.host), [str(addr)])
    return parsed


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    )
    return [str(info[4][0]) for info in infos]


async def check_target(
    allow: AllowList, url: str, resolve: Resolve = system_resolve
) -> URL:
    """Creation-time check: TargetRefused unless the URL and all its addresses are allowed."""
    parsed = check_literal(allow, url)
    if literal_address(parsed) is not None:
        return parsed
    host = str(parsed.host)
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            addresses = await resolve(host, parsed.port or 0)
    except (OSError, TimeoutError) as err:
        raise TargetRefused(f"{host} does not resolve") from err
    allow.check_addresses(host, addresses)
    return parsed


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses a host when any address it resolves to is not allowed;
    the connector then connects only to addresses this check has just seen."""

    def __init__(self, allow: AllowList) -> None:
        self._allow = allow
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        self._allow.check_addresses(host, [r["host"] for r in results])
        return results

    async def close(self) -> None:
        await self._inner.close()
