"""Authentication against the real registry: htpasswd Basic over TLS, and the Docker token flow.

The token issuer records every request it gets, so the flow (POST, GET fallback, anonymous, cache)
is asserted on what actually crossed the wire.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from archaudit.adapters.registry.files import registries_from_file
from archaudit.core.credentials import Credential
from archaudit.core.errors import Reason, ResolutionError
from tests.conftest import Seeded
from tests.harness.registry import PASSWORD, USERNAME, TokenIssuer, push_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

GOOD = Credential(USERNAME, PASSWORD)
WRONG = Credential(USERNAME, "not-the-password")


@pytest.fixture
def issuer(token_registry: Seeded) -> Iterator[TokenIssuer]:
    """The token registry's issuer, with its knobs reset after each test."""
    issuer = token_registry.registry.issuer
    assert issuer is not None
    issuer.requests.clear()
    yield issuer
    issuer.post_status = None
    issuer.token_field = "both"
    issuer.requests.clear()


# -- Basic (TLS + htpasswd)


async def test_basic_with_configured_credentials(
    basic_registry: Seeded, resolver_factory: Callable[..., Any]
) -> None:
    sample = basic_registry.samples["multiarch"]
    resolver = resolver_factory(basic_registry)  # CA + auth from registries.yaml
    assert (await resolver.resolve(sample.reference)).image.digest == sample.digest


async def test_basic_with_pull_secret_credentials(
    basic_registry: Seeded, resolver_factory: Callable[..., Any], tmp_path: Any
) -> None:
    sample = basic_registry.samples["arm64-oci"]
    registry = basic_registry.registry
    ca_only = tmp_path / "ca-only.yaml"
    ca_only.write_text(f"configs:\n  '{registry.host}':\n    tls:\n      ca_file: '{registry.ca_file}'\n")
    seeded = Seeded(registry, basic_registry.samples, ca_only, tmp_path)
    resolver = resolver_factory(seeded, config=False)

    resolver.transport.registries = registries_from_file(ca_only)  # CA, no credentials
    with pytest.raises(ResolutionError) as info:
        await resolver.resolve(sample.reference)
    assert info.value.reason is Reason.AUTH
    assert "anonymously" in info.value.message
    # wrong secret first, then the right one: kubelet tries each in order
    result = await resolver.resolve(sample.reference, [WRONG, GOOD])
    assert result.image.digest == sample.digest


async def test_basic_refuses_wrong_credentials(
    basic_registry: Seeded, resolver_factory: Callable[..., Any], tmp_path: Any
) -> None:
    registry = basic_registry.registry
    ca_only = tmp_path / "ca-only.yaml"
    ca_only.write_text(f"configs:\n  '{registry.host}':\n    tls:\n      ca_file: '{registry.ca_file}'\n")
    resolver = resolver_factory(basic_registry, config=False)

    resolver.transport.registries = registries_from_file(ca_only)
    with pytest.raises(ResolutionError) as info:
        await resolver.resolve(basic_registry.samples["multiarch"].reference, [WRONG])
    assert info.value.reason is Reason.AUTH
    assert "not-the-password" not in str(info.value)
    assert USERNAME not in str(info.value)


# -- Token


async def test_token_anonymous_private_repo_is_auth_error(
    token_registry: Seeded, issuer: TokenIssuer, resolver_factory: Callable[..., Any]
) -> None:
    resolver = resolver_factory(token_registry, config=False)
    with pytest.raises(ResolutionError) as info:
        await resolver.resolve(token_registry.samples["multiarch"].reference)
    assert info.value.reason is Reason.AUTH
    assert "imagePullSecret" in info.value.message
    assert [(r.method, r.user) for r in issuer.requests] == [("GET", None)]
    assert issuer.requests[0].scope == "repository:samples/multiarch:pull"


async def test_token_anonymous_public_repo(
    token_registry: Seeded, issuer: TokenIssuer, resolver_factory: Callable[..., Any]
) -> None:
    pushed = push_image(token_registry.registry.pusher(), "public/hello", "linux", "arm64", tag="1")
    resolver = resolver_factory(token_registry, config=False)
    image = (await resolver.resolve(token_registry.registry.ref("public/hello", "1"))).image
    assert image.digest == pushed.digest
    assert {(r.method, r.user) for r in issuer.requests} == {("GET", None)}


async def test_token_post_flow_with_pull_secret_and_cache(
    token_registry: Seeded, issuer: TokenIssuer, resolver_factory: Callable[..., Any]
) -> None:
    resolver = resolver_factory(token_registry, config=False)
    sample = token_registry.samples["arm64-oci"]
    image = (await resolver.resolve(sample.reference, [GOOD])).image
    assert image.digest == sample.digest
    # one token for HEAD, GET and the config blob: cached per (realm, service, scope, identity)
    assert [(r.method, r.user, r.scope) for r in issuer.requests] == [
        ("POST", USERNAME, "repository:samples/arm64-oci:pull")
    ]
    assert issuer.requests[0].service == "archaudit-test-registry"


async def test_token_prefers_access_token(
    token_registry: Seeded, issuer: TokenIssuer, resolver_factory: Callable[..., Any]
) -> None:
    issuer.token_field = "both"  # `token` is garbage, `access_token` is real
    resolver = resolver_factory(token_registry, config=False)
    sample = token_registry.samples["multiarch"]
    assert (await resolver.resolve(sample.reference, [GOOD])).image.digest == sample.digest
    issuer.token_field = "token"  # older issuers: only `token`
    other = resolver_factory(token_registry, config=False)
    assert (await other.resolve(sample.reference, [GOOD])).image.digest == sample.digest


@pytest.mark.parametrize("post_status", [404, 400, 405])
async def test_token_get_fallback_when_post_refused(
    token_registry: Seeded, issuer: TokenIssuer, resolver_factory: Callable[..., Any], post_status: int
) -> None:
    issuer.post_status = post_status  # GAR says 404, ACR 400
    resolver = resolver_factory(token_registry, config=False)
    sample = token_registry.samples["nested"]
    assert (await resolver.resolve(sample.reference, [GOOD])).image.digest == sample.digest
    assert [(r.method, r.user) for r in issuer.requests] == [("POST", USERNAME), ("GET", USERNAME)]


async def test_token_wrong_then_right_credential(
    token_registry: Seeded, issuer: TokenIssuer, resolver_factory: Callable[..., Any]
) -> None:
    resolver = resolver_factory(token_registry, config=False)
    sample = token_registry.samples["amd64-docker"]
    assert (await resolver.resolve(sample.reference, [WRONG, GOOD])).image.digest == sample.digest


async def test_token_credentials_from_registries_yaml(
    token_registry: Seeded, issuer: TokenIssuer, resolver_factory: Callable[..., Any]
) -> None:
    resolver = resolver_factory(token_registry)  # configs[host].auth
    sample = token_registry.samples["attested"]
    assert (await resolver.resolve(sample.reference)).image.digest == sample.digest
    assert {r.user for r in issuer.requests} == {USERNAME}


async def test_token_all_credentials_refused(
    token_registry: Seeded, issuer: TokenIssuer, resolver_factory: Callable[..., Any]
) -> None:
    resolver = resolver_factory(token_registry, config=False)
    with pytest.raises(ResolutionError) as info:
        await resolver.resolve(token_registry.samples["multiarch"].reference, [WRONG])
    assert info.value.reason is Reason.AUTH
    assert "not-the-password" not in str(info.value)
