"""Resolver benchmarks (`make bench`): figures printed as a markdown table for BENCHMARKS.md.

Targets (printed beside the figures, never asserted as timings):
  - cached lookups: >= 200,000/s with 10,000 images in the cache;
  - 1,000 pod resolutions over 50 unique tags: cold = 1 HEAD + 1 GET per tag + one config blob per
    single-arch image; warm = 0 requests;
  - `archaudit check` of one cold image: wall time and peak RSS of the process.
Request counts ARE asserted: they are behaviour, not speed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from archaudit.adapters.registry.client import TagLookup
from archaudit.adapters.resolver import Resolver
from archaudit.core.credentials import Credential
from archaudit.core.manifests import ImagePlatforms, PlatformEntry
from archaudit.core.platforms import Platform
from archaudit.core.reference import ImageReference
from tests.conftest import Seeded
from tests.harness.faultproxy import FaultProxy
from tests.harness.registry import seed_many

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
ROWS: list[tuple[str, str, str]] = []


def _row(what: str, figure: str, target: str) -> None:
    ROWS.append((what, figure, target))
    print(f"\n| {what} | {figure} | {target} |")


@pytest.fixture(scope="module", autouse=True)
def _table() -> Any:
    yield
    if ROWS:
        print("\n\n| benchmark | result | target |\n|---|---|---|")
        for row in ROWS:
            print(f"| {row[0]} | {row[1]} | {row[2]} |")


class _Instant:
    """A transport that answers at once: measures the resolver's own cost."""

    def __init__(self) -> None:
        self.platform = Platform.parse("linux/amd64")

    async def lookup(
        self, ref: ImageReference, credentials: Sequence[Credential] = (), *, deadline: float | None = None
    ) -> TagLookup:
        return TagLookup(f"sha256:{hash(str(ref)) & (2**256 - 1):064x}")

    async def fetch(
        self,
        ref: ImageReference,
        digest: str,
        credentials: Sequence[Credential] = (),
        *,
        deadline: float | None = None,
    ) -> ImagePlatforms:
        return ImagePlatforms(
            digest,
            "application/vnd.oci.image.manifest.v1+json",
            "manifest",
            (PlatformEntry(self.platform, digest),),
        )

    async def aclose(self) -> None:
        pass


async def test_cached_lookups_per_second() -> None:
    from archaudit.core.reference import parse

    resolver = Resolver(_Instant(), cache_size=20_000)
    refs = [parse(f"registry.example/team{i % 50}/app{i}:v1") for i in range(10_000)]
    for ref in refs:
        await resolver.resolve(ref)
    rounds = 10
    started = time.perf_counter()
    for _ in range(rounds):
        for ref in refs:
            await resolver.resolve(ref)
    elapsed = time.perf_counter() - started
    rate = rounds * len(refs) / elapsed
    assert resolver.stats.tag.hits >= rounds * len(refs)
    _row("cached lookups, 10k images in cache (ImageReference in)", f"{rate:,.0f}/s", ">= 200,000/s")

    strings = [str(r) for r in refs]
    started = time.perf_counter()
    for s in strings:
        await resolver.resolve(s)
    rate = len(strings) / (time.perf_counter() - started)
    _row(
        "cached lookups, 10k distinct strings in (more than the 4,096-entry parse cache)",
        f"{rate:,.0f}/s",
        "-",
    )


async def test_requests_for_1000_pods_over_50_tags(
    plain_registry: Seeded, resolver_factory: Callable[..., Any]
) -> None:
    refs = await asyncio.to_thread(seed_many, plain_registry.registry, 50, "bench")
    proxy = FaultProxy(plain_registry.registry).start()
    try:
        resolver = resolver_factory(plain_registry, host=proxy.host)
        pods = [proxy.ref(refs[i % 50]) for i in range(1000)]
        started = time.perf_counter()
        cold = await resolver.resolve_many(pods)
        cold_time = time.perf_counter() - started
        assert all(not isinstance(r, Exception) for r in cold)
        cold_requests = Counter(f"{s.method} {s.path.split('/')[-2]}" for s in proxy.requests())
        proxy.set("pass")
        started = time.perf_counter()
        warm = await resolver.resolve_many(pods)
        warm_time = time.perf_counter() - started
        warm_requests = len(proxy.requests())
    finally:
        proxy.stop()
    single_arch = sum(1 for i in range(50) if i % 3 != 0)  # seed_many: every third tag is an index
    assert cold_requests == Counter({"HEAD manifests": 50, "GET manifests": 50, "GET blobs": single_arch})
    assert warm_requests == 0
    assert all(not isinstance(r, Exception) and r.from_cache for r in warm)
    total = sum(cold_requests.values())
    _row(
        "registry requests, 1,000 pods / 50 tags, cold",
        f"{total} ({dict(cold_requests)}), {cold_time:.2f}s",
        f"{100 + single_arch} (50 HEAD + 50 GET + {single_arch} configs)",
    )
    _row("registry requests, 1,000 pods / 50 tags, warm", f"{warm_requests}, {warm_time * 1000:.1f} ms", "0")


def test_check_cold_wall_time_and_rss(plain_registry: Seeded) -> None:
    sample = plain_registry.samples["multiarch"]
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True)\n"
        "wall = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(p.returncode, wall, rss)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator"), "DOCKER_CONFIG": "/nonexistent"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            probe,
            sys.executable,
            "-m",
            "archaudit",
            "check",
            sample.reference,
            "--platform",
            "linux/arm64",
            "--insecure-registry",
            plain_registry.registry.host,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    code, wall, rss_kib = out.stdout.split()
    assert code == "0"
    _row(
        "`archaudit check` one cold image (process)",
        f"{float(wall):.2f}s wall, {int(rss_kib) / 1024:.0f} MiB RSS",
        "-",
    )
