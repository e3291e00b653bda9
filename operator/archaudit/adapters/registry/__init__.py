"""Talking to registries the way the node's runtime does (adapter layer: the only package with HTTP).

    credentials   pull-secret and docker-config credentials, matched to images as the kubelet does
    mirrors       k3s registries.yaml: the endpoints containerd tries for an image, with TLS and auth
    safety        the host guard: which hosts and addresses archaudit may connect to at all
    auth          WWW-Authenticate challenges and bearer tokens
    client        the registry protocol that puts these together (Accept, HEAD then GET, tokens,
                  mirrors, redirects, retries, digests) over an injected transport
    transport     the seam: `Transport.send(Request) -> Response`, one exchange, no aiohttp
    aiohttp_transport  the production transport: session, TLS, host guard, semaphores, size cap

Everything here answers the question "what would the node see if it pulled this image?", so each
module copies a runtime's behaviour (kubelet, containerd, k3s) rather than inventing a nicer one.
"""

from archaudit.adapters.registry.aiohttp_transport import AiohttpTransport
from archaudit.adapters.registry.client import ClientOptions, Observer, RegistryClient, TagLookup
from archaudit.adapters.registry.safety import GuardedResolver, HostGuard
from archaudit.adapters.registry.transport import Request, Response, Transport, TransportError
from archaudit.core.credentials import (
    Credential,
    CredentialsError,
    Keyring,
    keyring_from_docker_config,
    keyring_from_dockercfg,
    keyring_from_secret,
)
from archaudit.core.mirrors import EMPTY, Endpoint, RegistriesConfig, TLSConfig

__all__ = [
    "EMPTY",
    "AiohttpTransport",
    "ClientOptions",
    "Credential",
    "CredentialsError",
    "Endpoint",
    "GuardedResolver",
    "HostGuard",
    "Keyring",
    "Observer",
    "RegistriesConfig",
    "RegistryClient",
    "Request",
    "Response",
    "TLSConfig",
    "TagLookup",
    "Transport",
    "TransportError",
    "keyring_from_docker_config",
    "keyring_from_dockercfg",
    "keyring_from_secret",
]
