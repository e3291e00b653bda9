"""The one HTTP exchange the GCP and Azure token flows need, on a session of their own.

Not the registry transport: that one refuses metadata and link-local addresses, because image names
are user input, while these endpoints (the GKE metadata server is 169.254.169.254) come from
archaudit's configuration and the pod's environment only. Bodies are capped and errors say which
source failed and how, never what was sent.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

import aiohttp

from archaudit.adapters.cloud import CloudCredentialError

__all__ = ["TokenHttp"]

_MAX_BODY = 1024 * 1024  # a token answer is a few KiB


class TokenHttp:
    """GET or POST one URL, (status, body) back; CloudCredentialError for transport failures."""

    def __init__(self, *, timeout: float) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
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
        except TimeoutError:
            raise CloudCredentialError(f"{what}: {host} did not answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise CloudCredentialError(f"{what}: cannot reach {host} ({type(e).__name__})") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
