"""Misbehaving registries (the fault proxy in front of the real one): each gives a clear, specific
ResolutionError or the correct answer, never a hang (pytest-timeout bounds every test) and never a
wrong verdict.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from archaudit.adapters.registry.files import registries_from_file
from archaudit.core.credentials import Credential
from archaudit.core.errors import Reason, ResolutionError
from tests.conftest import Seeded
from tests.harness.faultproxy import BOGUS_DIGEST, FaultProxy
from tests.harness.registry import seed_many

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def proxy(plain_registry: Seeded) -> Iterator[FaultProxy]:
    p = FaultProxy(plain_registry.registry).start()
    try:
        yield p
    finally:
        p.stop()


@dataclass
class Recorder:
    """An Observer that keeps what it is told."""

    requests: list[tuple[str, str, int | None]] = field(default_factory=list)
    ratelimits: list[tuple[str, int]] = field(default_factory=list)

    def on_request(self, registry: str, method: str, status: int | None, seconds: float) -> None:
        assert seconds >= 0
        self.requests.append((registry, method, status))

    def on_ratelimit(self, registry: str, remaining: int) -> None:
        self.ratelimits.append((registry, remaining))


async def _resolve(
    plain_registry: Seeded,
    proxy: FaultProxy,
    make: Callable[..., Any],
    name: str = "multiarch",
    credentials: tuple[Credential, ...] = (),
    **settings: Any,
) -> Any:
    resolver = make(plain_registry, host=proxy.host, **settings)
    return await resolver.resolve(proxy.ref(plain_registry.samples[name].reference), credentials)


async def _fails(
    plain_registry: Seeded,
    proxy: FaultProxy,
    make: Callable[..., Any],
    name: str = "multiarch",
    credentials: tuple[Credential, ...] = (),
    **settings: Any,
) -> ResolutionError:
    with pytest.raises(ResolutionError) as info:
        await _resolve(plain_registry, proxy, make, name, credentials, **settings)
    assert info.value.message.startswith(proxy.host), info.value.message  # names the image
    return info.value


@pytest.mark.parametrize("name", ["multiarch", "arm64-oci", "nested"])
async def test_ignored_accept_and_lying_content_type(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any], name: str
) -> None:
    proxy.set("ignore-accept")
    sample = plain_registry.samples[name]
    image = (await _resolve(plain_registry, proxy, resolver_factory, name)).image
    assert image.digest == sample.digest
    assert image.media_type == sample.media_type
    assert tuple(str(p) for p in image.platforms) == sample.platforms


async def test_no_digest_header_means_get_by_tag_and_hash(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    proxy.set("no-digest-header")
    sample = plain_registry.samples["multiarch"]
    image = (await _resolve(plain_registry, proxy, resolver_factory)).image
    assert image.digest == sample.digest
    assert [(s.method, s.path.rsplit("/", 1)[-1]) for s in proxy.requests()] == [
        ("HEAD", "1.0"),
        ("GET", "1.0"),
    ]


async def test_body_not_matching_digest(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    proxy.set("wrong-digest")
    error = await _fails(plain_registry, proxy, resolver_factory)
    assert error.reason is Reason.INVALID_MANIFEST
    assert "digest" in error.message


async def test_config_blob_not_matching_digest(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    proxy.set("wrong-digest")
    error = await _fails(plain_registry, proxy, resolver_factory, "amd64-docker")
    assert error.reason is Reason.INVALID_MANIFEST
    assert "tampered" in error.message


async def test_announced_digest_that_does_not_exist(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    proxy.set("wrong-digest-header")
    error = await _fails(plain_registry, proxy, resolver_factory)
    assert error.reason is Reason.NOT_FOUND
    assert BOGUS_DIGEST in error.message


async def test_oversized_streamed_body(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    proxy.set("oversized")
    error = await _fails(plain_registry, proxy, resolver_factory)
    assert error.reason is Reason.INVALID_MANIFEST
    assert "4393216-byte limit" in error.message


async def test_oversized_declared_body(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    proxy.set("oversized-declared")
    error = await _fails(plain_registry, proxy, resolver_factory)
    assert error.reason is Reason.INVALID_MANIFEST
    assert "50000000 bytes" in error.message


async def test_slow_body_hits_the_deadline(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    proxy.set("slow")
    error = await _fails(plain_registry, proxy, resolver_factory, timeout_seconds=1.5)
    assert error.reason is Reason.TIMEOUT
    assert "1.5s" in error.message


async def test_429_then_success_honours_retry_after(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    proxy.retry_after = "1"
    proxy.set("429", times=1)
    sample = plain_registry.samples["multiarch"]
    assert (await _resolve(plain_registry, proxy, resolver_factory)).image.digest == sample.digest
    assert [s.status for s in proxy.requests()][:2] == [429, 200]


async def test_429_beyond_the_deadline_fails_at_once(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    proxy.retry_after = "3600"
    proxy.set("429")
    error = await _fails(plain_registry, proxy, resolver_factory)
    assert error.reason is Reason.RATE_LIMITED
    assert len(proxy.requests()) == 1  # did not wait an hour, did not hammer either


async def test_429_with_an_http_date_an_hour_ahead_fails_at_once(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    # Read as a date, the wait is beyond the deadline; unread, our backoff would retry it.
    proxy.retry_after = email.utils.formatdate(time.time() + 3600, usegmt=True)
    proxy.set("429")
    error = await _fails(plain_registry, proxy, resolver_factory)
    assert error.reason is Reason.RATE_LIMITED
    assert len(proxy.requests()) == 1


async def test_500_once_is_retried(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    proxy.set("500", times=1)
    sample = plain_registry.samples["multiarch"]
    assert (await _resolve(plain_registry, proxy, resolver_factory)).image.digest == sample.digest


async def test_500_always_is_a_registry_error_after_bounded_retries(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    proxy.set("500")
    error = await _fails(plain_registry, proxy, resolver_factory, max_retries=2)
    assert error.reason is Reason.REGISTRY_ERROR
    assert "HTTP 500" in error.message
    assert len(proxy.requests()) == 3


async def test_redirect_loop(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    proxy.set("redirect-loop")
    error = await _fails(plain_registry, proxy, resolver_factory, max_redirects=4)
    assert error.reason is Reason.REGISTRY_ERROR
    assert "redirect" in error.message
    assert len(proxy.requests()) == 5  # the first request and 4 redirects followed


async def test_credentials_rejected(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    proxy.set("reject-credentials")
    secret = Credential("some-user", "s3cret-value")
    error = await _fails(plain_registry, proxy, resolver_factory, credentials=(secret,))
    assert error.reason is Reason.AUTH
    assert "s3cret" not in str(error)
    assert "some-user" not in str(error)
    assert [s.authorized for s in proxy.requests()] == [False, True]


async def test_ratelimit_header_is_observed(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    proxy.ratelimit_remaining = "42;w=21600"
    proxy.set("ratelimit")
    recorder = Recorder()
    resolver = resolver_factory(plain_registry, host=proxy.host, observer=recorder)
    await resolver.resolve(proxy.ref(plain_registry.samples["multiarch"].reference))
    assert recorder.ratelimits
    assert set(recorder.ratelimits) == {(proxy.host, 42)}
    assert resolver.transport.ratelimit_remaining == {proxy.host: 42}
    assert recorder.requests == [(proxy.host, "HEAD", 200), (proxy.host, "GET", 200)]


async def test_refused_host_makes_no_request(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    error = await _fails(plain_registry, proxy, resolver_factory, refuse_loopback=True)
    assert error.reason is Reason.REFUSED_HOST
    assert "loopback" in error.message
    assert proxy.requests() == []


async def test_mirror_first_with_ns_then_default_endpoint(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any], tmp_path: Path
) -> None:
    registry = plain_registry.registry
    config = tmp_path / "registries.yaml"
    config.write_text(yaml.safe_dump({"mirrors": {registry.host: {"endpoint": [f"http://{proxy.host}"]}}}))
    seeded = Seeded(registry, plain_registry.samples, config, tmp_path)

    sample = plain_registry.samples["multiarch"]
    resolver = resolver_factory(seeded, config=False)
    resolver.transport.registries = registries_from_file(config)
    assert (await resolver.resolve(sample.reference)).image.digest == sample.digest
    assert proxy.requests()
    assert all(f"ns={registry.host}" in s.path for s in proxy.requests())

    proxy.set("500")  # the mirror breaks: the registry itself answers
    other = resolver_factory(seeded, config=False, max_retries=0)
    other.transport.registries = registries_from_file(config)
    assert (await other.resolve(sample.reference)).image.digest == sample.digest
    # like containerd, each operation (resolve the tag, fetch the digest) tries the mirror first
    assert [(s.method, s.status) for s in proxy.requests()] == [("HEAD", 500), ("GET", 500)]


async def test_requests_to_one_registry_are_capped(
    plain_registry: Seeded, proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    # A far registry (every answer 0.2 s late) and 12 images wanted at once: never more than
    # concurrency_per_registry requests in flight to it, and that many are used.
    refs = [proxy.ref(r) for r in seed_many(plain_registry.registry, 12, prefix="capped")]
    proxy.latency = 0.2
    proxy.set("latency")
    resolver = resolver_factory(plain_registry, host=proxy.host, concurrency_per_registry=3)
    results = await resolver.resolve_many(refs)
    assert all(not isinstance(r, ResolutionError) for r in results), results
    assert proxy.max_in_flight == 3
    assert len(proxy.requests()) >= 2 * len(refs)  # HEAD + GET each, at least
