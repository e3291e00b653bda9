"""`archaudit check` as users run it (a subprocess: `python -m archaudit`), against the real registry.

The JSON shape and the exit codes are a contract (DESIGN.md): asserted exactly here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from archaudit import __version__
from tests.conftest import Seeded
from tests.harness.registry import USERNAME
from tests.integration.test_registry_resolve import NODES, RUNS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]


def archaudit(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "operator"), "DOCKER_CONFIG": "/nonexistent"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "archaudit", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        check=False,
    )


def _access(seeded: Seeded) -> list[str]:
    """Flags that let the CLI reach this setup: the k3s registries.yaml (CA, credentials), HTTP."""
    flags = ["--registries", str(seeded.registries_yaml)]
    if seeded.registry.scheme == "http":
        flags += ["--insecure-registry", seeded.registry.host]
    return flags


@pytest.mark.parametrize("name", sorted(RUNS))
def test_check_json_every_sample(any_registry: Seeded, name: str) -> None:
    sample = any_registry.samples[name]
    platform_args = [a for node in NODES for a in ("--platform", node)]
    run = archaudit("check", sample.reference, *platform_args, *_access(any_registry), "-o", "json")
    assert run.returncode == 1, run.stderr  # no sample runs on all four platforms
    doc: dict[str, Any] = json.loads(run.stdout)
    assert list(doc) == ["image", "digest", "mediaType", "platforms", "checks"]
    assert doc["image"] == sample.reference
    assert doc["digest"] == sample.digest
    assert doc["mediaType"] == sample.media_type
    for p in doc["platforms"]:
        assert set(p) <= {"os", "architecture", "variant", "os.version"}
        assert {
            "os",
            "architecture",
            "variant",
        } <= set(p)
    listed = ["/".join(x for x in (p["os"], p["architecture"], p["variant"]) if x) for p in doc["platforms"]]
    assert tuple(listed) == sample.platforms
    assert [c["platform"] for c in doc["checks"]] == list(NODES)
    for c in doc["checks"]:
        assert list(c) == ["platform", "runnable", "manifest"]
        expected = RUNS[name].get(c["platform"])
        assert c["runnable"] is (expected is not None), c
        assert c["manifest"] == (sample.children[expected] if expected else None), c
    assert run.stderr == ""


def test_check_exit_0_when_all_run_and_text_table(plain_registry: Seeded) -> None:
    sample = plain_registry.samples["multiarch"]
    run = archaudit(
        "check",
        sample.reference,
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm/v7",
        *_access(plain_registry),
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["image", sample.reference]
    assert lines[1].split() == ["digest", sample.digest]
    assert "linux/amd64, linux/arm64/v8, linux/arm/v7" in lines[3]
    rows = {line.split()[0]: line.split()[1:] for line in lines[6:]}
    assert rows == {
        "linux/amd64": ["yes", sample.children["linux/amd64"]],
        "linux/arm/v7": ["yes", sample.children["linux/arm/v7"]],
    }


def test_check_without_platform_lists_and_exits_0(plain_registry: Seeded) -> None:
    sample = plain_registry.samples["nested"]
    run = archaudit("check", sample.reference, *_access(plain_registry), "-o", "json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["checks"] == []
    assert len(doc["platforms"]) == 3


def test_check_runtime_profile_changes_the_verdict(plain_registry: Seeded) -> None:
    sample = plain_registry.samples["schema2-only"]  # linux/arm/v6 only
    base = ["check", sample.reference, "--platform", "linux/arm64", *_access(plain_registry), "-o", "json"]
    lenient = archaudit(*base)
    strict = archaudit(*base, "--runtime", "containerd-strict")
    assert lenient.returncode == 0
    assert json.loads(lenient.stdout)["checks"][0]["runnable"] is True
    assert strict.returncode == 1
    assert json.loads(strict.stdout)["checks"][0]["runnable"] is False


def test_check_docker_config_credentials(basic_registry: Seeded, tmp_path: Path) -> None:
    registry = basic_registry.registry
    ca_only = tmp_path / "ca.yaml"
    ca_only.write_text(f"configs:\n  '{registry.host}':\n    tls:\n      ca_file: '{registry.ca_file}'\n")
    sample = basic_registry.samples["arm64-oci"]
    anonymous = archaudit("check", sample.reference, "--registries", str(ca_only))
    assert anonymous.returncode == 2
    assert anonymous.stdout == ""
    assert len(anonymous.stderr.strip().splitlines()) == 1
    assert anonymous.stderr.startswith("archaudit: error: auth: ")
    config = registry.docker_config(tmp_path / "config.json")
    logged_in = archaudit(
        "check",
        sample.reference,
        "--registries",
        str(ca_only),
        "--docker-config",
        str(config),
        "--platform",
        "linux/arm64",
    )
    assert logged_in.returncode == 0, logged_in.stderr
    assert USERNAME not in logged_in.stdout + logged_in.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["check", "Not/A:Valid:Ref"], "invalid"),
        (["check", "busybox", "--platform", "linux"], "--platform"),
        (["check", "busybox", "--registries", "/nonexistent/registries.yaml"], "--registries"),
    ],
)
def test_check_usage_errors_exit_2_with_one_line(args: list[str], needle: str) -> None:
    run = archaudit(*args)
    assert run.returncode == 2
    assert run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert needle in run.stderr


def test_check_not_found_exit_2(plain_registry: Seeded) -> None:
    run = archaudit(
        "check", f"{plain_registry.registry.host}/samples/multiarch:missing", *_access(plain_registry)
    )
    assert run.returncode == 2
    assert run.stderr.startswith("archaudit: error: not-found: ")
    assert "missing" in run.stderr


def test_unreachable_exit_2(tmp_path: Path) -> None:
    from tests.harness.procs import free_port

    host = f"127.0.0.1:{free_port()}"
    run = archaudit("check", f"{host}/x/y:1", "--insecure-registry", host, "--timeout", "5")
    assert run.returncode == 2
    assert "unreachable" in run.stderr
    assert host in run.stderr


def test_version() -> None:
    run = archaudit("--version")
    assert run.returncode == 0
    assert run.stdout.strip() == f"archaudit {__version__}"


async def test_cli_in_process_matches_subprocess(
    plain_registry: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same `check` called in-process (the function the command runs) gives the same document."""
    from archaudit import cli
    from archaudit.core import config

    sample = plain_registry.samples["attested"]
    args = cli.build_parser().parse_args(
        [
            "check",
            sample.reference,
            "--platform",
            "linux/amd64",
            "--platform",
            "linux/arm64",
            *_access(plain_registry),
            "-o",
            "json",
        ]
    )
    code, out = await cli.check(args, config.Settings())
    sub = archaudit(
        "check",
        sample.reference,
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        *_access(plain_registry),
        "-o",
        "json",
    )
    assert code == sub.returncode == 1
    assert json.loads(out) == json.loads(sub.stdout)
