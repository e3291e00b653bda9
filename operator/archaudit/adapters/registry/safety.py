"""The host guard: archaudit never connects where an image reference must not lead it.

An image reference is user input (anyone who may create a pod writes one), and resolving it makes
archaudit open connections from inside the cluster. Without a guard, `169.254.169.254/x/y:z` would make
the operator ask a cloud metadata service for credentials, and a name whose DNS answer changes after the
first look-up (DNS rebinding) would do the same behind an innocent-looking host name. So:

- `HostGuard` decides, without I/O, whether a host name or address may be contacted: the configured
  allow and deny lists, link-local and metadata addresses always refused (also when spelled as an
  IPv4-mapped IPv6 address or a legacy numeric IPv4 form), loopback and private ranges when configured.
- `GuardedResolver` applies those decisions to what DNS actually returned, at connect time, so the
  address checked is the address connected to.

Every refusal is a `ResolutionError(Reason.REFUSED_HOST, why)`.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import aiohttp.abc
import aiohttp.resolver

from archaudit.core.errors import Reason, ResolutionError

__all__ = ["GuardedResolver", "HostGuard"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Instance metadata services: credentials live behind these. Refused whatever the configuration.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "169.254.169.253",  # AWS VPC DNS
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS VPC DNS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (legacy)
    )
)
_METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
        "metadata.tencentyun.com",
    }
)
_LINK_LOCAL = _networks("169.254.0.0/16", "fe80::/10")
_UNSPECIFIED = _networks("0.0.0.0/8", "::/128")  # Linux connects 0.0.0.0 to this very host
_NOT_UNICAST = _networks("224.0.0.0/4", "240.0.0.0/4", "ff00::/8")  # multicast, reserved, broadcast
_LOOPBACK = _networks("127.0.0.0/8", "::1/128")
_PRIVATE = _networks(
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",  # carrier-grade NAT, often a cluster's pod or node range
    "fc00::/7",  # unique local
    "fec0::/10",  # deprecated site-local
)
# IPv6 prefixes that carry an IPv4 address which is what is really reached.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


@dataclass(frozen=True)
class _Pattern:
    """One allow/deny entry: a host name (optionally "*." + domain), an address or a CIDR, maybe a port."""

    text: str
    name: str = ""  # lower-case host name or "*.domain"
    network: IPNetwork | None = None
    port: str = ""  # "" = any port

    @classmethod
    def parse(cls, text: str) -> _Pattern:
        entry = text.strip()
        if not entry:
            raise ValueError("an empty host pattern")
        if "/" in entry:
            try:
                return cls(text, network=ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"{text!r} is not a CIDR range") from None
        host, port = _split_host_port(entry)
        if port and not port.isdigit():
            raise ValueError(f"{text!r} has a bad port")
        address = _ip_literal(host)
        if address is not None:
            return cls(text, network=ipaddress.ip_network(address), port=port)
        name = _canonical_name(host)
        wildcard = name.removeprefix("*.")
        if not wildcard or any(c in wildcard for c in "*?[]/"):
            raise ValueError(f"{text!r}: use a host name, *.domain, an address or a CIDR range")
        return cls(text, name=name, port=port)

    def matches(self, name: str, port: str, address: IPAddress | None) -> bool:
        if self.port and self.port != port:
            return False
        if self.network is not None:
            return address is not None and _within(_unmapped(address), (self.network,))
        if self.name.startswith("*."):
            return fnmatch.fnmatchcase(name, self.name)  # any depth below the domain, not the domain
        return name == self.name


class HostGuard:
    """Decides whether a registry host, or an address it resolved to, may be contacted.

    `allow` empty means every host is allowed unless denied; entries are "ghcr.io", "*.example.com",
    "registry.local:5000", "10.1.2.3" or "10.0.0.0/8". Deny wins over allow. Link-local, metadata,
    unspecified and multicast addresses are always refused; loopback and private ranges on request.
    """

    def __init__(
        self,
        *,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        refuse_loopback: bool = False,
        refuse_private: bool = False,
    ) -> None:
        self.allow = tuple(_Pattern.parse(p) for p in allow)
        self.deny = tuple(_Pattern.parse(p) for p in deny)
        self.refuse_loopback = refuse_loopback
        self.refuse_private = refuse_private

    def check_host(self, host: str) -> None:
        """Before any connection: the registry host[:port] against the lists and the address rules."""
        name, port, address = _parse_host(host)
        self._check_target(host, name, port, address)
        if self.allow and not any(p.matches(name, port, address) for p in self.allow):
            self._refuse(host, "it is not in the registry allow list")

    def check_target(self, host: str) -> None:
        """Like `check_host` without the allow list: for hosts a registry sends us to (token realms,
        blob storage redirects), which are not registries a user named; deny list and address rules apply."""
        name, port, address = _parse_host(host)
        self._check_target(host, name, port, address)

    def check_addresses(self, host: str, addresses: Sequence[str]) -> None:
        """After DNS: refuse if ANY address `host` resolved to is one we must not reach."""
        name, port, _ = _parse_host(host)
        self._check_name(host, name)
        for text in addresses:
            address = _ip_literal(text)
            if address is None:
                self._refuse(host, f"it resolved to {text!r}, which is not an IP address")
            why = self._address_refusal(address)
            if why is None and any(p.matches(name, port, address) for p in self.deny):
                why = "in the registry deny list"
            if why is not None:
                self._refuse(host, f"it resolves to {address}, {why}")

    def refusal(self, host: str) -> str | None:
        """Why `check_host(host)` would refuse, or None: for callers that report instead of raising."""
        try:
            self.check_host(host)
        except ResolutionError as e:
            return e.message
        return None

    def _check_target(self, host: str, name: str, port: str, address: IPAddress | None) -> None:
        if not name:
            self._refuse(host, "it has no host name")
        if any(p.matches(name, port, address) for p in self.deny):
            self._refuse(host, "it is in the registry deny list")
        if address is None:
            self._check_name(host, name)
            return
        why = self._address_refusal(address)
        if why is not None:
            self._refuse(host, f"it is {why}")

    def _check_name(self, host: str, name: str) -> None:
        if name in _METADATA_NAMES:
            self._refuse(host, "it names a cloud metadata service")
        if self.refuse_loopback and (name == "localhost" or name.endswith(".localhost")):
            self._refuse(host, "it names this machine (loopback registries are refused by configuration)")

    def _address_refusal(self, address: IPAddress) -> str | None:
        """Why an address must not be reached, as a phrase ("a link-local address"), or None."""
        target = _unmapped(address)
        how = f" (written as {address})" if target != address else ""
        if target in _METADATA_ADDRESSES:
            return f"a cloud metadata address{how}"
        if _within(target, _LINK_LOCAL):
            return f"a link-local address{how}"
        if _within(target, _UNSPECIFIED):
            return f"the unspecified address{how}"
        if _within(target, _NOT_UNICAST) or target == ipaddress.IPv4Address("255.255.255.255"):
            return f"not a unicast address{how}"
        if self.refuse_loopback and _within(target, _LOOPBACK):
            return f"a loopback address{how} (refused by configuration)"
        if self.refuse_private and _within(target, _PRIVATE):
            return f"a private address{how} (refused by configuration)"
        return None

    @staticmethod
    def _refuse(host: str, why: str) -> NoReturn:
        raise ResolutionError(Reason.REFUSED_HOST, f"refusing registry host {host!r}: {why}")


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """Wraps a resolver; applies HostGuard.check_addresses to what DNS returns (defeats DNS rebinding).

    aiohttp connects to exactly the addresses a resolver returns, so checking them here checks the
    connection itself. IP literals do not pass through a resolver: `check_host` covers those.
    """

    def __init__(self, guard: HostGuard, inner: aiohttp.abc.AbstractResolver | None = None) -> None:
        self.guard = guard
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        if self._inner is None:
            # created lazily: aiohttp's default resolver wants a running event loop
            self._inner = aiohttp.resolver.DefaultResolver()
        results = await self._inner.resolve(host, port, family)
        self.guard.check_addresses(host, [r["host"] for r in results])
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def _within(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def _unmapped(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address really reaches (mapped, NAT64, 6to4, IPv4-compatible), else itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _split_host_port(host: str) -> tuple[str, str]:
    """("name", "port") from "name:port", "[v6]:port", "[v6]", a bare IPv6 address or a name."""
    if host.startswith("["):
        end = host.find("]")
        if end == -1:
            return host, ""
        rest = host[end + 1 :]
        return host[1:end], rest[1:] if rest.startswith(":") else ""
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name, port
    return host, ""  # a name, or a bare IPv6 address


def _canonical_name(name: str) -> str:
    """DNS names are case-insensitive and "a.example." is "a.example"."""
    return name.lower().rstrip(".")


def _parse_host(host: str) -> tuple[str, str, IPAddress | None]:
    name, port = _split_host_port(host.strip())
    name = _canonical_name(name)
    return name, port, _ip_literal(name)


def _ip_literal(text: str) -> IPAddress | None:
    """An IP address as any resolver would read it, including "2130706433", "0x7f.1" and "0177.0.0.1"."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0] if ":" in text else text)
    except ValueError:
        pass
    return _inet_aton(text)


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """The legacy IPv4 forms getaddrinfo accepts: 1 to 4 parts, each decimal, 0x-hex or 0-octal."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        value = _inet_number(part)
        if value is None:
            return None
        values.append(value)
    # a.b.c.d; a.b.c (c fills 16 bits); a.b (b fills 24 bits); a (32 bits)
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for i, value in enumerate(head):
        number |= value << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def _inet_number(part: str) -> int | None:
    lowered = part.lower()
    try:
        if lowered.startswith("0x"):
            return int(lowered[2:], 16) if lowered[2:] else 0
        if len(lowered) > 1 and lowered.startswith("0"):
            return int(lowered, 8)
        return int(lowered, 10) if lowered.isascii() and lowered.isdigit() else None
    except ValueError:
        return None
