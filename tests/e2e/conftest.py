"""Fixtures for tests against the real control plane: one cluster per session, one namespace per test.

A cluster takes tens of seconds to start on two cores, so every e2e test shares it and isolates itself
in a fresh namespace. When a test fails, the tail of every component's log is attached to its report:
"pod stayed Pending" is only debuggable next to what the scheduler and kwok said.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.harness.cluster import Cluster
from tests.harness.kube import create_namespace

_session_cluster: Cluster | None = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if _session_cluster is not None and report.failed:
        title = f"control-plane logs (tail; full logs in {_session_cluster.log_dir})"
        report.sections.append((title, _session_cluster.tails(30)))
    return report


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """etcd, kube-apiserver, controller-manager, scheduler, kwok and the six fake nodes."""
    global _session_cluster
    # Logs outlive the session in pytest's basetemp (the last three runs are kept), per session so
    # that two test runs side by side never mix or delete each other's logs.
    c = Cluster(log_dir=tmp_path_factory.mktemp("control-plane-logs"))
    c.start()
    _session_cluster = c
    try:
        yield c
    finally:
        _session_cluster = None
        c.stop()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted afterwards (without waiting for it to go)."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster.admin, name)
    yield name
    client.CoreV1Api(cluster.admin).delete_namespace(name)
