"""`make demo` end to end, in a private directory: up, reuse on a second up, status, down leaves nothing."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from pathlib import Path

import yaml

from tests.harness.demo import DEMO_NAMESPACE, DENIED_EXAMPLE, DemoState, alive, denials, down, status, up
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

        # placement is on in the demo namespace: every arm64-only replica lands on an arm64 node
        def unpinned_nodes() -> list[str] | None:
            found = yaml.safe_load(
                _sourced(env_file, f"kubectl -n {DEMO_NAMESPACE} get pods -l app=arm64-only-unpinned -o yaml")
            )["items"]
            nodes = [p["spec"].get("nodeName") for p in found]
            return nodes if len(nodes) == 3 and all(nodes) else None

        landed = wait_until(unpinned_nodes, timeout=60, what="arm64-only-unpinned's 3 pods scheduled")
        assert landed == ["arm64-1"] * 3, landed

        registry_env = _sourced(env_file, "echo $ARCHAUDIT_REGISTRY").strip()
        assert registry_env == first.registry

        # archaudit runs: the amd64-only example's pods were refused at admission, none exists
        refused = [d for d in denials(first) if d.startswith(f"ReplicaSet/{DENIED_EXAMPLE}-")]
        assert refused, denials(first)
        assert refused[0].endswith(
            'admission webhook "pods.archaudit.io" denied the request: '
            f"image {first.registry}/samples/amd64-docker:1.0 provides linux/amd64 only; "
            "nodes this pod can use are linux/arm64"
        ), refused
        pods = _sourced(env_file, f"kubectl -n {DEMO_NAMESPACE} get pods -l app={DENIED_EXAMPLE} -o name")
        assert pods.strip() == ""
        assert _sourced(env_file, f"kubectl -n {DEMO_NAMESPACE} get pods -l app=multiarch -o name").strip()
        # ... and the workload whose every pod is denied has its report too, judged from its template
        message = "jsonpath='{.status.message}'"
        verdict = _sourced(
            env_file, f"kubectl -n {DEMO_NAMESPACE} get ia deployment-{DENIED_EXAMPLE} -o {message}"
        )
        assert verdict.startswith("no pods: every pod would be denied: "), verdict

        # ... and its metrics URL, as .demo/env gives it, answers with the denials counted
        metrics_url = _sourced(env_file, "echo $ARCHAUDIT_METRICS_URL").strip()
        assert metrics_url == first.env["ARCHAUDIT_METRICS_URL"]
        assert _sourced(env_file, "echo $ARCHAUDIT_WEBHOOK_URL").strip().startswith("https://127.0.0.1:")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(metrics_url, timeout=10) as resp:
            metrics = resp.read().decode()
        denied = [
            line
            for line in metrics.splitlines()
            if line.startswith("archaudit_admission_reviews_total{") and 'decision="denied"' in line
        ]
        assert denied, metrics[:2000]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in denied) >= 1

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
