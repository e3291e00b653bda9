"""The host guard with cloud credentials on: image names still cannot lead archaudit to metadata.

The cloud token endpoints (the GKE metadata server is 169.254.169.254) are configuration; an image
reference is user input. With every cloud source enabled and its endpoints at their defaults, an image
naming a metadata address is refused before any connection, and no token is asked for it. The inner
DNS seam of the transport (the tests' loopback mapping) stays under the guard too.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import aiohttp.abc
import pytest

from archaudit.adapters.cloud import CloudCredentials
from archaudit.adapters.metrics import MutableState
from archaudit.adapters.registry.aiohttp_transport import AiohttpTransport
from archaudit.adapters.registry.client import RegistryClient
from archaudit.adapters.registry.safety import HostGuard
from archaudit.adapters.registry.transport import Request
from archaudit.adapters.resolver import Resolver
from archaudit.context import Context, NodeMap
from archaudit.core.config import RegistrySettings, Settings
from archaudit.core.credentials import Credential
from archaudit.core.errors import Reason, ResolutionError
from archaudit.core.reference import ImageReference
from archaudit.resolution import resolve_images

METADATA_IMAGES = [
    "169.254.169.254/latest/meta-data:x",
    "metadata.google.internal/computemetadata/v1:token",
    "metadata.google.internal:80/computemetadata/v1:token",
    "[fd00:ec2::254]/latest:x",
    "169.254.170.2/v2/credentials:x",
    "metadata.azure.internal/metadata:x",
    "[::ffff:a9fe:a9fe]/x:1",
    "2852039166:5000/x:1",  # 169.254.169.254 as one number (a port makes it a registry, not a Hub path)
]


class NoDns(aiohttp.abc.AbstractResolver):
    """Fails every look-up: a refusal must come from the guard, and a mistake here never hits DNS."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        raise OSError(f"no DNS in this test ({host})")

    async def close(self) -> None:
        return None


class NoSecrets:
    async def for_pod(
        self, namespace: str, spec: Mapping[str, Any], image: ImageReference
    ) -> list[Credential]:
        return []

    def peek_for_pod(
        self, namespace: str, spec: Mapping[str, Any], image: ImageReference
    ) -> list[Credential]:
        return []


async def test_images_naming_metadata_are_refused_with_every_cloud_source_on() -> None:
    settings = RegistrySettings()
    assert settings.cloud_credentials == ("aws", "gcp", "azure")
    assert "metadata.google.internal" in settings.gcp_metadata_url  # configuration may name it
    cloud = CloudCredentials.from_settings(settings)
    guard = HostGuard()
    client = RegistryClient(settings, guard=guard, transport=AiohttpTransport(guard, resolver=NoDns()))
    resolver = Resolver(client)
    ctx = Context(
        settings=Settings(registry=settings),
        resolver=resolver,
        nodes=NodeMap(),
        credentials=NoSecrets(),
        cloud=cloud,
        metrics=MutableState(),
    )
    try:
        results = await resolve_images(ctx, "default", {}, METADATA_IMAGES, 5.0)
    finally:
        await resolver.aclose()
        await cloud.aclose()
    for image, result in results.items():
        assert isinstance(result, ResolutionError), image
        assert result.reason is Reason.REFUSED_HOST, (image, result)
    assert cloud.fetches == 0


class Rebinding(aiohttp.abc.AbstractResolver):
    """An inner resolver that answers a metadata address: the guard must still refuse it."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        return [
            {
                "hostname": host,
                "host": "169.254.169.254",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


async def test_an_injected_resolver_stays_under_the_guard() -> None:
    transport = AiohttpTransport(HostGuard(), resolver=Rebinding())
    try:
        with pytest.raises(ResolutionError) as caught:
            await transport.send(Request("GET", "https://registry.example/v2/", registry="registry.example"))
    finally:
        await transport.aclose()
    assert caught.value.reason is Reason.REFUSED_HOST
    assert "169.254.169.254" in caught.value.message
