"""Shared fixtures: real docker-registry instances (three setups), seeded once per session.

Registries start lazily: a unit-test run never starts one. Each setup is seeded with the sample
images of `tests.harness.registry.seed_samples`, and the tests treat those as read-only (tests
that push, push to their own repositories).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import procs
from tests.harness.registry import REGISTRY_BIN, Registry, Sample, seed_samples, start_registry


@dataclass(frozen=True)
class Seeded:
    registry: Registry
    samples: dict[str, Sample]
    registries_yaml: Path  # trusts the registry's CA and carries its credentials (k3s format)
    directory: Path


def _need_registry() -> None:
    if not (os.access(REGISTRY_BIN, os.X_OK) or shutil.which("docker-registry")):
        pytest.skip(f"{REGISTRY_BIN} is not installed (Debian package docker-registry; `make deps`)")


def _seeded(setup: str, factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    _need_registry()
    directory = factory.mktemp(f"registry-{setup}")
    registry = start_registry(setup, directory)
    try:
        samples = seed_samples(registry)
        yaml_path = registry.registries_yaml(directory / "registries.yaml")
        yield Seeded(registry, samples, yaml_path, directory)
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """HTTP, anonymous."""
    yield from _seeded("plain", tmp_path_factory)


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """HTTPS (TestCA) + htpasswd Basic auth."""
    yield from _seeded("basic", tmp_path_factory)


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """HTTP + Bearer token auth against the test token issuer."""
    yield from _seeded("token", tmp_path_factory)


@pytest.fixture(params=["plain", "basic", "token"])
def any_registry(request: pytest.FixtureRequest) -> Seeded:
    """Each of the three setups in turn."""
    seeded: Seeded = request.getfixturevalue(f"{request.param}_registry")
    return seeded


@pytest.fixture(scope="session", autouse=True)
def _stop_services() -> Iterator[None]:
    yield
    procs.stop_all()


@pytest.fixture
async def resolver_factory() -> AsyncIterator[Callable[..., Any]]:
    """make(seeded, **RegistrySettings overrides) -> a Resolver configured for that registry.

    The registry's CA and credentials come from its k3s registries.yaml (unless `config=False`), plain
    HTTP setups are named insecure, and `registry_host` redirects to another host (the fault proxy).
    Every resolver made is closed after the test.
    """
    from archaudit.adapters.registry.files import registries_from_file
    from archaudit.adapters.resolver import Resolver
    from archaudit.core.config import RegistrySettings
    from archaudit.core.mirrors import EMPTY

    made: list[Resolver] = []

    def make(
        seeded: Seeded,
        *,
        config: bool = True,
        host: str | None = None,
        observer: Any = None,
        clock: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> Resolver:
        registry = seeded.registry
        target = host or registry.host
        if config:
            yaml_path = seeded.directory / f"registries-{target.replace(':', '_')}.yaml"
            registries = registries_from_file(
                registry.registries_yaml(yaml_path)
                if host is None
                else _retarget(registry, target, yaml_path)
            )
        else:
            registries = EMPTY
        insecure = [target] if registry.scheme == "http" else []
        kwargs: dict[str, Any] = {"observer": observer, "registries": registries, "insecure": insecure}
        if clock is not None:
            kwargs["clock"] = clock
        resolver = Resolver.from_settings(RegistrySettings(**overrides), **kwargs)
        made.append(resolver)
        return resolver

    yield make
    for r in made:
        await r.aclose()


def _retarget(registry: Registry, host: str, path: Path) -> Path:
    """registries.yaml with the registry's CA/credentials keyed under another host (a proxy in front)."""
    import yaml

    registry.registries_yaml(path)
    doc = yaml.safe_load(path.read_text()) or {}
    configs = doc.get("configs", {})
    if registry.host in configs:
        configs[host] = configs.pop(registry.host)
    path.write_text(yaml.safe_dump(doc))
    return path
