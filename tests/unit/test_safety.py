"""The host guard, tested by its decisions on names and addresses; connections go to loopback only."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import aiohttp.abc
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from archaudit.adapters.registry.safety import GuardedResolver, HostGuard
from archaudit.core.errors import Reason, ResolutionError
from tests.harness.procs import free_port


def caught(check: Callable[[], None]) -> ResolutionError | None:
    try:
        check()
    except ResolutionError as e:
        return e
    return None


def refused(guard: HostGuard, host: str) -> bool:
    error = caught(lambda: guard.check_host(host))
    if error is None:
        return False
    assert error.reason is Reason.REFUSED_HOST
    assert host in error.message
    return True


DEFAULT = HostGuard()
STRICT = HostGuard(refuse_loopback=True, refuse_private=True)

ALWAYS_REFUSED = [
    "169.254.169.254",
    "169.254.169.254:80",
    "169.254.1.1",
    "169.254.170.2",
    "fe80::1",
    "[fe80::1]:5000",
    "[fe80::1%eth0]:5000",
    "[FE80::abcd]",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]:80",
    "[64:ff9b::169.254.169.254]",
    "[2002:a9fe:a9fe::1]",
    "[::169.254.169.254]",
    "[fd00:ec2::254]",
    "fd00:ec2::254",
    "100.100.100.200",
    "0.0.0.0",
    "0.0.0.0:5000",
    "0",
    "[::]",
    "::",
    "224.0.0.1",
    "255.255.255.255",
    "[ff02::1]",
    # legacy numeric IPv4 spellings of 169.254.169.254 that getaddrinfo accepts
    "2852039166",
    "0xa9fea9fe",
    "0XA9FEA9FE:80",
    "0251.0376.0251.0376",
    "0xa9.0xfe.0xa9.0xfe",
    "169.254.43518",
    "169.16689662",
    "169.254.169.254.",
    # metadata services by name
    "metadata.google.internal",
    "METADATA.Google.Internal.",
    "metadata",
    "metadata:80",
    "metadata.goog",
    "instance-data",
    # no host at all
    "",
    ":5000",
]

ALLOWED_BY_DEFAULT = [
    "ghcr.io",
    "registry-1.docker.io",
    "docker.io",
    "registry.example.com:5000",
    "localhost:5000",
    "localhost",
    "127.0.0.1:5000",
    "[::1]:5000",
    "10.0.0.5:5000",
    "192.168.1.10",
    "[fd12:3456::1]",
    "metadata.example.com",  # only the metadata names themselves
    "0x7f.example",  # looks numeric, is a name
    "1.2.3.4.5",  # five parts: not an address, a name
    "8.8.8.8",
    "[2001:db8::1]:443",
]


@pytest.mark.parametrize("host", ALWAYS_REFUSED)
def test_always_refused(host: str) -> None:
    assert refused(DEFAULT, host)
    assert refused(STRICT, host)


@pytest.mark.parametrize("host", ALLOWED_BY_DEFAULT)
def test_allowed_by_default(host: str) -> None:
    assert not refused(DEFAULT, host)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:5000",
        "127.9.9.9",
        "127.1",
        "2130706433",
        "0x7f000001",
        "017700000001",
        "[::1]",
        "::1",
        "[::ffff:127.0.0.1]:5000",
        "localhost",
        "LOCALHOST.:5000",
        "registry.localhost:5000",
    ],
)
def test_loopback_refused_only_when_configured(host: str) -> None:
    assert not refused(DEFAULT, host)
    assert refused(HostGuard(refuse_loopback=True), host)
    assert not refused(HostGuard(refuse_private=True), host)


@pytest.mark.parametrize(
    "host",
    [
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255:5000",
        "192.168.0.1",
        "100.64.0.1",
        "[fd12::1]",
        "[fc00::1]:5000",
        "[::ffff:10.0.0.1]",
        "012.0.0.1",  # octal 10.0.0.1
    ],
)
def test_private_refused_only_when_configured(host: str) -> None:
    assert not refused(DEFAULT, host)
    assert refused(HostGuard(refuse_private=True), host)
    assert not refused(HostGuard(refuse_loopback=True), host)


@pytest.mark.parametrize("host", ["172.32.0.1", "100.128.0.1", "8.8.8.8", "[2001:db8::1]", "ghcr.io"])
def test_public_addresses_pass_the_strict_guard(host: str) -> None:
    assert not refused(STRICT, host)


ALLOW = HostGuard(allow=["ghcr.io", "*.example.com", "registry.local:5000", "10.0.0.0/8", "[fd00:1::5]"])


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("ghcr.io", True),
        ("GHCR.IO.", True),
        ("ghcr.io:443", True),
        ("a.example.com", True),
        ("a.b.example.com:5000", True),
        ("registry.local:5000", True),
        ("10.1.2.3:5000", True),
        ("[fd00:1::5]:5000", True),
        ("example.com", False),  # *.example.com is below the domain, not the domain
        ("ghcr.io.evil.com", False),
        ("evilghcr.io", False),
        ("aexample.com", False),
        ("registry.local", False),
        ("registry.local:5001", False),
        ("11.0.0.1", False),
        ("docker.io", False),
        ("[fd00:1::6]", False),
    ],
)
def test_allow_list(host: str, allowed: bool) -> None:
    assert refused(ALLOW, host) is not allowed


def test_allow_list_cannot_open_metadata() -> None:
    guard = HostGuard(allow=["169.254.169.254", "169.254.0.0/16", "metadata.google.internal"])
    assert refused(guard, "169.254.169.254")
    assert refused(guard, "metadata.google.internal")


DENY = HostGuard(deny=["*.evil.com", "quay.io", "192.168.0.0/16", "ghcr.io:5000", "2001:db8::/32"])


@pytest.mark.parametrize(
    ("host", "denied"),
    [
        ("a.evil.com", True),
        ("x.y.evil.com:443", True),
        ("quay.io", True),
        ("QUAY.IO.:443", True),
        ("192.168.3.4", True),
        ("[::ffff:192.168.3.4]", True),
        ("ghcr.io:5000", True),
        ("[2001:db8::1]:5000", True),
        ("evil.com", False),
        ("ghcr.io", False),
        ("quay.io.example.org", False),
        ("10.0.0.1", False),
    ],
)
def test_deny_list(host: str, denied: bool) -> None:
    assert refused(DENY, host) is denied


def test_deny_wins_over_allow() -> None:
    guard = HostGuard(allow=["*.example.com"], deny=["bad.example.com"])
    assert refused(guard, "bad.example.com")
    assert not refused(guard, "good.example.com")


@pytest.mark.parametrize(
    "pattern", ["", "  ", "*", "a*b.com", "*.*.com", "10.0.0.0/33", "host:abc", "reg/path"]
)
def test_bad_patterns_are_refused_at_configuration(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        HostGuard(allow=[pattern])


def test_check_target_applies_everything_but_the_allow_list() -> None:
    guard = HostGuard(allow=["ghcr.io"], deny=["*.evil.com"], refuse_private=True)
    guard.check_target("pkg-containers.githubusercontent.com")  # a blob redirect: not a registry
    for host in ["169.254.169.254", "a.evil.com", "10.0.0.1", "metadata.google.internal"]:
        with pytest.raises(ResolutionError):
            guard.check_target(host)


def test_refusal_reports_without_raising() -> None:
    assert DEFAULT.refusal("ghcr.io") is None
    message = DEFAULT.refusal("169.254.169.254")
    assert message is not None
    assert "metadata" in message


def test_messages_say_why() -> None:
    cases = {
        "169.254.169.254": "cloud metadata address",
        "169.254.1.1": "link-local",
        "[::ffff:169.254.1.1]": "written as ::ffff:a9fe:101",
        "0.0.0.0": "unspecified",
        "metadata": "metadata service",
    }
    for host, phrase in cases.items():
        message = DEFAULT.refusal(host)
        assert message is not None
        assert phrase in message, (host, message)
    assert "allow list" in (ALLOW.refusal("docker.io") or "")
    assert "deny list" in (DENY.refusal("quay.io") or "")
    assert "by configuration" in (STRICT.refusal("10.0.0.1") or "")


@given(st.integers(min_value=0, max_value=0xFFFF))
def test_every_spelling_of_a_link_local_address_is_refused(low: int) -> None:
    address = ipaddress.IPv4Address((169 << 24) | (254 << 16) | low)
    spellings = [
        str(address),
        str(int(address)),
        hex(int(address)),
        "0" + oct(int(address))[2:],
        f"169.254.{low}",
        f"[::ffff:{address}]",
        f"[{ipaddress.IPv6Address(int(address) | 0xFFFF << 32)}]:443",
        f"{address}.",
    ]
    for spelling in spellings:
        assert refused(DEFAULT, spelling), spelling


@given(st.ip_addresses(v=4))
def test_numeric_spellings_decide_like_the_dotted_form(address: ipaddress.IPv4Address) -> None:
    for guard in (DEFAULT, STRICT):
        expected = refused(guard, str(address))
        assert refused(guard, str(int(address))) is expected
        assert refused(guard, hex(int(address))) is expected


# -- after DNS


@pytest.mark.parametrize(
    ("addresses", "ok"),
    [
        (["93.184.216.34"], True),
        (["93.184.216.34", "2606:2800:220:1::"], True),
        (["127.0.0.1"], True),
        (["93.184.216.34", "169.254.169.254"], False),  # ANY bad address refuses the host
        (["::ffff:169.254.169.254"], False),
        (["fe80::1%eth0"], False),
        (["fd00:ec2::254"], False),
        (["0.0.0.0"], False),
        (["not-an-address"], False),
    ],
)
def test_check_addresses(addresses: list[str], ok: bool) -> None:
    error = caught(lambda: DEFAULT.check_addresses("registry.example.com", addresses))
    assert (error is None) is ok
    if error is not None:
        assert error.reason is Reason.REFUSED_HOST
        assert "registry.example.com" in error.message


def test_check_addresses_applies_configured_ranges_and_deny_cidrs() -> None:
    with pytest.raises(ResolutionError, match="loopback"):
        HostGuard(refuse_loopback=True).check_addresses("rebind.example", ["127.0.0.1"])
    with pytest.raises(ResolutionError, match="private"):
        HostGuard(refuse_private=True).check_addresses("rebind.example", ["10.0.0.1"])
    with pytest.raises(ResolutionError, match="deny list"):
        HostGuard(deny=["203.0.113.0/24"]).check_addresses("x.example", ["203.0.113.9"])
    with pytest.raises(ResolutionError, match="metadata service"):
        DEFAULT.check_addresses("metadata.google.internal", ["8.8.8.8"])
    HostGuard(deny=["203.0.113.0/24"]).check_addresses("x.example", ["198.51.100.1"])


# -- GuardedResolver


class FixedResolver(aiohttp.abc.AbstractResolver):
    """DNS as the test says: every name maps to fixed addresses (no look-up happens)."""

    def __init__(self, table: Mapping[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        self.asked.append(host)
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in self.table[host]
        ]

    async def close(self) -> None:
        self.closed = True


async def test_resolver_passes_good_answers_through() -> None:
    inner = FixedResolver({"registry.test": ["93.184.216.34", "2606:2800:220:1::"]})
    resolver = GuardedResolver(HostGuard(), inner)
    results = await resolver.resolve("registry.test", 443)
    assert [r["host"] for r in results] == ["93.184.216.34", "2606:2800:220:1::"]
    assert all(r["port"] == 443 for r in results)
    await resolver.close()
    assert inner.closed


@pytest.mark.parametrize(
    "answer", [["169.254.169.254"], ["93.184.216.34", "fd00:ec2::254"], ["::ffff:169.254.169.254"]]
)
async def test_resolver_refuses_rebinding_to_metadata(answer: list[str]) -> None:
    inner = FixedResolver({"innocent.test": answer})
    with pytest.raises(ResolutionError) as caught:
        await GuardedResolver(HostGuard(), inner).resolve("innocent.test", 443)
    assert caught.value.reason is Reason.REFUSED_HOST
    assert inner.asked == ["innocent.test"]


async def test_resolver_with_the_default_inner_resolver() -> None:
    # "localhost" is answered from /etc/hosts by getaddrinfo: no DNS traffic
    results = await GuardedResolver(HostGuard()).resolve("localhost", 80)
    assert results
    assert all(ipaddress.ip_address(r["host"]).is_loopback for r in results)
    with pytest.raises(ResolutionError, match="loopback"):
        await GuardedResolver(HostGuard(refuse_loopback=True)).resolve("localhost", 80)


@pytest.fixture
async def loopback_server() -> AsyncIterator[int]:
    async def v2(request: web.Request) -> web.Response:
        return web.json_response({"host": request.host})

    app = web.Application()
    app.router.add_get("/v2/", v2)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def test_aiohttp_connects_to_the_address_the_guard_passed(loopback_server: int) -> None:
    inner = FixedResolver({"registry.test": ["127.0.0.1"]})
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(HostGuard(), inner))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"http://registry.test:{loopback_server}/v2/") as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["host"] == f"registry.test:{loopback_server}"
    assert inner.asked == ["registry.test"]


async def test_aiohttp_request_fails_with_the_guards_error_before_connecting(loopback_server: int) -> None:
    # loopback refused by configuration: were the guard bypassed, the request would reach the local
    # server and succeed; nothing but loopback is ever contacted either way
    inner = FixedResolver({"rebind.test": ["127.0.0.1"]})
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(HostGuard(refuse_loopback=True), inner))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(ResolutionError) as caught:
            async with session.get(f"http://rebind.test:{loopback_server}/v2/"):
                pass
    assert caught.value.reason is Reason.REFUSED_HOST
    assert "rebind.test" in caught.value.message
