"""Registry authentication: WWW-Authenticate challenges, the Docker token flow, Basic.

Why its own module: parsing challenges and choosing what to send are pure decisions that deserve
table tests of their own (quay.io puts two challenges on one line, GAR refuses the POST flow, ACR
answers 400...), while the single function that talks HTTP (`fetch_token`) takes the request
function from the client, so every token request goes through the same host guard, TLS settings,
deadline and metrics as the registry requests themselves.

Nothing here ever logs or formats a credential: errors name the realm host, never a user or secret.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from archaudit.core.credentials import Credential
from archaudit.core.errors import Reason, ResolutionError

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "Challenge",
    "Token",
    "TokenCache",
    "TokenKey",
    "basic_authorization",
    "fetch_token",
    "parse_www_authenticate",
    "pick_challenge",
    "pull_scope",
    "token_from_response",
    "token_key",
]

# The distribution token spec: "if not given, assume 60 seconds".
DEFAULT_TOKEN_LIFETIME = 60.0
# Refresh a little before the issuer's deadline: the request that carries it takes time too.
_EXPIRY_MARGIN = 5.0
_CLIENT_ID = "archaudit"

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN68_CHARS = _TOKEN_CHARS | frozenset("/")


@dataclass(frozen=True)
class Challenge:
    """One challenge of a WWW-Authenticate header: scheme lower-cased, parameter names lower-cased."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)
    token68: str = ""

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


class _Scanner:
    """A cursor over a header value (RFC 9110 §11.6.1 grammar, leniently: registries are not strict)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def skip_separators(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t,":
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def done(self) -> bool:
        return self.pos >= len(self.text)

    def token(self, chars: frozenset[str] = _TOKEN_CHARS) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        """A quoted-string starting at the opening quote; backslash escapes the next character."""
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            c = self.text[self.pos]
            self.pos += 1
            if c == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif c == '"':
                return "".join(out)
            else:
                out.append(c)
        return "".join(out)  # unterminated: take what there is rather than fail the whole header

    def value(self) -> str:
        self.skip_space()
        if self.peek() == '"':
            return self.quoted()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ", \t":
            self.pos += 1
        return self.text[start : self.pos]

    def next_is_param(self) -> bool:
        """At a token: is it `name=value` (a parameter) rather than the next challenge's scheme?"""
        save = self.pos
        try:
            if not self.token():
                return False
            self.skip_space()
            if self.peek() != "=":
                return False
            while self.peek() == "=":
                self.pos += 1
            self.skip_space()
            # `abc==` followed by the end or a comma is a token68, not a parameter
            return not (self.done() or self.peek() == ",")
        finally:
            self.pos = save


def parse_www_authenticate(value: str) -> list[Challenge]:
    """All challenges of one WWW-Authenticate header value, in order.

    Handles several challenges on one line (`Basic realm="x", Bearer realm="y",service="z"`),
    case-insensitive schemes and parameter names, quoted values with backslash escapes, token68.
    Garbage yields fewer challenges, never an exception.
    """
    s = _Scanner(value)
    out: list[Challenge] = []
    while True:
        s.skip_separators()
        if s.done():
            return out
        scheme = s.token()
        if not scheme:
            s.pos += 1  # not a token character: skip it and resynchronise
            continue
        params: dict[str, str] = {}
        token68 = ""
        s.skip_space()
        if not s.done() and s.peek() != "," and not s.next_is_param():
            token68 = s.token(_TOKEN68_CHARS)
            while s.peek() == "=":
                token68 += "="
                s.pos += 1
        else:
            while True:
                s.skip_separators()
                if s.done() or not s.next_is_param():
                    break
                name = s.token().lower()
                s.skip_space()
                s.pos += 1  # the "="
                params.setdefault(name, s.value())
        out.append(Challenge(scheme.lower(), params, token68))


def pick_challenge(challenges: Sequence[Challenge]) -> Challenge | None:
    """Bearer (with a realm) over Basic; None when neither is offered."""
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme and (scheme != "bearer" or c.realm):
                return c
    return None


def basic_authorization(credential: Credential) -> str:
    raw = f"{credential.username}:{credential.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # on the caller's clock


def token_from_response(body: bytes, now: float) -> Token:
    """The token of a realm's JSON answer: `access_token` wins over `token`; lifetime `expires_in`."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the token answer is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("the token answer is not a JSON object")
    value = doc.get("access_token") or doc.get("token")
    if not isinstance(value, str) or not value:
        raise ValueError("the token answer has neither access_token nor token")
    lifetime = doc.get("expires_in")
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    return Token(value, now + max(float(lifetime) - _EXPIRY_MARGIN, 1.0))


TokenKey = tuple[str, str, str, str]  # (realm, service, scope, credential identity or "")


class TokenCache:
    """Bearer tokens per (realm, service, scope, identity) until they expire; LRU-bounded."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[TokenKey, Token] = OrderedDict()
        self._max = max_entries

    def get(self, key: TokenKey, now: float) -> Token | None:
        token = self._entries.get(key)
        if token is None:
            return None
        if token.expires_at <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return token

    def drop(self, key: TokenKey) -> None:
        """Forget a token the registry refused before its announced expiry."""
        self._entries.pop(key, None)

    def put(self, key: TokenKey, token: Token) -> None:
        self._entries[key] = token
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


# (method, url, headers, form body or None) -> (status, body); raises ResolutionError itself for
# transport failures (unreachable, refused host, deadline).
Send = Callable[[str, str, Mapping[str, str], bytes | None], Awaitable[tuple[int, bytes]]]

# Answers to the POST (OAuth2 password grant) that mean "this realm does not do POST": GCR/GAR 404,
# ACR 400, others 401 or 405. Then the GET flow with Basic credentials is the one that works.
_POST_UNSUPPORTED = frozenset({400, 401, 404, 405})


def token_key(challenge: Challenge, scope: str, credential: Credential | None) -> TokenKey:
    """Where `fetch_token` caches the token for this challenge, scope and credential (or anonymity)."""
    return (
        challenge.realm,
        challenge.params.get("service", ""),
        scope,
        credential.identity if credential else "",
    )


async def fetch_token(
    send: Send,
    challenge: Challenge,
    scope: str,
    credential: Credential | None,
    cache: TokenCache,
    now: Callable[[], float],
    *,
    image: str,
) -> Token:
    """A Bearer token for `scope`, from the cache or the challenge's realm.

    With a credential: POST the realm (grant_type=password), falling back to GET with Basic when the
    realm refuses POST. Anonymous: GET without credentials. `image` only names the image in errors.
    """
    key = token_key(challenge, scope, credential)
    cached = cache.get(key, now())
    if cached is not None:
        return cached
    realm = challenge.realm
    realm_host = urllib.parse.urlsplit(realm).netloc or realm
    service = challenge.params.get("service", "")
    status, body = 0, b""
    if credential is not None:
        form = {
            "grant_type": "password",
            "username": credential.username,
            "password": credential.password,
            "scope": scope,
            "client_id": _CLIENT_ID,
        }
        if service:
            form["service"] = service
        status, body = await send(
            "POST",
            realm,
            {"Content-Type": "application/x-www-form-urlencoded"},
            urllib.parse.urlencode(form).encode(),
        )
    if credential is None or status in _POST_UNSUPPORTED:
        query = {"scope": scope}
        if service:
            query["service"] = service
        sep = "&" if urllib.parse.urlsplit(realm).query else "?"
        headers = {"Authorization": basic_authorization(credential)} if credential else {}
        status, body = await send("GET", realm + sep + urllib.parse.urlencode(query), headers, None)
    if status in (401, 403):
        raise ResolutionError(
            Reason.AUTH,
            f"{image}: the token service at {realm_host} refused the "
            + ("credentials" if credential else "anonymous request")
            + f" (HTTP {status})",
        )
    if status != 200:
        raise ResolutionError(
            Reason.REGISTRY_ERROR, f"{image}: the token service at {realm_host} answered HTTP {status}"
        )
    try:
        token = token_from_response(body, now())
    except ValueError as e:
        raise ResolutionError(
            Reason.REGISTRY_ERROR, f"{image}: the token service at {realm_host}: {e}"
        ) from None
    cache.put(key, token)
    return token
