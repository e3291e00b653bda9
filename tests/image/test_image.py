"""The archaudit container image, built for real and checked by the tool it ships.

`hack/build-image.sh` builds the Dockerfile with buildah from a Debian base made here (debootstrap), for
every platform this machine can build (foreign ones through qemu-user and binfmt_misc), and pushes it
to a real docker-registry on loopback. Then the image must say about itself what was built:
`archaudit check` lists exactly the built platforms, each platform's check pulls that platform's own
manifest, the image config runs as uid 65532, and the image pulled back from the registry runs its
entrypoint on every built platform.

Slow (about 6 minutes warm for three platforms, 25-35 cold) and it changes the machine as root (apt
installs, binfmt_misc registrations, gigabytes of buildah storage under $ARCHAUDIT_CACHE): so it runs
only when asked, ARCHAUDIT_IMAGE_TESTS=1, which `make image` sets; never in `make test`.
ARCHAUDIT_IMAGE_PLATFORMS (comma-separated; default linux/amd64,linux/arm64,linux/arm/v7) picks the
platforms.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from archaudit import __version__
from tests.harness.registry import ALL_MANIFEST_TYPES, REGISTRY_BIN, Registry, start_registry

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "build-image.sh"
PLATFORMS = os.environ.get("ARCHAUDIT_IMAGE_PLATFORMS", "linux/amd64,linux/arm64,linux/arm/v7").split(",")
DEBIAN_ARCH = {"linux/amd64": "amd64", "linux/arm64": "arm64", "linux/arm/v7": "armhf"}
NONROOT = "65532:65532"

# A cold build with foreign platforms debootstraps and pip-installs under qemu: tens of minutes.
pytestmark = pytest.mark.timeout(int(os.environ.get("ARCHAUDIT_IMAGE_TIMEOUT", "7200")))


@dataclass
class Build:
    """What hack/build-image.sh says it did (its --result file), and where it pushed."""

    registry: Registry
    built: dict[str, str] = field(default_factory=dict)  # platform -> local image
    failed: dict[str, str] = field(default_factory=dict)  # platform -> why
    pushed: str = ""
    digest: str = ""
    facts: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def reference(self) -> str:
        return self.pushed


def _parse_result(build: Build, text: str) -> None:
    for line in text.splitlines():
        build.facts.append(line)
        kind, _, rest = line.partition(" ")
        if kind == "built":
            platform, image = rest.split(" ", 1)
            build.built[platform] = image
        elif kind == "failed":
            platform, why = rest.split(" ", 1)
            build.failed[platform] = why
        elif kind == "pushed":
            build.pushed, build.digest = rest.split(" ", 1)


def _why_not_here() -> str | None:
    if os.environ.get("ARCHAUDIT_IMAGE_TESTS") != "1":
        return "builds the image for real, as root (minutes): set ARCHAUDIT_IMAGE_TESTS=1 or run `make image`"
    if os.geteuid() != 0:
        return "needs root (debootstrap, buildah vfs storage, binfmt_misc)"
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return "needs a Debian system (the script installs buildah and debootstrap with apt-get)"
    if not (os.access(REGISTRY_BIN, os.X_OK) or shutil.which("docker-registry")):
        return f"{REGISTRY_BIN} is not installed (Debian package docker-registry; `make deps`)"
    return None


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Build]:
    why = _why_not_here()
    if why is not None:
        pytest.skip(why)
    work = tmp_path_factory.mktemp("image")
    registry = start_registry("plain", work / "registry")
    try:
        result = work / "result.txt"
        argv = [str(SCRIPT), "--push", registry.host, "--result", str(result)]
        for platform in PLATFORMS:
            argv += ["--platform", platform]
        started = time.monotonic()
        run = subprocess.run(argv, capture_output=True, text=True, check=False)
        outcome = Build(registry, seconds=time.monotonic() - started)
        assert run.returncode == 0, run.stderr[-4000:]
        _parse_result(outcome, result.read_text())
        print(f"\nhack/build-image.sh took {outcome.seconds:.0f}s:\n" + "\n".join(outcome.facts))
        yield outcome
    finally:
        registry.stop()


def _get(registry: Registry, path: str, accept: str = ALL_MANIFEST_TYPES) -> bytes:
    """GET from the registry's HTTP API."""
    req = urllib.request.Request(f"{registry.base_url}/v2/{path}", headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return bytes(resp.read())


def _platform_text(p: dict[str, Any]) -> str:
    parts = [p["os"], p["architecture"], p.get("variant") or ""]
    if parts[1] == "arm64" and parts[2] == "v8":  # arm64's only variant: the platform names it without
        parts[2] = ""
    return "/".join(x for x in parts if x)


def _manifests(build: Build) -> dict[str, str]:
    """platform -> manifest digest, read from what the registry serves for the pushed reference."""
    repository, tag = build.reference.split("/", 1)[1].split(":")
    doc = json.loads(_get(build.registry, f"{repository}/manifests/{tag}"))
    if "manifests" in doc:
        return {_platform_text(m["platform"]): m["digest"] for m in doc["manifests"]}
    config = _config(build, doc)
    return {_platform_text(config): build.digest}


def _config(build: Build, manifest: dict[str, Any]) -> dict[str, Any]:
    repository = build.reference.split("/", 1)[1].split(":")[0]
    blob = _get(build.registry, f"{repository}/blobs/{manifest['config']['digest']}", accept="*/*")
    config: dict[str, Any] = json.loads(blob)
    return config


def test_every_requested_platform_is_built_or_explained(build: Build) -> None:
    assert set(build.built) | set(build.failed) == set(PLATFORMS)
    assert not set(build.built) & set(build.failed)
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True)
    natives = [p for p in PLATFORMS if DEBIAN_ARCH[p] == native.stdout.strip()]
    assert set(natives) <= set(build.built), build.failed  # the native platform always builds
    assert build.pushed == f"{build.registry.host}/archaudit:dev"
    assert build.digest.startswith("sha256:")
    for platform, why in build.failed.items():
        print(f"not built: {platform}: {why}")


def test_registry_serves_one_manifest_per_built_platform(build: Build) -> None:
    assert sorted(_manifests(build)) == sorted(build.built)


def test_check_reports_exactly_what_was_built(build: Build) -> None:
    flags = ["--insecure-registry", build.registry.host]
    flags += [a for p in ["linux/amd64", "linux/arm64", "linux/arm/v7"] for a in ("--platform", p)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator"), "DOCKER_CONFIG": "/nonexistent"}
    run = subprocess.run(
        [sys.executable, "-m", "archaudit", "check", build.reference, *flags, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert run.returncode in (0, 1), run.stderr
    doc = json.loads(run.stdout)
    assert doc["digest"] == build.digest
    assert sorted(_platform_text(p) for p in doc["platforms"]) == sorted(build.built)
    by_platform = {c["platform"]: c for c in doc["checks"]}
    manifests = _manifests(build)
    for platform in build.built:
        assert by_platform[platform]["runnable"], by_platform[platform]
        assert by_platform[platform]["manifest"] == manifests[platform]
    for platform in set(by_platform) - set(build.built):
        # Not built; a node may still run a built one (an arm64 node runs arm/v7), never anything else.
        assert by_platform[platform]["manifest"] in {None, *manifests.values()}
    assert run.returncode == (0 if all(c["runnable"] for c in doc["checks"]) else 1)
    if len(build.built) > 1:
        assert doc["mediaType"] in (
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )


def test_image_config_runs_archaudit_as_nonroot(build: Build) -> None:
    repository = build.reference.split("/", 1)[1].split(":")[0]
    for platform, digest in _manifests(build).items():
        body = _get(build.registry, f"{repository}/manifests/{digest}")
        config = _config(build, json.loads(body))
        assert _platform_text(config) == platform
        runtime = config["config"]
        assert runtime["User"] == NONROOT
        assert runtime["Entrypoint"] == ["archaudit"]
        assert runtime["Cmd"] == ["run"]
        assert set(runtime["ExposedPorts"]) == {"8443/tcp", "9102/tcp"}
        assert runtime["Labels"]["org.opencontainers.image.version"] == __version__


@dataclass
class Buildah:
    """buildah on a storage of the test's own, so what runs is what the registry served."""

    root: Path

    def __call__(self, *args: str, timeout: float = 900) -> str:
        argv = ["buildah", "--root", str(self.root / "storage"), "--runroot", str(self.root / "run")]
        run = subprocess.run(
            [*argv, "--storage-driver", "vfs", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert run.returncode == 0, f"buildah {' '.join(args)}: {run.stderr[-2000:]}"
        return run.stdout.strip()


@pytest.fixture
def buildah(tmp_path: Path) -> Iterator[Buildah]:
    tool = Buildah(tmp_path / "buildah")
    yield tool
    tool("rm", "--all")
    tool("rmi", "--all", "--force")
    shutil.rmtree(tool.root, ignore_errors=True)  # vfs layers: hundreds of MB, not worth keeping


def test_pulled_image_runs_its_entrypoint_as_nonroot(build: Build, buildah: Buildah) -> None:
    for platform in build.built:
        _, arch, *variant = platform.split("/")
        ctr = buildah(
            "from", "--quiet", "--tls-verify=false", "--arch", arch, "--variant", "".join(variant),
            f"docker://{build.reference}",
        )  # fmt: skip
        run = ["run", "--isolation", "chroot", ctr, "--"]
        assert buildah(*run, "archaudit", "--version") == f"archaudit {__version__}"
        assert buildah(*run, "archaudit", "run", "--help").startswith("usage: archaudit run")
        assert buildah(*run, "id", "-u") == NONROOT.split(":")[0]
        assert buildah(*run, "uname", "-m") == {"amd64": "x86_64", "arm64": "aarch64", "arm": "armv7l"}[arch]
        buildah("rm", ctr)
