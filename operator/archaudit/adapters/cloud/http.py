"""The one HTTP exchange the GCP and Azure token flows need, on a session of their own.

Not the registry transport: that one refuses metadata and link-local addresses, because image names
are user input, while these endpoints (the GKE metadata server is 169.254.169.254) come from
archaudit's configuration and the pod's environment only. The one request that goes to a host an
image names, ACR's exchange at the registry itself, is made with the host guard (`guard`), so it
cannot be pointed at a metadata address through DNS either. Bodies are capped and errors say which
source failed and how, never what was sent.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

import aiohttp
import aiohttp.abc

from archaudit.adapters.cloud import CloudCredentialError
from archaudit.adapters.registry.safety import GuardedResolver, HostGuard
from archaudit.core.errors import ResolutionError

__all__ = ["TokenHttp"]

_MAX_BODY = 1024 * 1024  # a token answer is a few KiB


class TokenHttp:
    """GET or POST one URL, (status, body) back; CloudCredentialError for transport failures."""

    def __init__(
        self,
        *,
        timeout: float,
        guard: HostGuard | None = None,
        resolver: aiohttp.abc.AbstractResolver | None = None,
    ) -> None:
        """`guard`: check every host and the addresses DNS gives for it, as the registry transport does;
        `resolver`: DNS under that guard (tests map names to loopback)."""
        self.timeout = timeout
        self.guard = guard
        self.resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = None
            if self.guard is not None:
                connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.guard, self.resolver))
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                # no proxies from the environment: a token must go only where configuration says
                trust_env=False,
            )
        return self._session

    async def request(
        self,
        what: str,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        host = urllib.parse.urlsplit(url).netloc or url
        try:
            if self.guard is not None:
                self.guard.check_target(host)
            async with self._open().request(
                method,
                url,
                headers=dict(headers or {}),
                data=dict(form) if form else None,
                allow_redirects=False,
            ) as resp:
                body = await resp.content.read(_MAX_BODY + 1)
                if len(body) > _MAX_BODY:
                    raise CloudCredentialError(f"{what}: {host} sent more than {_MAX_BODY} bytes")
                return resp.status, body
        except ResolutionError as e:  # the host guard, before connecting or at DNS time
            raise CloudCredentialError(f"{what}: {e.message}") from None
        except TimeoutError:
            raise CloudCredentialError(f"{what}: {host} did not answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise CloudCredentialError(f"{what}: cannot reach {host} ({type(e).__name__})") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
