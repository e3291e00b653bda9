"""ACR's exchange goes to the registry an image names: it is made under the host guard.

Azure AD is the loopback fake of tests/harness/cloud.py; the ACR host resolves (through a test
resolver) to a metadata address, which the guard must refuse before anything is sent there.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp.abc
import pytest

from archaudit.adapters.cloud import CloudCredentialError
from archaudit.adapters.cloud.azure import AzureFetcher
from archaudit.adapters.registry.safety import HostGuard
from archaudit.core.cloud import match
from tests.harness.cloud import ACR_HOST, AzureIdentity


class ToMetadata(aiohttp.abc.AbstractResolver):
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        self.asked.append(host)
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


@pytest.fixture
def azure() -> Iterator[AzureIdentity]:
    identity = AzureIdentity().start()
    yield identity
    identity.stop()


def _env(azure: AzureIdentity, tmp_path: Path) -> dict[str, str]:
    token = tmp_path / "token"
    token.write_text(azure.federated_token)
    return {
        "AZURE_CLIENT_ID": azure.client_id,
        "AZURE_TENANT_ID": azure.tenant,
        "AZURE_FEDERATED_TOKEN_FILE": str(token),
        "AZURE_AUTHORITY_HOST": azure.authority,
    }


async def test_the_exchange_at_the_registry_is_under_the_host_guard(
    azure: AzureIdentity, tmp_path: Path
) -> None:
    registry = match(ACR_HOST)
    assert registry is not None
    dns = ToMetadata()
    fetcher = AzureFetcher(
        "https://{registry}/oauth2/exchange", env=_env(azure, tmp_path), guard=HostGuard(), resolver=dns
    )
    try:
        with pytest.raises(CloudCredentialError) as caught:
            await fetcher.fetch(registry)
    finally:
        await fetcher.aclose()
    assert len(azure.aad_requests) == 1  # Azure AD (configuration) was asked; the exchange was not sent
    assert dns.asked == [ACR_HOST]
    message = str(caught.value)
    assert message.startswith(f"ACR token exchange at {ACR_HOST}: refusing registry host")
    assert "169.254.169.254" in message
    assert azure.access_token not in message


async def test_a_configured_exchange_url_is_configuration(azure: AzureIdentity, tmp_path: Path) -> None:
    registry = match(ACR_HOST)
    assert registry is not None
    fetcher = AzureFetcher(
        azure.exchange_url, env=_env(azure, tmp_path), guard=HostGuard(refuse_loopback=True)
    )
    try:
        token = await fetcher.fetch(registry)
    finally:
        await fetcher.aclose()
    assert token.credential.username == "00000000-0000-0000-0000-000000000000"
    assert token.credential.password == azure.refresh_token
    assert token.expires_at == 4102444800.0  # the refresh token's own `exp`
