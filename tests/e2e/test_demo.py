"""`make demo` end to end, in a private directory: up, reuse on a second up, status, down leaves nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml
from tests.harness.demo import DEMO_NAMESPACE, DemoState, alive, down, status, up
from tests.harness.procs import wait_until


def _sourced(env_file: Path, command: str) -> str:
    """Run `command` in bash after `source env_file`, as the printed instructions tell a user to."""
    done = subprocess.run(
        ["bash", "-c", f"source {env_file} && {command}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")},
    )
    return done.stdout


def test_demo_up_reuses_and_down_cleans(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    first = up(directory)
    try:
        assert status(directory) == 0
        env_file = directory / "env"

        nodes = _sourced(env_file, "kubectl get nodes -L kubernetes.io/arch --no-headers")
        assert {line.split()[-1] for line in nodes.splitlines()} == {"amd64", "arm64", "arm"}

        # every example landed, with the placeholder replaced by the running registry
        deployments = yaml.safe_load(
            _sourced(env_file, f"kubectl -n {DEMO_NAMESPACE} get deployments -o yaml")
        )["items"]
        images = {
            d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
            for d in deployments
        }
        assert images == {
            "multiarch": f"{first.registry}/samples/multiarch:1.0",
            "amd64-only-on-arm64": f"{first.registry}/samples/amd64-docker:1.0",
            "arm64-only-unpinned": f"{first.registry}/samples/arm64-oci:1.0",
        }
        registry_env = _sourced(env_file, "echo $ARCHAUDIT_REGISTRY").strip()
        assert registry_env == first.registry

        second = up(directory)
        assert second.processes == first.processes, "a second `up` must reuse the running demo"
    finally:
        down(directory)

    assert not directory.exists()
    wait_until(
        lambda: not any(alive(p) for p in first.processes.values()),
        timeout=5,
        what="the demo's processes to be gone after down",
    )
    assert DemoState.load(directory) is None
