"""Artifact Registry and GCR: the workload identity's access token from the GKE metadata server.

Plain aiohttp, not google-auth: the whole flow is one GET with the `Metadata-Flavor: Google` header
(the metadata server refuses requests without it, which also keeps it from being reached by a
redirect), and google-auth would bring requests, cachetools and rsa for that one call.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from archaudit.adapters.cloud import CloudCredentialError
from archaudit.adapters.cloud.http import TokenHttp
from archaudit.core import cloud
from archaudit.core.cloud import CloudRegistry, CloudToken

__all__ = ["GcpFetcher"]

_WHAT = "GCP metadata server"


class GcpFetcher:
    """One access token (the pod's Google service account) for every GCP registry."""

    def __init__(self, url: str, *, timeout: float = 3.0, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.clock = clock
        self.http = TokenHttp(timeout=timeout)

    def cache_key(self, registry: CloudRegistry) -> str:
        return "gcp"  # the token is the service account's, not a registry's

    async def fetch(self, registry: CloudRegistry) -> CloudToken:
        status, body = await self.http.request(_WHAT, "GET", self.url, headers={"Metadata-Flavor": "Google"})
        if status != 200:
            hint = (
                " (is GKE workload identity enabled for archaudit's service account?)"
                if status == 404
                else ""
            )
            raise CloudCredentialError(f"{_WHAT}: HTTP {status}{hint}")
        try:
            return cloud.gcp_token(body, self.clock())
        except ValueError as e:
            raise CloudCredentialError(str(e)) from None

    async def aclose(self) -> None:
        await self.http.aclose()
