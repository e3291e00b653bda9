"""The resolver against a real docker-registry, in its three setups (plain, TLS+Basic, token).

Ground truth is what the harness pushed (platforms and child digests of each sample), never a
hard-coded digest. Request counts come from the fault proxy in pass-through mode: real HTTP,
counted on the wire.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from archaudit.core.credentials import Credential
from archaudit.core.errors import Reason, ResolutionError
from archaudit.core.platforms import Fit, Platform
from tests.conftest import Seeded
from tests.harness.faultproxy import FaultProxy
from tests.harness.registry import Sample, push_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NODES = ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6")

# sample -> {node platform: the sample's platform whose manifest the runtime pulls}; absent = no match
RUNS: dict[str, dict[str, str]] = {
    "multiarch": {
        "linux/amd64": "linux/amd64",
        "linux/arm64": "linux/arm64/v8",
        "linux/arm/v7": "linux/arm/v7",
    },
    "attested": {"linux/amd64": "linux/amd64"},
    "nested": {"linux/amd64": "linux/amd64", "linux/arm64": "linux/arm64", "linux/arm/v7": "linux/arm/v7"},
    "arm64-oci": {"linux/arm64": "linux/arm64"},
    "amd64-docker": {"linux/amd64": "linux/amd64"},
    # 32-bit arm v6: arm/v7 nodes and arm64 nodes (containerd's vector) run it too
    "schema2-only": {
        "linux/arm64": "linux/arm/v6",
        "linux/arm/v7": "linux/arm/v6",
        "linux/arm/v6": "linux/arm/v6",
    },
    "artifact": {},
}
KIND = {"multiarch": "index", "attested": "index", "nested": "index", "artifact": "artifact"}


def _platform_strings(platforms: tuple[Platform, ...]) -> tuple[str, ...]:
    return tuple(str(p) for p in platforms)


@pytest.mark.parametrize("name", sorted(RUNS))
async def test_every_sample_in_every_setup(
    any_registry: Seeded, resolver_factory: Callable[..., Any], name: str
) -> None:
    sample: Sample = any_registry.samples[name]
    resolver = resolver_factory(any_registry)
    result = await resolver.resolve(sample.reference)
    image = result.image
    assert image.digest == sample.digest
    assert image.media_type == sample.media_type
    assert image.kind == KIND.get(name, "manifest")
    assert _platform_strings(image.platforms) == sample.platforms
    for node in NODES:
        verdict, pulled = image.runnable(Platform.parse(node), ("containerd",))
        expected = RUNS[name].get(node)
        if expected is None:
            assert (verdict, pulled) == (Fit.NO, None), node
        else:
            assert (verdict, pulled) == (Fit.RUNS, sample.children[expected]), node


@pytest.fixture
def counting_proxy(plain_registry: Seeded) -> Iterator[FaultProxy]:
    proxy = FaultProxy(plain_registry.registry).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _wire(proxy: FaultProxy) -> list[str]:
    """The requests as "METHOD kind/locator", query stripped."""
    out = []
    for s in proxy.requests():
        path = s.path.split("?", 1)[0]
        parts = path.split("/")
        out.append(f"{s.method} {parts[-2]}/{parts[-1][:19]}")
    return out


async def test_head_then_get_by_digest_and_no_child_manifests(
    plain_registry: Seeded, counting_proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    sample = plain_registry.samples["multiarch"]
    resolver = resolver_factory(plain_registry, host=counting_proxy.host)
    await resolver.resolve(counting_proxy.ref(sample.reference))
    assert _wire(counting_proxy) == ["HEAD manifests/1.0", f"GET manifests/{sample.digest[:19]}"]


async def test_single_manifest_fetches_its_config_only(
    plain_registry: Seeded, counting_proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    sample = plain_registry.samples["arm64-oci"]
    resolver = resolver_factory(plain_registry, host=counting_proxy.host)
    await resolver.resolve(counting_proxy.ref(sample.reference))
    wire = _wire(counting_proxy)
    assert wire[:2] == ["HEAD manifests/1.0", f"GET manifests/{sample.digest[:19]}"]
    assert len(wire) == 3
    assert wire[2].startswith("GET blobs/sha256:")


async def test_nested_index_fetches_the_child_index_only(
    plain_registry: Seeded, counting_proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    sample = plain_registry.samples["nested"]
    resolver = resolver_factory(plain_registry, host=counting_proxy.host)
    image = (await resolver.resolve(counting_proxy.ref(sample.reference))).image
    wire = _wire(counting_proxy)
    assert len(wire) == 3
    assert all(w.startswith(("HEAD manifests", "GET manifests")) for w in wire)
    child_digests = set(sample.children.values())
    assert not any(w.split("/", 1)[1] in {d[:19] for d in child_digests} for w in wire)
    assert len(image.entries) == 3


async def test_cached_answer_costs_nothing_and_ttl_costs_one_head(
    plain_registry: Seeded, counting_proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    now = [0.0]
    sample = plain_registry.samples["multiarch"]
    resolver = resolver_factory(
        plain_registry, host=counting_proxy.host, clock=lambda: now[0], tag_ttl_seconds=60
    )
    ref = counting_proxy.ref(sample.reference)
    await resolver.resolve(ref)
    counting_proxy.set("pass")  # clears the log
    again = await resolver.resolve(ref)
    assert again.from_cache
    assert counting_proxy.requests() == []
    now[0] += 61
    await resolver.resolve(ref)
    assert _wire(counting_proxy) == ["HEAD manifests/1.0"]


async def test_digest_reference_is_one_get(
    plain_registry: Seeded, counting_proxy: FaultProxy, resolver_factory: Callable[..., Any]
) -> None:
    sample = plain_registry.samples["multiarch"]
    resolver = resolver_factory(plain_registry, host=counting_proxy.host)
    ref = counting_proxy.ref(sample.reference).replace(":1.0", "@" + sample.digest)
    image = (await resolver.resolve(ref)).image
    assert image.digest == sample.digest
    assert _wire(counting_proxy) == [f"GET manifests/{sample.digest[:19]}"]


async def test_missing_tag_and_repository_are_not_found(
    any_registry: Seeded, resolver_factory: Callable[..., Any]
) -> None:
    resolver = resolver_factory(any_registry)
    host = any_registry.registry.host
    for ref in (f"{host}/samples/multiarch:no-such-tag", f"{host}/samples/no-such-repo:1.0"):
        with pytest.raises(ResolutionError) as info:
            await resolver.resolve(ref)
        assert info.value.reason is Reason.NOT_FOUND, str(info.value)
        assert info.value.message.startswith(ref)
        assert f": {host} has no " in info.value.message


async def test_moved_tag_is_followed(plain_registry: Seeded, resolver_factory: Callable[..., Any]) -> None:
    pusher = plain_registry.registry.pusher()
    first = push_image(pusher, "moving/app", "linux", "amd64", tag="stable")
    now = [0.0]
    resolver = resolver_factory(plain_registry, clock=lambda: now[0], tag_ttl_seconds=10)
    ref = plain_registry.registry.ref("moving/app", "stable")
    assert (await resolver.resolve(ref)).image.digest == first.digest
    second = push_image(pusher, "moving/app", "linux", "arm64", tag="stable")
    assert (await resolver.resolve(ref)).image.digest == first.digest  # within the TTL
    now[0] += 11
    moved = (await resolver.resolve(ref)).image
    assert moved.digest == second.digest
    assert _platform_strings(moved.platforms) == ("linux/arm64",)


async def test_registry_down_serves_stale(tmp_path: Any, resolver_factory: Callable[..., Any]) -> None:
    from tests.harness.registry import start_registry

    registry = start_registry("plain", tmp_path / "reg")
    try:
        pushed = push_image(registry.pusher(), "lonely/app", "linux", "amd64", tag="1")
        seeded = Seeded(registry, {}, registry.registries_yaml(tmp_path / "r.yaml"), tmp_path)
        now = [0.0]
        resolver = resolver_factory(seeded, clock=lambda: now[0], tag_ttl_seconds=10, timeout_seconds=3)
        ref = registry.ref("lonely/app", "1")
        assert not (await resolver.resolve(ref)).stale
    finally:
        registry.stop()
    now[0] += 11
    stale = await resolver.resolve(ref)
    assert stale.stale
    assert stale.image.digest == pushed.digest
    # and a registry that never answered gives a clear error, not a stale guess
    with pytest.raises(ResolutionError) as info:
        await resolver.resolve(registry.ref("lonely/other", "1"))
    assert info.value.reason is Reason.UNREACHABLE
    assert registry.host in info.value.message


async def test_credentials_never_in_errors(
    basic_registry: Seeded, resolver_factory: Callable[..., Any]
) -> None:
    resolver = resolver_factory(basic_registry, config=False, max_retries=0)
    wrong = Credential("mallory-user", "hunter2-secret")
    # no CA configured: TLS fails first; with the CA but wrong credentials, auth fails
    with pytest.raises(ResolutionError) as info:
        await resolver.resolve(basic_registry.samples["multiarch"].reference, [wrong])
    assert info.value.reason is Reason.UNREACHABLE
    assert "TLS" in info.value.message
    assert "hunter2" not in str(info.value)
    assert "mallory" not in str(info.value)
